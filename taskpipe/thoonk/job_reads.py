"""The read side of a Thoonk job channel: results (waited for on the ``job.finish`` channel), a
job's state and bookkeeping, counts, ids and logs.

``JobReads`` holds these calls; ``JobChannel`` inherits it, so they are ``JobChannel`` methods
(and map broker errors like its own: see ``maps_broker_errors``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from taskpipe.connection import close_quietly
from taskpipe.errors import SerializationError
from taskpipe.states import JobState
from taskpipe.thoonk.job_watch import JobWatch
from taskpipe.thoonk.script_keys import contract

if TYPE_CHECKING:
    from taskpipe.thoonk.job import PutRequest
    from taskpipe.thoonk.keys import JobKeys
    from taskpipe.thoonk.scripts import ScriptRegistry
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["JobReads", "JobInfo", "RECORD_FIELDS", "record_fields"]

#: the fields of a job record as stored (one letter each: see ``lua/_record.lua``)...
RECORD_FIELDS = ("o", "l", "i", "n", "a", "c", "w", "p", "s", "f", "r", "x", "q", "v", "u", "e")
#: ... and their names
RECORD_NAMES = (
    "outcome",
    "label",
    "item",
    "item_size",
    "attempts",
    "cancels",
    "worker",
    "published",
    "started",
    "finished",
    "runtime_ms",
    "code",
    "requeues",
    "previous",
    "requeued",
    "last_error",
)


def record_fields(values: Sequence[Any]) -> dict[str, bytes]:
    """An ``HMGET record *RECORD_FIELDS`` reply as name -> value (absent fields left out; an
    empty dict when there is no record)."""
    return {f: v for f, v in zip(RECORD_NAMES, values) if v is not None}


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise SerializationError(  # a TypeError too
        f"job items and results must be bytes or str, not {type(value).__name__}"
    )


def _check_id(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise TypeError(f"a job id must be a non-empty str without NUL, got {value!r}")
    return value


@dataclass(frozen=True)
class JobInfo:
    """A job's state and bookkeeping, read atomically by ``JobChannel.info``."""

    id: str
    state: JobState
    cancel_count: int
    attempts: int
    reason: str
    worker: str
    progress: str
    lease_deadline_ms: int | None
    due_ms: int | None
    finished_ms: int | None
    published_ms: int | None
    result_ttl_ms: int | None


def _opt_int(value: Any) -> int | None:
    text = _s(value)
    return int(float(text)) if text not in ("", "-2", "-1") else None


