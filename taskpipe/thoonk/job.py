"""Thoonk job channels: put, claim, finish, cancel, stall, retry, retract, with leases and results.

The v1 keys and list directions are kept exactly (see ``docs/contract.md``); every mutating
operation is one Lua script. taskpipe adds delayed puts, leases with fencing tokens, a reaper,
durable results with a TTL and per-job progress and logs. The read-side calls (results, info,
counts, ids, logs) are in ``job_reads.py`` (``JobReads``), the cleaning calls in
``job_clean.py`` (``JobCleaning``), the operators' paged reads in ``job_browse.py``
(``JobBrowsing``), finishing in ``job_finish.py`` (``FinishOps``) and the reaper in
``job_reap.py`` (``ReapOps``); ``JobChannel`` inherits them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import maps_broker_errors
from taskpipe.connection import close_quietly
from taskpipe.errors import JobNotFound, LeaseLost, WrongJobState
from taskpipe.thoonk.abort import AbortOps
from taskpipe.thoonk.flow import PutFlow, put_flow, put_flow_args
from taskpipe.thoonk.job_browse import JobBrowsing
from taskpipe.thoonk.job_clean import JobCleaning
from taskpipe.thoonk.job_finish import FINISHED_INDEX_MS, FinishOps, FinishRequest
from taskpipe.thoonk.job_reads import JobInfo, JobReads, _b, _check_id, _s
from taskpipe.thoonk.job_reap import Reaped, ReapOps
from taskpipe.thoonk.job_records import RECORD_ITEM_MAX, JobRecords
from taskpipe.thoonk.keys import JobKeys
from taskpipe.thoonk.script_keys import contract
from taskpipe.thoonk.scripts import broker_errors
from taskpipe.thoonk.workflow import WorkflowOps

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = [
    "JobChannel",
    "Claim",
    "JobInfo",
    "FinishRequest",
    "PutRequest",
    "Reaped",
    "new_id",
    "DEFAULT_LEASE_MS",
    "FINISHED_INDEX_MS",
    "RECORD_ITEM_MAX",
]

DEFAULT_LEASE_MS = 30_000


def new_id() -> str:
    """A fresh job id (uuid4 hex, as thoonk.py makes them)."""
    # the bits of uuid.uuid4().hex (random, version 4, RFC 4122 variant), without building a UUID
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _runs_now(req: PutRequest) -> bool:
    return req.delay_ms <= 0 and req.eta_ms <= 0


@dataclass(frozen=True)
class Claim:
    """One claimed job: what a worker needs to run it and to finish it under its lease."""

    channel: str
    id: str
    item: bytes
    cancel_count: int
    token: str
    attempts: int
    #: the broker's clock (ms) when it was claimed (0 where unknown)
    claimed_ms: int = 0
    #: the broker's clock (ms) when it was published (0 where unknown): with ``claimed_ms``,
    #: the time it waited (``taskpipe_job_wait_seconds``)
    published_ms: int = 0


@dataclass(frozen=True)
class PutRequest:
    """One job to publish with ``put_many``."""

    item: bytes
    id: str | None = None
    priority: bool = False
    delay_ms: int = 0
    eta_ms: int = 0
    #: True when ``id`` was just made by ``new_id()`` (so no earlier run can own it): lets a
    #: job to run now take the batched ``job_put_fresh`` path.
    fresh: bool = False
    #: flow control (numeric priority, rate/concurrency groups, dedup): ``job_put_flow``
    flow: PutFlow | None = None
    #: ``(channel, id)`` of the jobs this one waits for (``depends_on``): ``job_put_waiting``
    parents: tuple[tuple[str, str], ...] = ()


@maps_broker_errors  # no redis-py exception type leaves a public method
class JobChannel(
    JobReads, JobCleaning, JobBrowsing, JobRecords, FinishOps, ReapOps, WorkflowOps, AbortOps
):
    """A Thoonk job channel. Open one with ``Thoonk.job(name)``."""

    def __init__(self, thoonk: Thoonk, name: str) -> None:
        self.thoonk = thoonk
        self.name = name
        self.keys: JobKeys = thoonk.keys.job(name)
        self.client: Any = thoonk.client
        self.scripts = thoonk.scripts
        k = self.keys
        # KEYS built once for the hot paths; the order is each script's contract (script_keys)
        self.claim_keys = contract("job_claim").build(k)
        self._put_keys = contract("job_put").build(k)
        self._fresh_keys = contract("job_put_fresh").build(k)
        self._finish_keys = contract("job_finish").build(k)
        # one pub/sub connection kept open between result waits (opening one per wait costs
        # more than the wait itself); a wait that finds it in use opens its own, as before
        self._pubsub: Any = None
        self._pubsub_lock = threading.Lock()

    def close(self) -> None:
        """Close the pub/sub connection kept for result waits (the channel stays usable; a wait
        in progress keeps its connection until it ends)."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            close_quietly(pubsub)

    def __repr__(self) -> str:
        return f"<JobChannel {self.name!r}>"

    # publishing -----------------------------------------------------------------------------
    def put(
        self,
        item: bytes | str,
        priority: bool = False,
        id: str | None = None,
        delay_ms: int = 0,
        eta_ms: int = 0,
    ) -> str:
        """Publish a job; returns its id. An id that already exists is not published twice."""
        return self.put_new(item, priority=priority, id=id, delay_ms=delay_ms, eta_ms=eta_ms)[0]

    def put_new(
        self,
        item: bytes | str,
        priority: bool = False,
        id: str | None = None,
        delay_ms: int = 0,
        eta_ms: int = 0,
    ) -> tuple[str, bool]:
        """Publish a job; returns ``(id, created)`` where ``created`` is False for an existing id."""
        fresh = id is None
        req = PutRequest(
            _b(item), _check_id(id) or new_id(), priority, int(delay_ms), int(eta_ms), fresh
        )
        return req.id or "", self.put_request(req)

    def put_request(self, req: PutRequest) -> bool:
        """Publish one prepared request (its ``id`` set); True if it was created."""
        assert req.id is not None
        if req.flow is not None:
            return put_flow(self, req).code == 1
        if req.fresh and _runs_now(req):
            flags = self.scripts["job_put_fresh"](
                self.client, self._fresh_keys, ["1" if req.priority else "0", req.id, req.item]
            )
        else:
            flags = self.scripts["job_put"](
                self.client, self._put_keys_for([req.id]), [1, *self._put_args(req.id, req)]
            )
        return bool(int(flags[0]))

    def _put_keys_for(self, ids: list[str]) -> list[str]:
        return [*self._put_keys, *(self.keys.result(i) for i in ids)]

    def _put_args(self, job_id: str, req: PutRequest) -> list[Any]:
        return [
            job_id,
            req.item,
            "1" if req.priority else "0",
            max(0, req.delay_ms),
            max(0, req.eta_ms),
        ]

    def put_many(self, requests: Iterable[PutRequest], batch: int = 500) -> list[tuple[str, bool]]:
        """Publish many jobs, ``batch`` per script call, all calls in one pipeline.

        Runs of requests with fresh ids to run now go through ``job_put_fresh`` (one command of
        each kind per batch); the others through ``job_put``. Publish order is kept.
        """
        out: list[tuple[str, bool]] = []
        # each call: (kind: "P" job_put, "F0"/"F1" job_put_fresh at the tail/head, ids, args)
        pending: list[tuple[str, list[str], list[Any]]] = []
        ids: list[str] = []
        args: list[Any] = []
        kind = ""
        batch = max(1, min(batch, 1000))
        for req in requests:
            item = req.item if type(req.item) is bytes else _b(req.item)
            job_id = _check_id(req.id) or new_id()
            if req.flow is not None:  # one job_put_flow call each, in order
                if ids:
                    pending.append((kind, ids, args))
                ids, kind = [], ""
                pending.append(
                    ("X", [job_id], list(put_flow_args(self, replace(req, item=item, id=job_id))))
                )
                continue
            fresh = (req.fresh or req.id is None) and _runs_now(req)
            this = ("F1" if req.priority else "F0") if fresh else "P"
            if this != kind or len(ids) >= batch:
                if ids:
                    pending.append((kind, ids, args))
                ids, args, kind = [], ([this[1]] if fresh else []), this
            ids.append(job_id)
            if fresh:
                args += (job_id, item)
            else:
                args += (
                    job_id,
                    item,
                    "1" if req.priority else "0",
                    max(0, req.delay_ms),
                    max(0, req.eta_ms),
                )
        if ids:
            pending.append((kind, ids, args))
        for (kind, ids, _), flags in zip(pending, self._run_puts(pending)):
            if kind == "X":  # job_put_flow: {code, id}
                out.append((ids[0], int(flags[0]) == 1))
                continue
            out += [(i, bool(int(f))) for i, f in zip(ids, flags)]
        return out

    def _run_puts(self, pending: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Run put calls ``(kind, ids, args)`` (kind "P": ``job_put``, else ``job_put_fresh``)
        in one pipeline, in order; returns their replies."""
        if not pending:
            return []
        pipe = self.client.pipeline(transaction=False)
        put, put_fresh = self.scripts["job_put"], self.scripts["job_put_fresh"]
        for kind, ids, args in pending:
            if kind == "X":
                self.scripts["job_put_flow"].queue(pipe, args[0], args[1])
            elif kind == "P":
                put.queue(pipe, self._put_keys_for(ids), [len(ids), *args])
            else:
                put_fresh.queue(pipe, self._fresh_keys, args)
        with broker_errors("put_many"):
            self.scripts.ensure_loaded(
                self.client,
                *sorted(
                    {
                        {"P": "job_put", "X": "job_put_flow"}.get(kind, "job_put_fresh")
                        for kind, _, _ in pending
                    }
                ),
            )
            return list(pipe.execute())

    def put_fresh_many(
        self,
        items: Sequence[bytes],
        priority: bool = False,
        batch: int = 500,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Publish ``items`` as new jobs to run now, with new ids; returns the ids in order.

        The bulk fast path (``Task.map``): ``batch`` jobs per ``job_put_fresh`` call (one
        command of each kind per batch), all calls in one pipeline. ``ids``: fresh ids made
        by the caller with ``new_id()`` (to retry a publish with the same ids).
        """
        batch = max(1, min(batch, 1000))
        ids = list(ids) if ids is not None else [new_id() for _ in items]
        flag = "1" if priority else "0"
        pending: list[tuple[str, list[str], list[Any]]] = []
        for start in range(0, len(ids), batch):
            part_ids, part_items = ids[start : start + batch], items[start : start + batch]
            args: list[Any] = [flag] + [b""] * (2 * len(part_ids))
            args[1::2] = part_ids
            args[2::2] = (
                [_b(i) for i in part_items]
                if any(type(i) is not bytes for i in part_items)
                else part_items
            )
            pending.append(("F" + flag, part_ids, args))
        self._run_puts(pending)
        return ids

    # claiming -------------------------------------------------------------------------------
    def claim(
        self,
        count: int = 1,
        lease_ms: int = DEFAULT_LEASE_MS,
        worker: str = "",
        promote_limit: int = 100,
    ) -> list[Claim]:
        """Claim up to ``count`` available jobs now (never blocks)."""
        from taskpipe.thoonk.claiming import claim_from  # claiming imports this module

        return claim_from(self.thoonk, [self], count, lease_ms, worker, promote_limit)[0]

    def get(
        self, timeout: float | None = 0, lease_ms: int = DEFAULT_LEASE_MS, worker: str = ""
    ) -> tuple[str, bytes, int] | None:
        """Thoonk get: wait up to ``timeout`` seconds (0 = forever, None = don't wait) for a job.

        Returns ``(id, item, cancel_count)`` or None on timeout. The claim is atomic and leased.
        """
        claim = self.get_claim(timeout, lease_ms, worker)
        return (claim.id, claim.item, claim.cancel_count) if claim else None

    def get_claim(
        self, timeout: float | None = 0, lease_ms: int = DEFAULT_LEASE_MS, worker: str = ""
    ) -> Claim | None:
        """Like ``get`` but returns the whole ``Claim`` (with its fencing token)."""
        from taskpipe.thoonk.claiming import wait_and_claim  # claiming imports this module

        claims = wait_and_claim(self.thoonk, [self], 1, lease_ms, worker, timeout)
        return claims[0] if claims else None

    # outcomes -------------------------------------------------------------------------------
    def cancel(self, id: str, token: str = "", not_before_ms: int = 0) -> int:
        """Send a claimed job back to the queue; returns its new cancel count.

        ``not_before_ms`` > 0: it becomes available only after that delay (a job sent back at
        shutdown while its old thread may still run it)."""
        args: list[Any] = [id, token]
        if not_before_ms > 0:
            keys = contract("job_cancel").build(self.keys, delayed=self.keys.delayed)
            args.append(int(not_before_ms))
        else:
            keys = contract("job_cancel").build(self.keys)
        code, count = self.scripts["job_cancel"](self.client, keys, args)
        self._raise_for(int(code), id, "claimed", token)
        return int(count)

    def release(self, claims: Sequence[tuple[str, str]]) -> list[int]:
        """Give back claimed jobs that never started, ``(id, token)`` in claim order: they go
        to the head of the queue in that order, their cancel counts unchanged (a worker's
        prefetched jobs at shutdown). Returns a code per job: 1 released, 0 not claimed,
        -1 claimed under another token (left alone)."""
        keys = contract("job_release").build(self.keys)
        codes: list[int] = []
        for start in range(0, len(claims), 1000):
            args = [x for pair in claims[start : start + 1000] for x in pair]
            codes += [int(c) for c in self.scripts["job_release"](self.client, keys, args)]
        return codes

    def stall(
        self, id: str, reason: str = "", token: str = "", record: tuple[str, int] | None = None
    ) -> None:
        """Park a claimed job with a reason; it is not dispatched until ``retry``.
        ``record`` = ``(label, ttl_ms)`` keeps its record (worker, claim time: docs/history.md)."""
        args: list[Any] = [id, token, reason]
        given: dict[str, str] = {}
        if record is not None:
            given["record"] = self.keys.record(id)
            args += [int(record[1]), record[0]]
        code = self.scripts["job_stall"](
            self.client, contract("job_stall").build(self.keys, **given), args
        )
        self._raise_for(int(code), id, "claimed", token)

    def retry(self, id: str, reset_counts: bool = True) -> None:
        """Make a stalled job available again (``reset_counts`` gives it a fresh budget)."""
        code = self.scripts["job_retry"](
            self.client, contract("job_retry").build(self.keys), [id, "1" if reset_counts else "0"]
        )
        self._raise_for(int(code), id, "stalled")

    def defer(
        self,
        id: str,
        token: str = "",
        delay_ms: int = 0,
        count_attempt: bool = True,
        item: bytes | None = None,
    ) -> int:
        """Release a claimed job to run again after ``delay_ms``; returns its attempt count."""
        code, attempts = self.scripts["job_defer"](
            self.client,
            contract("job_defer").build(self.keys),
            [id, token, max(0, int(delay_ms)), "1" if count_attempt else "0", item or b""],
        )
        self._raise_for(int(code), id, "claimed", token)
        return int(attempts)

    def drop_result(self, id: str) -> bool:
        """Delete a finished job's stored result (and the item kept beside it); True if there
        was one. One DEL: the job's state and indexes are not touched."""
        return bool(self.client.delete(self.keys.result(id), self.keys.query(id)))

    def retract_keys(self, id: str) -> list[str]:
        """KEYS of the ``job_retract`` script for one job, in the order of its header."""
        k = self.keys
        return contract("job_retract").build(
            k,
            result=k.result(id),
            log=k.log(id),
            prio=k.prio,
            flow=k.flow,
            waiting=k.waiting,
            record=k.record(id),
            failed_index=k.failed_index,
        )

    def retract(self, id: str, record_ttl_ms: int = 0) -> None:
        """Remove a job from every state, its stored result, record and log included.
        ``record_ttl_ms`` > 0: a job retracted before it ended keeps a record (outcome
        ``retracted``, its payload) that long (docs/history.md)."""
        if not self.scripts["job_retract"](
            self.client,
            self.retract_keys(id),
            [id, self.thoonk.keys.feed(self.name).ch_retract, "", max(0, int(record_ttl_ms))],
        ):
            raise JobNotFound(f"no job {id!r} in channel {self.name!r}")

    def retract_stalled_before(self, ids: Sequence[str], stalled_before_ms: int) -> list[str]:
        """Retract those of ``ids`` still stalled since at or before ``stalled_before_ms``
        (server time), each atomically; returns the ids retracted."""
        return self.retract_each(ids, [int(stalled_before_ms)])

    def retract_stalled(self, ids: Sequence[str]) -> list[str]:
        """Retract those of ``ids`` still stalled (whatever their stall time), each atomically;
        returns the ids retracted. A job retried meanwhile is left alone."""
        return self.retract_each(ids, ["stalled"])

    def retract_each(self, ids: Sequence[str], guard: Sequence[str | int]) -> list[str]:
        """``job_retract`` for each of ``ids`` with the same guard ARGV (after the id and the
        event channel: see the script's header), one script call per job in one pipeline;
        returns the ids retracted."""
        if not ids:
            return []
        channel = self.thoonk.keys.feed(self.name).ch_retract
        self.scripts.ensure_loaded(self.client, "job_retract")
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            self.scripts["job_retract"].queue(
                pipe, self.retract_keys(job_id), [job_id, channel, *guard]
            )
        return [job_id for job_id, ok in zip(ids, pipe.execute()) if int(ok)]

    def _raise_for(self, code: int, id: str, expected: str, token: str = "") -> None:
        if code == 1:
            return
        if code == -1:
            raise LeaseLost(id)
        actual = self.info(id).state
        if actual == "unknown":
            raise JobNotFound(f"no job {id!r} in channel {self.name!r}")
        if token and expected == "claimed":
            raise LeaseLost(id, actual)  # the caller's claim was reaped: its lease is gone
        raise WrongJobState(id, expected, actual)

    # leases ---------------------------------------------------------------------------------
    def extend(
        self, claims: Iterable[tuple[str, str]], lease_ms: int = DEFAULT_LEASE_MS
    ) -> list[str]:
        """Renew leases for ``(id, token)`` pairs; returns the ids whose lease was lost."""
        args: list[Any] = [int(lease_ms)]
        for job_id, token in claims:
            args += [job_id, token]
        if len(args) == 1:
            return []
        lost = self.scripts["job_extend"](
            self.client, contract("job_extend").build(self.keys), args
        )
        return [_s(x) for x in lost]

    def promote(self, limit: int = 1000) -> tuple[int, int | None]:
        """Move due delayed jobs to available; returns ``(moved, next_due_ms or None)``."""
        moved, nxt = self.scripts["job_promote"](
            self.client, contract("job_promote").build(self.keys), [limit]
        )
        return int(moved), (int(nxt) if int(nxt) >= 0 else None)

    # progress and logs ----------------------------------------------------------------------
    def set_progress(self, id: str, progress: str, token: str = "") -> None:
        """Record a claimed job's progress (free text, e.g. ``"3/10"``) and publish it."""
        k = self.keys
        code = self.scripts["job_progress"](
            self.client, contract("job_progress").build(k), [id, token, progress, k.ch_events]
        )
        self._raise_for(int(code), id, "claimed", token)

    def log(
        self,
        id: str,
        lines: Sequence[str | bytes],
        max_lines: int = 1000,
        ttl_ms: int = 7 * 24 * 3600 * 1000,
    ) -> int:
        """Append lines to a job's log (capped at ``max_lines``, expiring after ``ttl_ms``)."""
        if not lines:
            return 0
        k = self.keys
        n = self.scripts["job_log"](
            self.client,
            contract("job_log").build(k, log=k.log(id)),
            [id, max_lines, ttl_ms, k.ch_events, *lines[:1000]],
        )
        return int(n)

    def announce(self, events: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish job events on ``feed.jobevent:<f>`` as ``kind\\0id\\0data``, 1000 per script
        call (the worker announces outcomes this way once they are written; taskpipe.events)."""
        messages = [
            b"%s\0%s\0%s" % (kind.encode(), job_id.encode(), data) for kind, job_id, data in events
        ]
        keys = contract("job_announce").build(self.keys)
        for start in range(0, len(messages), 1000):
            self.scripts["job_announce"](
                self.client, keys, [self.keys.ch_events, *messages[start : start + 1000]]
            )

    def event_followers(self) -> int:
        """How many subscriptions may receive this channel's job events: direct subscribers of
        ``feed.jobevent:<f>`` plus every pattern subscription of the server (``PUBSUB NUMPAT``
        cannot tell patterns apart, so any pattern counts)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.pubsub_numsub(self.keys.ch_events)
        pipe.pubsub_numpat()
        numsub, numpat = pipe.execute()
        return sum(int(n) for _, n in numsub) + int(numpat)

    # pause ----------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop workers from claiming from this channel (persistent, cluster-wide)."""
        self.thoonk.set_config(self.name, paused="1")

    def resume(self) -> None:
        """Let workers claim from this channel again."""
        self.thoonk.set_config(self.name, paused=None)

    @property
    def paused(self) -> bool:
        """True while the channel is paused."""
        return _s(self.client.hget(self.keys.config, "paused") or b"") == "1"


def __getattr__(name: str) -> Any:
    """``claim_from`` / ``wait_and_claim`` live in ``taskpipe.thoonk.claiming`` (which imports
    this module); they stay importable from here, resolved on first use so there is no cycle."""
    if name in ("claim_from", "wait_and_claim"):
        from taskpipe.thoonk import claiming

        return getattr(claiming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
