"""The worker's shutdown: after the claim loop ends, prefetched jobs go back unstarted, running
jobs get ``grace`` seconds, and the ones still held then are sent back to their queues.

``ShutdownMixin`` holds these steps; ``Worker`` inherits it (they use the worker's own state).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import Claim
    from taskpipe.worker.runner import Prepared

__all__ = ["ShutdownMixin"]

log = logging.getLogger("taskpipe.worker")


class ShutdownMixin:
    """Drain, send back and release: the end of ``Worker.run`` (see ``Worker``)."""

    # set by Worker.__init__
    app: TaskPipe
    grace: float
    fence: float
    pool_kind: str
    _pool: Any
    _pool_down: bool
    _buffer: collections.deque[Prepared]
    _running: dict[tuple[str, str], Claim]
    _in_task: dict[int, Claim]
    _running_lock: threading.Lock
    _slot: threading.Condition
    _stop_now: threading.Event

    def _drain(self) -> None:
        """After the loop: give prefetched jobs back, wait up to ``grace`` for running jobs,
        then send the rest back (``_send_back``)."""
        self._release_buffer()
        deadline = time.monotonic() + self.grace
        with self._slot:
            while self._running and not self._stop_now.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._slot.wait(min(remaining, 0.2))
        if self._running:
            self._send_back()

    def _send_back(self) -> None:
        """Send back the jobs still held when the grace ran out, so that none can start
        elsewhere while this process may still run it:

        - process pool: the children are killed first and the pool shut down, then the jobs go
          back at once (their outcomes, mostly, already say so);
        - a job whose task has returned is not sent back: the finisher writes its outcome;
        - a job still running in a thread (thread or async pool; a thread cannot be killed): back
          with a not-before delay of ``fence`` seconds, time for this process to exit and take
          the thread with it.

        Each goes back with its cancel count +1 (it started and did not finish)."""
        if self.pool_kind == "process":
            kill = getattr(self._pool, "kill_children", None)
            if kill is not None:
                kill()
            self._shutdown_pool()
            with self._slot:  # let the finisher write what the killed children reported
                settle = time.monotonic() + 2.0
                while self._running and not self._stop_now.is_set() and time.monotonic() < settle:
                    self._slot.wait(0.1)
        with self._running_lock:
            # a job whose task has returned is left to the finisher (its outcome is written,
            # not thrown away); run() joins the finisher before it returns
            leftovers = [c for c in self._running.values() if self._in_task.get(id(c)) is c]
            for claim in leftovers:
                self._running.pop((claim.channel, claim.id), None)
        delay = int(self.fence * 1000) if self.pool_kind != "process" else 0
        for claim in leftovers:
            try:
                self.app.channel(claim.channel).cancel(
                    claim.id, token=claim.token, not_before_ms=delay
                )
                if delay:
                    log.warning(
                        "job %s/%s still running at shutdown: sent back to the queue, "
                        "available again in %.1fs (its thread may run until this "
                        "process exits)",
                        claim.channel,
                        claim.id,
                        self.fence,
                    )
                else:
                    log.warning(
                        "job %s/%s unfinished at shutdown: sent back to the queue",
                        claim.channel,
                        claim.id,
                    )
            except Exception as exc:  # noqa: BLE001 - lease may be gone already
                log.warning("could not send job %s back: %s", claim.id, exc)

    def _shutdown_pool(self) -> None:
        if not self._pool_down and self._pool is not None:
            self._pool_down = True
            self._pool.shutdown()

    def _release_buffer(self) -> None:
        """Prefetched jobs that never started go back to the head of their queues, in order,
        their cancel counts unchanged (``JobChannel.release``)."""
        with self._slot:
            buffered, self._buffer = list(self._buffer), collections.deque()
        unstarted = getattr(self._pool, "unstarted", None)  # a process pool's jobs not started
        if unstarted is not None:
            buffered += unstarted(self.grace)
        self._release([p.claim for p in buffered], "prefetched, never started")
        with self._slot:
            for p in buffered:
                self._running.pop((p.claim.channel, p.claim.id), None)
            self._slot.notify_all()

    def _release(self, claims: list[Claim], why: str) -> None:
        """Give claims back unstarted: to the head of their queues in claim order, cancel
        counts unchanged (``JobChannel.release``)."""
        by_channel: dict[str, list[Claim]] = {}
        for c in claims:
            by_channel.setdefault(c.channel, []).append(c)
        for name, group in by_channel.items():
            try:
                self.app.channel(name).release([(c.id, c.token) for c in group])
                log.info("%d job(s) of %s given back unstarted (%s)", len(group), name, why)
            except Exception as exc:  # noqa: BLE001 - their leases expire: the reaper requeues them
                log.warning(
                    "could not give back %d job(s) of %s (%s): %s", len(group), name, why, exc
                )
