"""The worker's keeper thread: renews the leases of running jobs, holds the worker's presence,
reaps the claims of dead workers and expired leases on its channels, and refreshes the worker's
entry in the worker registry.

``KeeperMixin`` holds this upkeep; ``Worker`` inherits it (it uses the worker's own state).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from taskpipe.errors import BrokerUnavailable
from taskpipe.serialization import decode_envelope
from taskpipe.worker.runner import Outcome, reap_limit

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import Claim, JobChannel
    from taskpipe.thoonk.workers import Presence
    from taskpipe.worker.outcomes import OutcomeWriter
    from taskpipe.worker.registry import WorkerRegistry
    from taskpipe.worker.runner import Prepared

__all__ = ["KeeperMixin", "BROKER_ERRORS"]

log = logging.getLogger("taskpipe.worker")


def task_label(item: bytes) -> str:
    """The task name of a job's payload, for its record ('' for a payload that is not a
    taskpipe envelope: a raw Thoonk job, or bad bytes)."""
    try:
        return str(decode_envelope(item).task or "")
    except Exception:  # noqa: BLE001 - a record label is informational; never fail the reaper
        return ""


#: seconds between the keeper's checks for aborted jobs of a process pool
ABORT_CHECK_EVERY = 0.25
#: the keeper's longest sleep between two rounds
KEEPER_TICK = 0.25

#: The errors that mean "Redis is unreachable right now" (retried, not fatal).
#: transient errors: the worker waits and tries again. A raw ``OSError`` is a socket-level
#: fault that redis-py did not wrap (a closed descriptor, say): never a property of a job or
#: an outcome, so it must not fail one.
BROKER_ERRORS = (
    BrokerUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)


class KeeperMixin:
    """Lease renewal, presence, reaping and registry upkeep: the keeper thread (see ``Worker``)."""

    # set by Worker.__init__
    app: TaskPipe
    channels: list[JobChannel]
    lease_s: float
    reaper_interval: float
    heartbeat_interval: float
    dead_after_ms: int
    presence: Presence
    registry: WorkerRegistry
    writer: OutcomeWriter
    _running: dict[tuple[str, str], Claim]
    _running_lock: threading.Lock
    _slot: threading.Condition
    _queued: int
    _settled: int
    _stopping: threading.Event
    _stop_now: threading.Event
    _keeper_wake: threading.Event
    _broker_back: threading.Event
    _broker_failures: int
    _writes_failing: bool
    _lost_logged: set[tuple[str, str, str]]
    _pool: Any
    _buffer: collections.deque[Prepared]

    if TYPE_CHECKING:

        @property
        def running(self) -> list[Claim]: ...

    def _keeper(self) -> None:
        lease_ms = int(self.lease_s * 1000)
        renew_every = max(0.02, self.lease_s / 3)
        next_renew = next_reap = next_beat = next_abort_check = 0.0
        last_log = -1e9
        while not (self._stopping.is_set() and not self.running):
            now = time.monotonic()
            try:
                if now >= next_reap:
                    # first: never judge others while our own is down; and before renewing,
                    # which can wait (for the finisher): after a broker restart a live worker
                    # not subscribed again within dead_after is judged dead by its peers
                    self._hold_presence()
                if now >= next_renew:
                    self._renew(lease_ms)
                    next_renew = now + renew_every
                if now >= next_reap:
                    self._reap()
                    next_reap = now + self.reaper_interval
                    if self._broker_failures or self._writes_failing:
                        self._broker_back.set()  # Redis answered: the claim loop, finisher retry
                if now >= next_abort_check:  # process pool: terminate aborted jobs' children
                    self._check_aborts()
                    next_abort_check = now + ABORT_CHECK_EVERY
                if now >= next_beat:
                    self.registry.beat(self)
                    self._hold_presence(rejoin=True)
                    next_beat = now + self.heartbeat_interval
            except Exception as exc:  # noqa: BLE001 - keep renewing; Redis may come back
                if now - last_log >= 30:
                    log.warning("keeper: %s (retrying; logged at most every 30 s)", exc)
                    last_log = now
            if self._keeper_wake.wait(min(renew_every, self.reaper_interval, KEEPER_TICK)):
                self._keeper_wake.clear()  # set by ``run`` once stopped: look at once

    def _check_aborts(self) -> None:
        """Act on aborted jobs this worker holds: a prefetched one that has not started is not
        started (its outcome is ``aborted``); a process pool is told, to terminate a child that
        does not stop by itself. (A running thread or async task sees the abort itself through
        ``current_job().aborted``.)"""
        by_channel: dict[str, list[tuple[str, str]]] = {}
        for claim in self.running:
            by_channel.setdefault(claim.channel, []).append((claim.id, claim.token))
        aborted: set[tuple[str, str]] = set()
        for name, runs in by_channel.items():
            aborted.update((name, i) for i in self.app.channel(name).aborted_among(runs))
        if not aborted:
            return
        for prepared in list(self._buffer):  # not started yet: never start them
            claim = prepared.claim
            if (claim.channel, claim.id) in aborted and prepared.early is None:
                prepared.early = Outcome(
                    "aborted",
                    claim,
                    exc_type="JobAborted",
                    exc_message="aborted before it started",
                    envelope=prepared.envelope,
                    task=prepared.task,
                )
        abort = getattr(self._pool, "abort", None)
        if abort is not None:
            for name, job_id in aborted:
                abort(name, job_id)

    def _hold_presence(self, rejoin: bool = False) -> None:
        try:
            if self.presence.hold(rejoin=rejoin) and not rejoin:
                log.info("presence subscription re-made (broker restarted or failed over?)")
        except BROKER_ERRORS as exc:
            log.debug("presence: broker unavailable (%s); retrying", exc)
        except Exception as exc:  # noqa: BLE001 - e.g. PUBSUB refused by an ACL: lease only
            log.warning(
                "presence: %s; this worker's jobs are recovered by lease only if it dies", exc
            )
            self.presence.enabled = False

    def _reap(self) -> None:
        limit = reap_limit(self.app)
        presence = self.presence.reap_args(self.dead_after_ms)
        record = (int(self.app.failure_ttl * 1000), task_label)  # a stalled job keeps its record
        for ch in self.channels:
            reaped = ch.reap_detail(limit, presence=presence, record=record)
            self.writer.reaped(ch.name, len(reaped.requeued), len(reaped.stalled))
            for worker in reaped.dead_workers:
                log.warning(
                    "worker %s is gone (its connections to Redis closed): its jobs on %s "
                    "go back to the queue",
                    worker,
                    ch.name,
                )
            dead = set(reaped.dead_ids)
            for job_id in reaped.requeued:
                if job_id in dead:
                    log.warning("job %s/%s of a dead worker: back to the queue", ch.name, job_id)
                else:
                    log.warning("lease of job %s/%s expired: back to the queue", ch.name, job_id)
            for job_id in reaped.stalled:
                log.error("job %s/%s stalled: worker_lost too many times", ch.name, job_id)

    def _renew(self, lease_ms: int) -> None:
        by_channel: dict[str, list[tuple[str, str]]] = {}
        for claim in self.running:
            by_channel.setdefault(claim.channel, []).append((claim.id, claim.token))
        lost: set[tuple[str, str, str]] = set()
        settle_by = 0.0  # one bounded wait for the finisher per pass, not one per lost claim
        for name, pairs in by_channel.items():
            tokens = dict(pairs)
            for job_id in self.app.channel(name).extend(pairs, lease_ms):
                key = (name, job_id, tokens.get(job_id, ""))
                settle_by = settle_by or time.monotonic() + self.lease_s / 6
                if not self._lost_under(name, job_id, key[2], settle_by):
                    continue  # its outcome was written meanwhile (by this worker): not lost
                lost.add(key)
                if key not in self._lost_logged:  # once per claim, not on every renewal
                    # said by what is known: the finish decides (and logs) whether it is refused
                    log.warning(
                        "lease renewal of job %s/%s failed: it is no longer claimed "
                        "under this worker's token (its lease expired and it was "
                        "reaped, or it was retracted)",
                        name,
                        job_id,
                    )
        self._lost_logged = lost

    def _lost_under(self, name: str, job_id: str, token: str, deadline: float) -> bool:
        """Whether a claim whose renewal failed is really lost: this worker still holds it
        under ``token`` once the finisher has written every outcome handed to it before now.

        The finisher writes a batch of outcomes and only then drops their claims from
        ``_running``; a renewal between the two finds a job this worker just finished. Its
        outcome was handed over before the renewal ran, so it is settled (and its claim
        dropped) once ``_settled`` reaches the ``_queued`` read here. The wait is bounded by
        ``deadline`` (a sixth of a lease after the pass's first lost claim, shared by the
        pass); a claim still undecided then is not reported now (False): the next renewal asks
        again."""
        with self._slot:
            target = self._queued
            while self._settled < target and not self._stop_now.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._slot.wait(remaining)
            held = self._running.get((name, job_id))
        return held is not None and held.token == token
