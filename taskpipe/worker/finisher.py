"""The worker's finisher thread: writes the outcomes pool threads hand it, many per script call.

``FinisherMixin`` holds the thread's loop, the retry of a write while Redis is away and the
wait until what was handed over is written (``_settle_outcomes``); ``Worker`` inherits it (they
use the worker's own state).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from taskpipe.worker.keeper import BROKER_ERRORS as _BROKER_ERRORS

if TYPE_CHECKING:
    from taskpipe.thoonk.job import Claim
    from taskpipe.worker.announce import Announcer
    from taskpipe.worker.outcomes import OutcomeWriter
    from taskpipe.worker.runner import Outcome

__all__ = ["FinisherMixin"]

log = logging.getLogger("taskpipe.worker")

#: how long the finisher waits for an outcome before it looks whether the worker stopped
FINISHER_POLL = 0.2


class FinisherMixin:
    """The finisher thread and its helpers (see ``Worker``)."""

    # set by Worker.__init__
    lease_s: float
    burst: bool
    _waiter: Any
    writer: OutcomeWriter
    announcer: Announcer
    _running: dict[tuple[str, str], Claim]
    _running_lock: threading.Lock
    _slot: threading.Condition
    _done: queue.SimpleQueue[Outcome | None]
    _stopping: threading.Event
    _stop_now: threading.Event
    _broker_back: threading.Event
    _writes_failing: bool
    _settled: int
    _queued: int

    def _finisher(self) -> None:
        while True:
            try:
                first = self._done.get(timeout=FINISHER_POLL)
            except queue.Empty:
                first = None
            if first is None:  # None: put by ``run`` once stopped, to end this thread now
                if self._stopping.is_set():
                    with self._running_lock:
                        if not self._running:
                            return
                continue
            batch = [first]
            while len(batch) < 1000:
                try:
                    nxt = self._done.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._done.put(None)  # for the next round, once this batch is written
                    break
                batch.append(nxt)
            running = self._running
            with self._running_lock:
                # match the claim itself (token included): the same job id may already be
                # claimed again by this worker (a retry due at once) under a new token; the
                # held claim is most often the very object (``is``: no field-by-field compare)
                keys = [(o.claim.channel, o.claim.id) for o in batch]
                held = [running.get(key) for key in keys]
                live = [o for o, c in zip(batch, held) if c is o.claim or c == o.claim]
            self._write_with_retry(live)
            self.announcer.flush()
            with self._slot:
                for o, key in zip(batch, keys):
                    c = running.get(key)
                    if c is o.claim or (c is not None and c == o.claim):
                        del running[key]
                self._settled += len(batch)
                self._slot.notify_all()
                idle = not running
            if idle and self.burst:  # the loop may be blocked only because these were running
                self._interrupt_wait()

    def _interrupt_wait(self) -> None:
        """End the claim loop's blocking wait on the wake keys now (``ListWaiter.interrupt``):
        it claims again at once, so a stop, or a burst whose last job just finished, does not
        wait for the block timeout (``max_block``, the CLI's ``--poll-interval``)."""
        waiter = self._waiter
        if waiter is not None:
            waiter.interrupt()

    def _write_with_retry(self, outcomes: list[Outcome]) -> None:
        """Write outcomes; while Redis is down keep trying for up to two leases (the jobs stay
        'running', so their leases keep being renewed once Redis is back), then give up: the
        leases expire and the jobs run again elsewhere (at least once)."""
        give_up = time.monotonic() + 2 * self.lease_s
        delay = 0.05
        try:
            self._retry_write(outcomes, give_up, delay)
        finally:
            self._writes_failing = False

    def _retry_write(self, outcomes: list[Outcome], give_up: float, delay: float) -> None:
        while True:
            try:
                self.writer.write(outcomes)
                return
            except _BROKER_ERRORS as exc:
                if time.monotonic() >= give_up or self._stop_now.is_set():
                    log.error(
                        "could not write %d outcomes (%s); their leases will expire and "
                        "the jobs will run again",
                        len(outcomes),
                        exc,
                    )
                    return
                # the first failure of a batch is a warning; its retries are quiet (no flood)
                (log.warning if delay == 0.05 else log.debug)(
                    "writing outcomes failed (%s); retrying", exc
                )
                # the backoff ends early when the keeper reaches Redis again (or on stop)
                self._writes_failing = True
                self._broker_back.clear()
                if not self._stop_now.is_set():
                    self._broker_back.wait(delay)
                delay = min(delay * 2, 2.0)
            except Exception:  # never let the finisher die
                log.exception(
                    "could not write %d outcomes; their leases will expire", len(outcomes)
                )
                return

    def _settle_outcomes(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the finisher has written every outcome handed to it so far.
        Run before a job that was sent back before starts (it may be what killed a worker):
        a finished job's outcome is then never lost with the process it kills."""
        deadline = time.monotonic() + timeout
        with self._slot:
            target = self._queued
            while self._settled < target and not self._stop_now.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._slot.wait(min(remaining, 0.2))
