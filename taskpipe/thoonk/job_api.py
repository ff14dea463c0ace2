"""The thoonk.py job API (and the Thoonk Jobs ``publish``) on a taskpipe job channel.

``Thoonk.job(name)`` returns a ``Job``: a ``JobChannel`` whose calls take the forms of the
thoonk.py document and the Thoonk Jobs README, so code written for them runs as written::

    job = thoonk.job('job_feed')
    job.put('job contents')
    job.put('priority job', priority=job.HIGH)
    id, item, cancel_count = job.get(timeout=5)        # Empty (a queue.Empty) on timeout
    job.finish(id, 'result contents', result=True, timeout=5)
    query, result = job.get_result(id, timeout=5)
    job.publish(b'{"whatever": "you need"}', on_finish=lambda result: print(result))

Differences from ``JobChannel`` (taskpipe's own API, ``Thoonk.job_channel(name)``, which the app
and the worker use): ``get`` blocks forever by default and raises ``Empty`` instead of returning
``None``; ``get`` returns a ``JobClaim`` (a 3-tuple with the claim's attributes); ``finish`` takes
thoonk.py's ``(id, item, result=True, timeout=)``; ``get_result`` returns ``(query, result)``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.durations import DurationLike, parse_duration
from taskpipe.errors import Empty, ResultTimeout
from taskpipe.thoonk.job import DEFAULT_LEASE_MS, Claim, FinishRequest, JobChannel, new_id
from taskpipe.thoonk.job_reads import _b
from taskpipe.thoonk.scripts import broker_errors

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["Job", "JobClaim", "FinishCallbacks", "RESULT_TTL_MS"]

#: How long a result given to ``Job.finish`` without a ``timeout`` is kept (one day).
RESULT_TTL_MS = 24 * 3600 * 1000


class JobClaim(tuple[str, bytes, int]):
    """A claimed job as ``Job.get`` returns it: unpacks as ``(id, item, cancel_count)``
    (thoonk.py 1.0.1) and has the ``Claim``'s attributes (``id``, ``item``, ``cancel_count``,
    ``token``, ``attempts``, ``channel``; the whole ``Claim`` as ``claim``)."""

    claim: Claim

    def __new__(cls, claim: Claim) -> JobClaim:
        self = super().__new__(cls, (claim.id, claim.item, claim.cancel_count))
        self.claim = claim
        return self

    @property
    def id(self) -> str:
        """The job id."""
        return self.claim.id

    @property
    def item(self) -> bytes:
        """The job's payload."""
        return self.claim.item

    @property
    def cancel_count(self) -> int:
        """How many times the job was sent back to the queue."""
        return self.claim.cancel_count

    @property
    def token(self) -> str:
        """The fencing token of this claim (pass it to ``finish`` to be fenced)."""
        return self.claim.token

    @property
    def attempts(self) -> int:
        """Earlier runs that raised."""
        return self.claim.attempts

    @property
    def channel(self) -> str:
        """The channel's name."""
        return self.claim.channel


class FinishCallbacks:
    """The ``on_finish`` callbacks of one ``Thoonk`` object, run from its listener thread when
    ``job.finish:<f>`` announces a result for their job (each runs once, then is dropped)."""

    def __init__(self, thoonk: Thoonk) -> None:
        self.thoonk = thoonk
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], list[Callable[[bytes | None], Any]]] = {}
        self._hooked = False

    def add(self, channel: str, job_id: str, callback: Callable[[bytes | None], Any]) -> None:
        """Run ``callback(result)`` once the job finishes with a result; listens from now on."""
        if not callable(callback):
            raise TypeError("on_finish must be callable")
        with self._lock:
            self._pending.setdefault((channel, job_id), []).append(callback)
            hook = not self._hooked
            self._hooked = True
        listener = self.thoonk.listener_object()
        if hook:
            listener.on("finish", self._fire)
        if not listener.running:
            self.thoonk.start_listener()

    def _fire(self, channel: str, job_id: str, result: bytes | None) -> None:
        with self._lock:
            callbacks = self._pending.pop((channel, job_id), [])
        for callback in callbacks:
            callback(result)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._pending.values())


