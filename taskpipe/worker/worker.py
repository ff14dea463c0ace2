"""The worker: claims jobs in strict channel order, runs them in a pool, writes outcomes in batches.

Threads of one worker process:

- the main loop claims up to the free slots plus ``prefetch`` in one script call, or blocks on
  the channels' wake-up lists (never busy-polls) while they are empty; prefetched jobs wait in
  a local buffer, and a pool thread that finishes a job starts the next one from it at once;
- the finisher writes outcomes as they complete, many per script call (``OutcomeWriter``);
- the keeper renews leases of running jobs (every lease/3), holds this worker's presence (a
  subscription Redis drops when the process dies), reaps the claims of dead workers and expired
  leases on the same channels, and refreshes this worker's entry in the worker registry
  (``KeeperMixin``, in ``worker/keeper.py``).

Shutdown (prefetched jobs given back, the grace, sending back what is still held) is
``ShutdownMixin``, in ``worker/shutdown.py``; the finisher thread ``FinisherMixin``, in
``worker/finisher.py``; the claim order of the channels and reopening them after a broker
outage ``ChannelsMixin``, in ``worker/channels.py``.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from taskpipe.context import JobLogHandler
from taskpipe.durations import parse_duration
from taskpipe.errors import ConfigError
from taskpipe.thoonk.claiming import HELD_BACK, PRECISE_WAIT, claim_from, wait_then_claim
from taskpipe.thoonk.job import Claim, JobChannel
from taskpipe.thoonk.workers import Presence
from taskpipe.worker.announce import Announcer
from taskpipe.worker.channels import ChannelsMixin
from taskpipe.worker.finisher import FinisherMixin
from taskpipe.worker.keeper import BROKER_ERRORS as _BROKER_ERRORS
from taskpipe.worker.keeper import KeeperMixin
from taskpipe.worker.outcomes import OutcomeWriter
from taskpipe.worker.pools import make_pool
from taskpipe.worker.registry import WorkerRegistry
from taskpipe.worker.runner import Outcome, Prepared, prepare
from taskpipe.worker.settings import WorkerOptions, WorkerSettings
from taskpipe.worker.shutdown import ShutdownMixin

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from taskpipe.app import TaskPipe

__all__ = ["Worker"]

log = logging.getLogger("taskpipe.worker")

#: Default prefetch while jobs are short (see ``Worker._claim_room``), and what "short" is.
SHORT_PREFETCH = 64
SHORT_JOB = 0.002
#: A thread pool whose jobs take under TRIVIAL_JOB seconds (moving average) runs them on at most
#: TRIVIAL_THREADS threads at a time (waking a thread costs more than such a job).
TRIVIAL_JOB = 0.00005
TRIVIAL_THREADS = 2
#: Claims held (``Worker._running``) are capped at two rounds of the pool plus this many buffers
#: of short-job prefetch: finished jobs whose outcome is still being written stay held, and a
#: claim waits for that room. With one buffer (the cap until round four) a drain of no-op jobs
#: alternated claim, run, write: every claim waited for the previous write to land.
HELD_BUFFERS = 3


class Worker(KeeperMixin, ShutdownMixin, ChannelsMixin, FinisherMixin):
    """Consumes channels in strict order (``['high', 'default']``: nothing from default while high
    has an available job). ``run()`` returns when stopped, or when empty in ``burst`` mode.
    """

    def __init__(
        self,
        app: TaskPipe,
        channels: Sequence[str] | None = None,
        *,
        settings: WorkerSettings | None = None,
        **options: Unpack[WorkerOptions],
    ) -> None:
        """``settings`` (a ``WorkerSettings``) and/or its fields as keyword arguments (which win
        over ``settings``); ``TypeError`` naming a keyword that is not a setting."""
        self.app = app
        self.settings = s = WorkerSettings.merge(settings, options)
        self.channel_names = list(channels or [app.default_channel])
        if not self.channel_names or any(not c for c in self.channel_names):
            raise ConfigError(f"bad channel list {channels!r}")
        self.concurrency = s.concurrency or (os.cpu_count() or 2) * (
            1 if s.pool == "process" else 4
        )
        # prefetch: jobs claimed ahead of free slots (default: two more rounds of concurrency)
        self.prefetch = 2 * self.concurrency if s.prefetch is None else s.prefetch
        self.pool_kind = s.pool
        self.app_path = s.app_path
        self.burst = s.burst
        self.max_jobs = s.max_jobs
        self.name = s.name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.lease_s = parse_duration(s.lease) if s.lease is not None else app.lease
        self.grace = parse_duration(s.grace)
        # a job still running in a thread when the grace ends is sent back not before this delay:
        # time for this process to exit (and take the thread with it) before it can start again
        self.fence = parse_duration(s.fence)
        # dead_after: a worker whose every connection closed is dead after this long (None or 0:
        # off, its claims wait for their leases); checked by the reaper, every 0.5 s by default
        dead_after_s = parse_duration(s.dead_after) if s.dead_after is not None else 0.0
        self.dead_after_ms = int(dead_after_s * 1000)
        self.reaper_interval = (
            parse_duration(s.reaper_interval)
            if s.reaper_interval is not None
            else min(0.5 if dead_after_s else 5.0, max(0.05, self.lease_s / 2))
        )
        self.weighted = s.weighted
        self.weights = list(s.weights or [])
        self.beat = s.beat
        self.batch = max(1, min(s.batch, 1000))
        self.max_block = s.max_block
        self.heartbeat_interval = s.heartbeat_interval
        self.capture_logs = s.capture_logs
        self.channels: list[JobChannel] = []  # every physical channel (a sharded one's shards)
        self._groups: list[list[JobChannel]] = []  # the shards of each channel, in -Q order
        self._rotation = 0  # the shard each sharded channel's claim starts at (rotates)
        try:
            self._set_channels(app.sharding.expand(self.channel_names))
        except _BROKER_ERRORS:
            pass  # Redis is down at start: run() opens them once it is reachable
        self.writer = OutcomeWriter(app)
        self.announcer = Announcer(app)  # job events of written outcomes (taskpipe.events)
        self.writer.listeners.append(self.announcer)
        self.registry = WorkerRegistry(app)
        self.presence = Presence(app.thoonk, self.name)
        self.presence.enabled = self.presence.enabled and self.dead_after_ms > 0
        self.claimed_total = 0
        #: called with each batch of claims the worker takes to run (not those given back at
        #: stop): ``taskpipe.contrib.metrics`` observes their wait times. Must not raise.
        self.claim_listeners: list[Callable[[list[Claim]], None]] = []
        self.started_at = time.time()
        self._running: dict[tuple[str, str], Claim] = {}  # every claim held, outcome written or not
        self._executing = 0  # claims handed to the pool whose task has not returned yet
        # those claims (the job may still be running), by ``id()``: a dataclass hash per job
        # would cost more than the rest of this bookkeeping
        self._in_task: dict[int, Claim] = {}
        self._pool_down = False
        self._buffer: collections.deque[Prepared] = collections.deque()  # prefetched, not started
        # claim again once the buffer is down to this (prefetch 0: whenever a slot is free)
        self._low_water = self.prefetch // 2
        # the default prefetch grows to SHORT_PREFETCH while jobs are short (moving average under
        # SHORT_JOB seconds) and the worker has one channel (no priority order to keep), so that
        # low concurrency still claims in batches; an explicit prefetch is kept as given
        self._prefetch_short = (
            max(self.prefetch, SHORT_PREFETCH)
            if s.prefetch is None and len(self.channel_names) == 1
            else self.prefetch
        )
        self._avg_duration = 1.0  # moving average of task durations (s): starts "long"
        # claims whose outcome is still being written do not take an execution slot, so the next
        # claim overlaps the previous finish; this bounds how many such claims can pile up
        self._max_held = 2 * self.concurrency + HELD_BUFFERS * self._prefetch_short
        # jobs the pool takes at once (a process pool holds several per child) and the smallest
        # claim worth a round trip while no slot is idle; both set again once the pool exists
        self._capacity = self.concurrency
        self._min_claim = 1
        self._done_callback: Any = self._job_done
        self._loop_waiting = False  # (``_slot`` held) the main loop waits for room to claim
        self._settled = 0  # outcomes written so far (burst mode: did one land during a claim?)
        self._queued = 0  # outcomes handed to the finisher so far
        self._running_lock = threading.Lock()
        self._slot = threading.Condition(self._running_lock)
        self._done: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._keeper_wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_now = threading.Event()
        self._block_client: Any = None
        self._pool: Any = None
        self._threads: list[threading.Thread] = []
        self._scheduler: Any = None
        self._broker_failures = 0
        # set by the keeper when it reaches Redis while the claim loop or the finisher is
        # backing off from an outage (and on stop): they retry at once, not at their backoff's end
        self._broker_back = threading.Event()
        self._writes_failing = False  # the finisher is retrying a write (broker unavailable)
        self._waiter: Any = None  # the claim loop's blocking wait on the wake keys (``_block``)
        self._last_broker_log = 0.0
        self._lost_logged: set[tuple[str, str, str]] = set()  # claims reported lost (keeper)

    # control --------------------------------------------------------------------------------
    def stop(self, graceful: bool = True) -> None:
        """Stop claiming; running jobs get ``grace`` seconds (or none if not ``graceful``).

        Calling it again (or with ``graceful=False``) stops at once."""
        if not graceful or self._stopping.is_set():
            self._stop_now.set()
        self._stopping.set()
        self._broker_back.set()
        self._wake_all()

    def _wake_all(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop(timeout=0)
        with self._slot:
            self._slot.notify_all()
        self._interrupt_wait()  # a loop blocked on the wake keys looks at once

    def _on_signal(self, signum: int, frame: Any) -> None:
        # the handler runs in the main thread, which may hold ``_slot``: it only sets events
        # (claiming stops at once: a claim still in flight is released by ``_start``) and leaves
        # the waking of waiters and the scheduler to a helper thread
        graceful = not self._stopping.is_set()
        if not graceful:
            self._stop_now.set()
        self._stopping.set()
        self._broker_back.set()
        if graceful:
            log.info(
                "signal %s: claiming no more; finishing running jobs (grace %.1fs)",
                signum,
                self.grace,
            )
        else:
            log.warning("second signal: stopping at once")
        threading.Thread(target=self._wake_all, name="taskpipe-stop", daemon=True).start()

    @property
    def running(self) -> list[Claim]:
        """Claims currently held by this worker (running and prefetched)."""
        with self._running_lock:
            return list(self._running.values())

    @property
    def executing_count(self) -> int:
        """Jobs whose task is running now (handed to the pool, not returned yet)."""
        return self._executing

    @property
    def prefetched_count(self) -> int:
        """Jobs claimed ahead of free slots, waiting in this worker's buffer."""
        return len(self._buffer)

    # main loop ------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (or empty, in burst mode); returns the exit code (0)."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        handler = JobLogHandler() if self.capture_logs else None
        if handler is not None:
            logging.getLogger().addHandler(handler)
        self._pool = make_pool(self.pool_kind, self.app, self.concurrency, self.app_path)
        self._capacity = getattr(self._pool, "capacity", self.concurrency)
        # the thread pool, and the async pool's threads for plain tasks
        for target_pool in (self._pool, getattr(self._pool, "_threads", None)):
            if target_pool is not None and hasattr(target_pool, "before_suspect"):
                target_pool.before_suspect = self._settle_outcomes
        self._done_callback = self._job_finished if self.pool_kind == "thread" else self._job_done
        self._max_held = 2 * self._capacity + HELD_BUFFERS * self._prefetch_short
        self._min_claim = max(1, (self._capacity + self.prefetch) // 4)
        self._block_client = self.app.connection.new_client()
        self._hold_presence(rejoin=True)  # before the first claim (the keeper retries on failure)
        for target, tname in (
            (self._finisher, "taskpipe-finisher"),
            (self._keeper, "taskpipe-keeper"),
        ):
            t = threading.Thread(target=target, name=tname, daemon=True)
            t.start()
            self._threads.append(t)
        if self.beat:
            from taskpipe.scheduler import Scheduler

            self._scheduler = Scheduler(self.app)
            self._scheduler.start()
        log.info(
            "worker %s consuming %s (%s pool, concurrency %d)",
            self.name,
            ",".join(self.channel_names),
            self.pool_kind,
            self.concurrency,
        )
        self.app.middleware.call("worker_start", self)
        try:
            self._loop()
            self._drain()
        finally:
            if self._scheduler is not None:
                self._scheduler.stop()
            self._stopping.set()
            self._shutdown_pool()
            self._done.put(None)  # the finisher and the keeper look now, not after their poll
            self._keeper_wake.set()
            for t in self._threads:
                t.join(timeout=5)
            if self._waiter is not None:
                self._waiter.close()  # its wake-up thread (if any) ends with the worker
            self.registry.remove(self.name)
            self.presence.leave()
            self.app.middleware.call("worker_stop", self)
            if handler is not None:
                logging.getLogger().removeHandler(handler)
            for sig, old in previous.items():
                signal.signal(sig, old)
        log.info("worker %s stopped: %s", self.name, dict(self.writer.stats))
        return 0

    def _loop(self) -> None:
        """Claim up to the free slots and start the claims; with none, wait for work (or a due
        job) and claim on waking. Returns on stop, at ``max_jobs`` or (``burst``) once idle."""
        lease_ms = int(self.lease_s * 1000)
        self._waiter = None
        # (next_due, now) of a claim made on waking up that left the channels empty: what an
        # immediate claim would find, so the loop goes straight back to waiting (a job put since
        # left a wake-up marker)
        drained: tuple[int | None, int] | None = None
        while not self._stopping.is_set():
            if not self.channels and not self._open_channels():
                continue
            with self._slot:
                free = self._claim_room()
                if free <= 0:
                    drained = None
                    self._loop_waiting = True
                    self._slot.wait(0.5)
                    self._loop_waiting = False
                    continue
            if self.max_jobs is not None:
                free = min(free, self.max_jobs - self.claimed_total)
                if free <= 0:
                    self._wait_idle()
                    return
            count = min(free, self.batch)
            claims: list[Claim]
            if drained is not None:  # a drained result keeps the snapshot from before its claim
                claims, (next_due, now), drained = [], drained, None
            else:
                settled = self._settled
                got = self._claim_now(count, lease_ms)
                if got is None:  # Redis is down (backed off)
                    continue
                claims, next_due, now = got
            if claims:
                self._start(claims)
                continue
            if next_due == HELD_BACK:  # the next job waits for a free slot, not for Redis
                self._wait_for_slot()
                continue
            if self.burst and self._burst_done(settled, next_due, now):
                return
            wait = self.max_block
            if next_due is not None:
                wait = min(wait, max(0.001, (next_due - now) / 1000.0))
                if wait < PRECISE_WAIT:
                    # a due job or a rate-limit slot this close: Redis times a BLPOP out on its
                    # own clock tick (100 ms steps at hz 10), so wait here instead, then claim
                    self._stopping.wait(wait)
                    continue
            drained = self._block(wait, count, lease_ms)

    def _claim_now(self, count: int, lease_ms: int) -> tuple[list[Claim], int | None, int] | None:
        """Claim up to ``count`` jobs now: ``(claims, next_due, now)``; None if Redis is down."""
        try:
            got = claim_from(
                self.app.thoonk,
                self._ordered_channels(),
                count,
                lease_ms,
                self.name,
                run_now=self.concurrency - self._executing,
            )
        except _BROKER_ERRORS as exc:
            self._broker_down(exc)
            return None
        if self._broker_failures:
            log.info("broker reachable again (after %d failed tries)", self._broker_failures)
            self._reregister_channels()
        self._broker_failures = 0
        if not self.writer.eviction.checked:
            self.writer.eviction.check_policy(_BROKER_ERRORS)
        return got

    def _wait_for_slot(self) -> None:
        """The next job is held back for a free execution slot: wait for one to free up."""
        with self._slot:
            if self._executing >= self.concurrency and not self._stopping.is_set():
                self._loop_waiting = True
                self._slot.wait(self.max_block)
                self._loop_waiting = False

    def _burst_done(self, settled: int, next_due: int | None, now: int) -> bool:
        """Burst mode: nothing runs or waits to be written, no job is due within ``max_block``."""
        with self._running_lock:
            # an outcome written while we claimed (e.g. a cancel) may have put a job back
            idle = not self._running and self._settled == settled
        due_soon = next_due is not None and next_due - now <= self.max_block * 1000
        return idle and self._done.empty() and not due_soon

    def _block(self, wait: float, count: int, lease_ms: int) -> tuple[int | None, int] | None:
        """Wait up to ``wait`` s on the wake keys, claiming on waking (behind the BLPOP); returns
        the ``(next_due, now)`` of a claim on waking that left the channels drained, else None."""
        try:
            wake = [c.keys.wake for c in self.channels]
            waiter = self._waiter  # one BLPOP (one per slot on a Redis Cluster), kept
            if waiter is None or waiter.keys != wake:
                if waiter is not None:
                    waiter.close()
                waiter = self._waiter = self.app.connection.list_waiter(
                    wake, client=self._block_client, max_block=self.max_block, interruptible=True
                )
            if not waiter.pipelines:
                waiter.wait(wait)
                return None
            got = self._wait_then_claim(waiter, wait, count, lease_ms)
        except _BROKER_ERRORS as exc:
            self._broker_down(exc)
            return None
        if got is not None and got[0] and len(got[0]) < count and got[1] != HELD_BACK:
            return (got[1], got[2])
        return None

    def _wait_then_claim(
        self, waiter: Any, wait: float, count: int, lease_ms: int
    ) -> tuple[list[Claim], int | None, int] | None:
        """Block for work and claim on waking (``wait_then_claim``), and start what was claimed.

        With a free thread in a thread pool, the wait runs on that pool thread, which then runs
        the first job it claimed itself (``ThreadPool.submit_wait``); this thread waits for it.
        """
        channels = self._ordered_channels()

        def wait_and_claim() -> tuple[list[Claim], int | None, int] | None:
            return wait_then_claim(
                self.app.thoonk,
                waiter,
                channels,
                wait,
                count,
                lease_ms,
                self.name,
                run_now=self.concurrency - self._executing,
            )

        if self.pool_kind != "thread" or self._executing >= self._capacity:
            got = wait_and_claim()
            if got is not None and got[0]:
                self._start(got[0])
            return got
        box: dict[str, Any] = {}
        ready = threading.Event()

        def wait_on_pool_thread() -> tuple[Prepared, Any] | None:
            first = None
            try:
                got = box["got"] = wait_and_claim()
                if got is not None and got[0]:
                    first = self._start(got[0], keep_first=True)
            except BaseException as exc:  # noqa: BLE001 - raised again in the worker's thread
                box["error"] = exc
            finally:
                ready.set()
            return None if first is None else (first, self._job_finished)

        self._pool.submit_wait(wait_on_pool_thread)
        while not ready.wait(0.2):
            if self._stop_now.is_set():
                return None
        if "error" in box:
            raise box["error"]
        return box.get("got")

    def _wait_idle(self) -> None:
        with self._slot:
            while self._running and not self._stop_now.is_set():
                self._slot.wait(0.2)

    def _start(self, claims: list[Claim], keep_first: bool = False) -> Prepared | None:
        """Hand claims to the pool up to the free execution slots; buffer the rest (prefetch).

        ``keep_first`` (called on a free pool thread): the first job to run is returned for the
        calling thread to run, not submitted."""
        if self._stopping.is_set():
            # claimed after the stop decision (a claim riding behind a wait, a prefetch): give
            # them back at once, to the head of their queues, cancel counts unchanged
            self._release(claims, "claimed after the stop signal")
            return None
        self.claimed_total += len(claims)
        for listener in self.claim_listeners:
            try:
                listener(claims)
            except Exception:  # a metrics hook must never break the worker
                log.exception("claim listener %r failed", listener)
        prepared = [prepare(self.app, c) for c in claims]
        with self._running_lock:
            for c in claims:
                self._running[(c.channel, c.id)] = c
            self._buffer.extend(prepared)  # behind any still buffered: they start first
            start = self._take_startable()
        first = start[0] if keep_first and start else None
        for p in start[1 if first is not None else 0 :]:
            self._pool.submit(p, self._done_callback)
        return first

    def _take_startable(self) -> list[Prepared]:
        """(lock held) Take buffered jobs for the free execution slots, counted as executing."""
        now = max(0, min(len(self._buffer), self._start_limit() - self._executing))
        self._executing += now
        start = [self._buffer.popleft() for _ in range(now)]
        for p in start:
            self._in_task[id(p.claim)] = p.claim
        return start

    def _trivial(self) -> bool:
        """Whether a thread pool's jobs are trivial: they then run on at most
        ``TRIVIAL_THREADS`` threads (they gain nothing from more: the running threads take the
        buffered jobs one after another, and no other thread is woken)."""
        return self._avg_duration < TRIVIAL_JOB and self.pool_kind == "thread"

    def _start_limit(self) -> int:
        """How many jobs may execute at once now (``_trivial``: at most ``TRIVIAL_THREADS``)."""
        return min(self._capacity, TRIVIAL_THREADS) if self._trivial() else self._capacity

    def _job_done(self, outcome: Outcome) -> None:
        """Called by the pool when a task returned: queue its outcome, start the next prefetched
        job in the freed slot, and wake the main loop when the buffer needs refilling."""
        nxt = self._job_finished(outcome)
        if nxt is not None:
            self._pool.submit(nxt, self._job_done)

    def _job_finished(self, outcome: Outcome) -> Prepared | None:
        """``_job_done`` for a thread pool: the next prefetched job is returned for the calling
        pool thread to run itself (no queue put that wakes another thread)."""
        nxt: Prepared | None = None
        more: list[Prepared] = []
        buffer = self._buffer
        with self._running_lock:  # ``_slot``'s lock (the plain lock: no Python-level wrapper)
            self._queued += 1
            self._done.put(outcome)
            if outcome.duration is not None:
                self._avg_duration += 0.2 * (outcome.duration - self._avg_duration)
            self._executing -= 1
            self._in_task.pop(id(outcome.claim), None)
            if buffer and not self._stopping.is_set():
                nxt = buffer.popleft()
                self._executing += 1
                self._in_task[id(nxt.claim)] = nxt.claim
                if (
                    buffer
                    and self._executing < self._capacity
                    and (
                        self._executing < TRIVIAL_THREADS
                        or self._avg_duration >= TRIVIAL_JOB  # (``_trivial``, inline)
                        or self.pool_kind != "thread"
                    )
                ):
                    more = self._take_startable()  # jobs no longer trivial: use more threads
            # the main loop is woken when it waits for room to claim (while it claims, it
            # looks again afterwards); a buffer above the highest low water mark needs no claim
            if (
                self._loop_waiting
                and len(buffer) <= self._prefetch_short // 2
                and self._claim_room() > 0
            ):
                self._loop_waiting = False  # woken once: no second notify before it runs
                self._slot.notify_all()
        for p in more:
            self._pool.submit(p, self._done_callback)
        return nxt

    def _claim_room(self) -> int:
        """(``_slot`` held) How many jobs the main loop should claim now; 0: not yet. It claims
        once the prefetch buffer is down to its low water mark, and, while no slot is idle, only
        a batch of at least ``_min_claim`` (so a busy pool is not fed one job per round trip)."""
        prefetch, low_water = self.prefetch, self._low_water
        if self._avg_duration < SHORT_JOB:
            prefetch = self._prefetch_short
            low_water = prefetch // 2
        if len(self._buffer) > low_water:
            return 0
        free = min(
            self._capacity + prefetch - self._executing - len(self._buffer),
            self._max_held - len(self._running),
        )
        want = 1 if self._executing < self.concurrency else self._min_claim
        return free if free >= want else 0