class JobReads:
    """The read-side calls of ``JobChannel`` (a mixin: ``JobChannel.__init__`` sets the state)."""

    #: ``maps_broker_errors`` on ``JobChannel`` maps these methods' errors too, as its own
    _broker_errors_mapped_by_subclass: ClassVar[bool] = True

    # set by JobChannel.__init__
    thoonk: Thoonk
    keys: JobKeys
    client: Any
    scripts: ScriptRegistry
    _pubsub: Any
    _pubsub_lock: threading.Lock

    # results --------------------------------------------------------------------------------
    def get_result(self, id: str, timeout: float | None = None) -> bytes | None:
        """The stored result of a finished job, waiting up to ``timeout`` seconds for it.

        Waits on the ``job.finish`` channel (no polling). Returns None on timeout or when the
        job finished without a stored result.
        """
        key = self.keys.result(id)
        value: bytes | None = self.client.get(key)
        if value is not None or not timeout:
            return value
        pubsub, shared = self._borrow_pubsub()
        keep = True
        try:
            pubsub.subscribe(self.keys.ch_finish)
            value = self.client.get(key)  # it may have landed before we subscribed
            deadline = time.monotonic() + timeout
            prefix = id.encode() + b"\0"
            while value is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                msg = pubsub.get_message(timeout=min(remaining, 1.0))
                if msg and isinstance(msg.get("data"), bytes) and msg["data"].startswith(prefix):
                    found: bytes = msg["data"][len(prefix) :]
                    return found
                if msg is None and self.info(id).state == JobState.FINISHED:
                    late: bytes | None = self.client.get(key)
                    return late
            return value
        except BaseException:
            keep = False  # the connection's state is unknown: do not keep it
            raise
        finally:
            self._return_pubsub(pubsub, shared, keep)

    def stored_result(self, id: str) -> bytes | None:
        """The job's stored result as written at finish, without waiting (None if none)."""
        value: bytes | None = self.client.get(self.keys.result(id))
        return value

    def watch(
        self,
        events: Sequence[str] = ("finish",),
        *,
        shared: bool = True,
        keep_on: tuple[type[BaseException], ...] = (),
    ) -> JobWatch:
        """A subscription to this channel's ``finish`` / ``retract`` / ``events`` pub/sub
        channels, as a context manager (see ``taskpipe.thoonk.job_watch``)."""
        return JobWatch(self, events, shared=shared, keep_on=keep_on)

    def _borrow_pubsub(self) -> tuple[Any, bool]:
        """A pub/sub connection for one result wait: ``(pubsub, shared)``.

        The shared one is free unless another thread waits on this channel right now; it comes
        back unsubscribed, and is only lent again once its unsubscribe is confirmed (every
        message of the earlier wait is read and dropped by then).
        """
        if not self._pubsub_lock.acquire(blocking=False):
            return self.thoonk.connection.new_client().pubsub(ignore_subscribe_messages=True), False
        try:
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                try:
                    deadline = time.monotonic() + 1.0
                    while pubsub.subscribed:
                        if time.monotonic() >= deadline:
                            raise TimeoutError("no unsubscribe confirmation")
                        pubsub.get_message(timeout=0.05)
                except Exception:  # noqa: BLE001 - a broken idle connection: open a new one
                    close_quietly(pubsub)
                    pubsub = None
            if pubsub is None:
                pubsub = self.thoonk.connection.new_client().pubsub(ignore_subscribe_messages=True)
            return pubsub, True
        except BaseException:
            self._pubsub_lock.release()
            raise

    def _return_pubsub(self, pubsub: Any, shared: bool, keep: bool) -> None:
        if not shared:
            pubsub.close()
            return
        try:
            if keep:
                pubsub.unsubscribe()  # confirmed (and its messages dropped) at the next borrow
                self._pubsub = pubsub
            else:
                pubsub.close()
        except Exception:  # noqa: BLE001 - keep nothing broken; the next wait opens a new one
            close_quietly(pubsub)
        finally:
            self._pubsub_lock.release()

    # reads ----------------------------------------------------------------------------------
    def state_keys(self, id: str) -> list[str]:
        """KEYS of the ``job_state`` script for one job (also run by ``thoonk/job_async.py``)."""
        return contract("job_state").build(
            self.keys, result=self.keys.result(id), waiting=self.keys.waiting
        )

    def info(self, id: str) -> JobInfo:
        """A job's state and bookkeeping, read in one atomic step."""
        r = self.scripts["job_state"](self.client, self.state_keys(id), [id])
        return JobInfo(
            id=id,
            state=JobState(_s(r[0])),
            cancel_count=int(_s(r[1]) or 0),
            attempts=int(_s(r[2]) or 0),
            reason=_s(r[3]),
            worker=_s(r[4]),
            progress=_s(r[5]),
            lease_deadline_ms=_opt_int(r[6]),
            due_ms=_opt_int(r[7]),
            finished_ms=_opt_int(r[8]),
            published_ms=_opt_int(r[9]),
            result_ttl_ms=_opt_int(r[10]),
        )

    def landed(self, requests: Sequence[PutRequest], since_ms: int) -> set[str]:
        """Ids of ``requests`` a failed publish may have written after all (a retry skips them):
        unfinished, or finished (a fresh id: ever; an id the caller chose: at or after
        ``since_ms``, client clock, less 2 s for skew)."""
        pipe = self.client.pipeline(transaction=False)
        for req in requests:
            pipe.hexists(self.keys.items, req.id or "").zscore(self.keys.finished, req.id or "")
        r = pipe.execute() if requests else []
        return {
            req.id or ""
            for req, exists, fin in zip(requests, r[::2], r[1::2])
            if exists or (fin is not None and (req.fresh or fin >= since_ms - 2000))
        }

    def get_item(self, id: str) -> bytes | None:
        """A job's payload (None once finished or retracted)."""
        return self.client.hget(self.keys.items, id)  # type: ignore[no-any-return]

    def get_ids(self) -> list[str]:
        """Ids of every unfinished job (available, delayed, claimed, stalled): ``HKEYS items``."""
        return [_s(x) for x in self.client.hkeys(self.keys.items)]

    def get_failure_count(self, id: str) -> int:
        """How many times the job was cancelled (sent back to the queue)."""
        return int(self.client.hget(self.keys.cancelled, id) or 0)

    def counts(self) -> dict[str, int]:
        """Jobs per state, plus lifetime counters."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.ids).zcard(k.delayed).zcard(k.claimed).scard(k.stalled).zcard(k.finished)
        pipe.get(k.publishes).get(k.finishes).get(k.failures).zcard(k.prio).hlen(k.waiting)
        r = pipe.execute()
        return {
            "available": int(r[0]) + int(r[8]),
            "delayed": int(r[1]),
            "waiting": int(r[9]),
            "claimed": int(r[2]),
            "stalled": int(r[3]),
            "finished": int(r[4]),
            "published_total": int(r[5] or 0),
            "finished_total": int(r[6] or 0),
            "failed_total": int(r[7] or 0),
        }

    def stalled_ids(self) -> list[str]:
        """Ids of stalled jobs."""
        return sorted(_s(x) for x in self.client.smembers(self.keys.stalled))

    def stall_reason(self, id: str) -> str:
        """Why a job was stalled ('' if none recorded)."""
        return _s(self.client.hget(self.keys.reasons, id) or b"")

    def record(self, id: str) -> dict[str, bytes] | None:
        """An ended job's record (``lua/_record.lua``): field -> bytes, or None if it has none."""
        raw = record_fields(self.client.hmget(self.keys.record(id), RECORD_FIELDS))
        return raw or None

    # logs -----------------------------------------------------------------------------------
    def logs(self, id: str, start: int = 0, end: int = -1) -> list[bytes]:
        """A job's log lines, oldest first."""
        return list(self.client.lrange(self.keys.log(id), start, end))