class Job(JobChannel):
    """A job channel with the thoonk.py job API (see the module docstring)."""

    #: ``put(item, priority=job.HIGH)``: served next
    HIGH = True
    #: ``put(item, priority=job.NORMAL)``: waits behind the others (the default)
    NORMAL = False

    def __repr__(self) -> str:
        return f"<Job {self.name!r}>"

    # publishing (Thoonk Jobs) -----------------------------------------------------------------
    def publish(
        self,
        item: bytes | str,
        id: str | None = None,
        priority: bool = False,
        on_finish: Callable[[bytes | None], Any] | None = None,
    ) -> str:
        """Put a job and return its id, as Thoonk Jobs' ``publish(item, {id, priority,
        onFinish})``. ``on_finish(result)`` runs (in this ``Thoonk``'s listener thread) when any
        worker, taskpipe or legacy, finishes the job with a result; a plain acknowledgement
        (``finish(id)``) publishes nothing on the wire, so it does not fire."""
        if on_finish is None:
            return self.put_new(item, priority=priority, id=id)[0]
        job_id = id or new_id()
        self._finish_callbacks().add(self.name, job_id, on_finish)  # listening before the put
        self.put_new(item, priority=priority, id=job_id)
        return job_id

    def _finish_callbacks(self) -> FinishCallbacks:
        thoonk = self.thoonk
        with thoonk._listener_lock:
            if thoonk._finish_callbacks is None:
                thoonk._finish_callbacks = FinishCallbacks(thoonk)
            callbacks: FinishCallbacks = thoonk._finish_callbacks
        return callbacks

    # claiming ---------------------------------------------------------------------------------
    def get(
        self,
        timeout: DurationLike | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
        worker: str = "",
    ) -> JobClaim:
        """Claim the next job: ``get()`` and ``get(0)`` block until there is one, ``get(timeout=5)``
        waits 5 s and then raises ``Empty``. Returns a ``JobClaim``: ``id, item, cancel_count =
        job.get()``. The claim is atomic and leased (``lease_ms``; see docs/thoonk.md)."""
        if timeout is not None:  # seconds or a duration; DurationError (a ValueError) if bad
            timeout = parse_duration(timeout)
        claim = self.get_claim(timeout or 0, lease_ms, worker)
        if claim is None:
            raise Empty(f"no job in channel {self.name!r} within {timeout} s")
        return JobClaim(claim)

    # outcomes ---------------------------------------------------------------------------------
    def finish(  # type: ignore[override]
        self,
        id: str,
        item: bytes | str | None = None,
        result: bool | bytes | str | None = None,
        timeout: float | None = None,
        *,
        result_ttl_ms: int | None = None,
        token: str = "",
        failed: bool = False,
    ) -> None:
        """Finish a claimed job, in thoonk.py's three ways:

        - ``finish(id)``: a plain acknowledgement (nothing published);
        - ``finish(id, 'result contents', result=True)``: publish the result on
          ``job.finish:<f>`` (``<id>\\0<result>``, even for an empty result) and keep it, with
          the job's item, for ``get_result`` (one day unless ``timeout``);
        - ``finish(id, 'result contents', result=True, timeout=5)``: keep them 5 s.

        ``finish(id, item)`` without ``result=`` is a result too (taskpipe's form);
        ``result=False`` acknowledges and drops ``item``. ``token`` fences the finish to a claim.
        The old keyword form ``finish(id, result=b'contents')`` is deprecated and warns.
        """
        if isinstance(result, (bytes, bytearray, str)):
            warnings.warn(
                "Job.finish(id, result=<contents>) is deprecated: use finish(id, "
                "<contents>, result=True)",
                DeprecationWarning,
                stacklevel=2,
            )
            item, result = result, True
        if result is False:
            contents: bytes | None = None
        elif result is True:
            contents = b"" if item is None else _b(item)
        else:
            contents = None if item is None else _b(item)
        if timeout is not None:
            if timeout < 0:
                raise ValueError("timeout (how long the result is kept) must be >= 0")
            ttl = int(float(timeout) * 1000)
        else:
            ttl = RESULT_TTL_MS if result_ttl_ms is None else int(result_ttl_ms)
        req = FinishRequest(
            id,
            token,
            contents,
            ttl if contents is not None else 0,
            failed,
            keep_query=contents is not None,
        )
        self._raise_for(self.finish_many([req])[0], id, "claimed", token)

    # results ----------------------------------------------------------------------------------
    def get_result(  # type: ignore[override]
        self,
        id: str,
        timeout: DurationLike | None = None,
    ) -> tuple[bytes | None, bytes]:
        """``query, result = job.get_result(id, timeout=5)``: the job's original item and its
        result, waiting up to ``timeout`` seconds for the job to finish (no polling).

        Raise ``ResultTimeout`` when no result came in time. ``query`` is ``None`` when the
        result was not kept with its item (a finish with a result TTL of 0, or by a legacy
        client, publishes the result only).
        """
        if timeout is not None:
            timeout = parse_duration(timeout)
        result = super().get_result(id, timeout)
        if result is None:
            raise ResultTimeout(
                f"no result for job {id!r} in channel {self.name!r}"
                + (f" within {timeout} s" if timeout else "")
            )
        with broker_errors(f"get_result {id!r}"):
            query: bytes | None = self.client.get(self.keys.query(id))
        return query, result
