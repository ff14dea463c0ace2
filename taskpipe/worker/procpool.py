"""The process pool: N child processes run jobs, so CPU-bound tasks run in parallel and a task
can be killed at its hard time limit.

Each child is a fork of the pool's *fork server* (``forkserver``: a fresh, single-threaded
interpreter that has imported taskpipe and redis-py, never the app or the caller's
``__main__``; so no fork of the threaded worker, and a child costs ~0.05 s of CPU instead of the
~0.4 s of a fresh interpreter), or, where it cannot fork, a fresh interpreter (``python -c``,
started with ``subprocess``). Its code is in ``procchild``: it imports the app from the worker's
``-A module:app`` and gets claims over a socket pair (pickled messages). It runs a job
with ``run_prepared`` (so the soft timeout, ``current_job()``, progress and logs work as in the
thread pool, through the child's own broker connection) and sends back a slim, picklable
outcome. Leases are renewed and outcomes written by the parent worker, never by the child.

**Batched hand-off.** The pool takes more jobs than it has children (``capacity``: up to
``DEPTH`` per child), so a child always has its next jobs at hand: its parent thread (a *slot*)
sends it many claims in one message, and the child sends back the outcomes of short jobs
together (at least every 2 ms, and whenever it runs out of work; a flusher thread in the child
sends those that would wait behind a job running longer than 2 ms), each message with the
``time.monotonic()`` at which it started the job it now runs (the clock is system-wide), so
that a hard time limit is counted for the right job from its real start. A job
that takes longer than ``SLOW`` (measured per child) turns the hand-off back to one job at a
time for that child, so long jobs never queue behind each other while another child is idle.

For every child, the slot watches it:

- past a job's ``hard_timeout`` (counted from when the child started it) the slot kills the
  child (SIGKILL), starts a new one, and the job fails with ``JobTimeout`` (retried by the task's
  policy); the jobs the child had not started go back to the pool, unchanged;
- if the child dies (segfault, ``os._exit``, killed), the job it was running goes back to the
  queue (a cancel, cancel count +1), or is stalled with reason ``worker_lost: ...`` once its
  cancel count would pass ``max_cancels``; a new child takes the slot and the jobs not started.

**Shutdown.** ``unstarted(grace)`` (the worker's drain) stops hand-offs, returns the jobs no
child has received, and asks every child to give back the jobs it holds but has not started
(they are answered with a ``release`` outcome: back to the head of the queue, cancel count
unchanged). A child still running a job when ``grace`` is nearly over is killed (its job is sent
back, cancel count +1) *before* the worker sends leftovers back, and the worker calls
``kill_children()`` before it sends back whatever is still running (a second signal, or a
child that did not get there in time), so a job never starts elsewhere while a child may still
run it.

Children (and the fork server) ignore SIGINT and SIGTERM (a signal to the whole process group
is for the worker, which drains, then stops them with SIGKILL) and, on Linux, die with the
worker (``PR_SET_PDEATHSIG`` on their parent: the fork server, which exits when its socket to
the worker closes; the pool closes it last, in ``shutdown()``); elsewhere a child exits when its
pipe to the worker closes. A fork server that died takes its children with it (they are lost
as any dead child: cancel or stall) and the next child start starts a new one. Children are
ordinary processes, so a task may start processes of its own.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskpipe.durations import parse_duration
from taskpipe.errors import ConfigError, JobTimeout
from taskpipe.task import option_of
from taskpipe.worker.forkserver import ForkServer, available
from taskpipe.worker.procchild import DEPTH
from taskpipe.worker.prochandle import START_TIMEOUT
from taskpipe.worker.prochandle import ChildHandle as _Child
from taskpipe.worker.runner import Outcome, Prepared, decide_failure

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import Claim

__all__ = ["ProcessPool", "hard_timeout_of", "DEPTH", "SLOW"]

log = logging.getLogger("taskpipe.worker")
Done = Callable[[Outcome], None]

#: A child whose jobs take longer than this (seconds, moving average) gets one job at a time.
SLOW = 0.005
_KILL_MARGIN = 0.25  # seconds before the grace ends at which still-running children are killed
#: seconds an aborted job's task has to stop by itself before its child is terminated
ABORT_GRACE = 1.0


def hard_timeout_of(prepared: Prepared, app: TaskPipe) -> float | None:
    """The hard time limit of a prepared job (call option, else task option), in seconds."""
    value = option_of(prepared.envelope, prepared.task, app, "hard_timeout")
    seconds = parse_duration(value) if value is not None else 0.0
    return seconds or None


@dataclass
class _Held:
    """A job handed to a child: its outcome callback, hard limit, and when it was sent."""

    prepared: Prepared
    done: Done
    limit: float | None
    sent: float = 0.0


class ProcessPool:
    """N child processes running jobs, with hard timeouts and replacement of dead children.

    Same interface as ``ThreadPool`` (``submit(prepared, done)``, ``shutdown()``), plus
    ``capacity`` (how many jobs the worker may hand it at once: ``depth`` per child) and
    ``unstarted(grace)`` for the worker's drain. ``app_path`` is the ``module:app`` the children
    import (the worker's ``-A``).
    """

    kind = "process"

    def __init__(self, app: TaskPipe, size: int, app_path: str | None, depth: int = DEPTH) -> None:
        if not app_path:
            raise ConfigError(
                "the process pool needs the app as 'module:app' (taskpipe worker "
                "-A module:app, or Worker(..., app_path='module:app')) so its "
                "child processes can import it"
            )
        if getattr(app.connection, "scheme", "") == "memory":
            raise ConfigError(
                "the process pool needs a broker its child processes can reach; "
                f"{app.broker_url!r} lives inside this process (use the thread pool)"
            )
        if size < 1:
            raise ConfigError("the process pool needs at least one process")
        self.app = app
        self.size = size
        self.app_path = app_path
        self.depth = max(1, depth)
        #: jobs the worker may hand the pool at once (``depth`` per child)
        self.capacity = size * self.depth
        self._queue: collections.deque[_Held] = collections.deque()  # not yet sent to a child
        self._lock = threading.RLock()  # ``_cond``'s lock, taken directly on the hot path
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._draining = False
        self._kill_at: float | None = None  # drain: kill children still running a job then
        self._abort_at: dict[tuple[str, str], float] = {}  # aborted jobs: kill their child then
        self.restarts = 0
        self._children: list[_Child | None] = [None] * size
        #: forks the children (None: each is a fresh interpreter)
        self._server = ForkServer() if available() else None
        children: list[_Child] = []
        try:
            for _ in range(size):
                children.append(_Child(app_path, self._server))
            for child in children:
                child.wait_ready(START_TIMEOUT)
        except BaseException:
            for child in children:
                child.kill()
            if self._server is not None:
                self._server.close()
            raise
        self._children = list(children)
        self._threads = [
            threading.Thread(target=self._slot, args=(i,), daemon=True, name=f"taskpipe-proc-{i}")
            for i in range(size)
        ]
        for t in self._threads:
            t.start()

    def abort(self, channel: str, job_id: str, grace: float = ABORT_GRACE) -> None:
        """The job was aborted: if its task has not stopped by itself ``grace`` seconds from now
        (``current_job().check_abort()``), its child is terminated (and replaced)."""
        with self._cond:
            self._abort_at.setdefault((channel, job_id), time.monotonic() + grace)

    @property
    def server_pid(self) -> int | None:
        """Process id of the fork server the children are forked from (None: none runs)."""
        return self._server.pid if self._server is not None else None

    @property
    def pids(self) -> list[int]:
        """Process ids of the live children."""
        with self._cond:
            return [c.pid for c in self._children if c is not None]

    def submit(self, prepared: Prepared, done: Done) -> None:
        """Queue a job for the next free child (a job that cannot run is answered at once)."""
        if prepared.early is not None:
            done(prepared.early)
            return
        held = _Held(prepared, done, hard_timeout_of(prepared, self.app))
        with self._lock:
            if not self._draining:
                self._queue.append(held)
                self._cond.notify()
                return
        done(_release(held))

    def unstarted(self, grace: float) -> list[Prepared]:
        """The worker drains: hand no more jobs to children, return the jobs none received,
        and ask every child to give back those it has not started (answered with ``release``
        outcomes). Children still running a job ``grace`` seconds from now (less a margin) are
        killed, their jobs sent back (cancel), before the worker sends its leftovers back."""
        with self._cond:
            self._draining = True
            self._kill_at = time.monotonic() + max(0.0, grace - _KILL_MARGIN)
            items = list(self._queue)
            self._queue.clear()
            children = [c for c in self._children if c is not None]
            self._cond.notify_all()
        for child in children:
            child.stop()
        return [h.prepared for h in items]

    def kill_children(self) -> None:
        """Shutdown, once the grace is over (or on a second signal): kill every child now, so
        that no job the worker is about to send back can still be running in one of them."""
        with self._cond:
            self._draining = True
            children = [c for c in self._children if c is not None]
        for child in children:
            child.terminate()  # the slot threads see end-of-file and close the pipes

    def shutdown(self) -> None:
        """Stop the children: idle ones exit at once, any still running a job are killed."""
        with self._cond:
            self._closing = True
            children = [c for c in self._children if c is not None]
            self._cond.notify_all()
        for child in children:
            child.send(None)
        deadline = time.monotonic() + 1.0
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            child.terminate()
        deadline = time.monotonic() + 2.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in self._threads):
            for child in children:  # no thread reads the pipes any more: close them
                child.kill()
        if self._server is not None:
            self._server.close()  # once the children are stopped: they die with it

    # slots ----------------------------------------------------------------------------------
    def _slot(self, index: int) -> None:
        try:
            self._serve(index)
        except BaseException:  # logged; the worker's drain sends leftovers back
            log.exception("process pool slot %d failed", index)

    def _serve(self, index: int) -> None:
        """Run slot ``index``: hand its child batches of queued jobs (up to ``depth`` in flight,
        one at a time once its jobs are slow), read their outcomes back in order, and act when
        the child dies, a hard time limit or the shutdown grace runs out, or a job is aborted."""
        inflight: collections.deque[_Held] = collections.deque()  # sent to the child, in order
        started: float | None = None  # when the child started inflight[0] (monotonic)
        slow = 0.0  # moving average of this child's job durations
        while True:
            child = self._child(index)
            if child is None:  # closing
                self._give_back(inflight, closing=True)
                return
            batch = self._take_batch(inflight, (self.depth if slow < SLOW else 1) - len(inflight))
            if batch is None:  # closing, nothing in flight
                return
            if batch:
                started = self._hand(index, child, batch, inflight, started)
            if not inflight:
                continue
            head = inflight[0]
            now = time.monotonic()
            wait = 0.5
            if head.limit is not None and started is not None:
                wait = min(wait, started + head.limit - now)
            if self._kill_at is not None:
                wait = min(wait, self._kill_at - now)
            abort_at = self._abort_at.get((head.prepared.claim.channel, head.prepared.claim.id))
            if abort_at is not None:
                wait = min(wait, abort_at - now)
            try:
                message = child.conn.recv() if child.readable(max(0.0, wait)) else None
            except (EOFError, OSError):  # the pipe closed: the child is gone
                self._on_lost(index, child, inflight)
                started = None
                continue
            if message is None:
                started = self._on_silence(index, child, inflight, started, abort_at)
            elif message[0] == "done":
                slow = self._on_done(message[1], inflight, slow)
                started = (
                    message[2]
                    if message[2] is not None
                    else (time.monotonic() if inflight else None)
                )
            elif message[0] == "returned":
                back = [inflight.pop() for _ in range(min(message[1], len(inflight)))]
                self._give_back(collections.deque(reversed(back)), closing=True)

    def _take_batch(self, inflight: collections.deque[_Held], room: int) -> list[_Held] | None:
        """Wait until there is work (or jobs in flight); take up to ``room`` queued jobs, this
        child's fair share, unless the worker drains. None: the pool closes, nothing in flight."""
        batch: list[_Held] = []
        with self._cond:
            while not inflight and not self._queue and not self._closing:
                self._cond.wait(0.5)
            if self._closing and not inflight:
                return None
            if room > 0 and self._queue and not self._draining:
                share = -(-len(self._queue) // self.size)  # a fair share for each child
                for _ in range(min(room, share)):
                    batch.append(self._queue.popleft())
        return batch

    def _hand(
        self,
        index: int,
        child: _Child,
        batch: list[_Held],
        inflight: collections.deque[_Held],
        started: float | None,
    ) -> float | None:
        """Send ``batch`` to the child, behind ``inflight``; returns when the child started
        ``inflight[0]`` (``started``). Jobs a stopped or dead child never started go back (a
        child that died running ``inflight[0]`` loses that job: ``_on_lost``)."""
        now = time.monotonic()
        for held in batch:
            held.sent = now
        sent = child.hand([h.prepared.claim for h in batch])
        if sent == "stopped":
            self._give_back(collections.deque(batch), closing=True)
            return started
        if sent == "dead" and not inflight:  # died idle: none of these started
            self._give_back(collections.deque(batch))
            self._replace(index)
            return started
        if not inflight:
            started = now
        inflight.extend(batch)
        if sent == "dead":  # died running inflight[0]
            self._on_lost(index, child, inflight)
            return None
        return started

    def _on_silence(
        self,
        index: int,
        child: _Child,
        inflight: collections.deque[_Held],
        started: float | None,
        abort_at: float | None,
    ) -> float | None:
        """No message from the child within the wait: act if it died, ran ``inflight[0]`` past
        its hard time limit, outlived the shutdown grace or the job's abort grace. Returns
        ``started`` (None once acted: the child's jobs are settled)."""
        head = inflight[0]
        now = time.monotonic()
        if not child.alive():
            self._on_lost(index, child, inflight)
        elif head.limit is not None and started is not None and now >= started + head.limit:
            self._on_hard_timeout(index, child, inflight)
        elif self._kill_at is not None and now >= self._kill_at:
            self._on_grace_over(index, child, inflight)
        elif abort_at is not None and now >= abort_at:
            self._on_aborted(index, child, inflight)
        else:
            return started
        return None

    def _on_done(
        self, results: list[tuple[Any, ...]], inflight: collections.deque[_Held], slow: float
    ) -> float:
        """The child finished the first ``len(results)`` in-flight jobs: hand on their outcomes;
        returns the moving average of the child's job durations (``slow``), updated."""
        for data in results:
            held = inflight.popleft()
            self._abort_at.pop((held.prepared.claim.channel, held.prepared.claim.id), None)
            outcome = self._rebuild(held.prepared, data)
            if outcome.duration is not None:
                slow = 0.7 * slow + 0.3 * outcome.duration
            held.done(outcome)
        return slow

    def _child(self, index: int) -> _Child | None:
        with self._cond:
            child = self._children[index]
            if self._closing:
                return child if child is not None and child.alive() else None
        if child is None:
            self._replace(index)
            with self._cond:
                child = self._children[index]
        return child

    def _replace(self, index: int) -> None:
        """Kill the slot's child (if any) and start a new one, retrying until it comes up."""
        with self._cond:
            old, self._children[index] = self._children[index], None
        if old is not None:
            old.kill()
        delay = 0.5
        while not self._closing and not self._draining:
            try:
                child = _Child(self.app_path, self._server)
                child.wait_ready(START_TIMEOUT)
            except ConfigError as exc:
                log.error("process pool: %s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            with self._cond:
                if self._closing or self._draining:
                    child.kill()
                    return
                self._children[index] = child
                self.restarts += 1
            return

    def _give_back(self, held: collections.deque[_Held], closing: bool = False) -> None:
        """Jobs a child never started: to the front of the pool's queue for another child, or,
        once the worker drains, back to their channels (``release``: cancel count unchanged)."""
        if not held:
            return
        with self._cond:
            if not (closing or self._draining or self._closing):
                self._queue.extendleft(reversed(held))
                self._cond.notify_all()
                held = collections.deque()
        while held:
            item = held.popleft()
            item.done(_release(item))

    def _on_lost(self, index: int, child: _Child, inflight: collections.deque[_Held]) -> None:
        """The child died: its running job is lost (cancel or stall), the others go back."""
        head = inflight.popleft()
        outcome = self._lost(head.prepared, child)
        rest = collections.deque(inflight)
        inflight.clear()
        head.done(outcome)
        self._give_back(rest)
        self._replace(index)

    def _on_hard_timeout(
        self, index: int, child: _Child, inflight: collections.deque[_Held]
    ) -> None:
        head = inflight.popleft()
        claim = head.prepared.claim
        child.kill()
        log.warning(
            "job %s/%s ran past its hard time limit of %s s: child %s killed",
            claim.channel,
            claim.id,
            head.limit,
            child.pid,
        )
        env = head.prepared.envelope
        exc = JobTimeout(
            f"task {env.task if env else '?'} ran past its hard time limit of "
            f"{head.limit} s (process killed)"
        )
        outcome = decide_failure(self.app, head.prepared, exc, "")
        outcome.duration = head.limit
        rest = collections.deque(inflight)
        inflight.clear()
        head.done(outcome)
        self._give_back(rest)
        self._replace(index)

    def _on_grace_over(self, index: int, child: _Child, inflight: collections.deque[_Held]) -> None:
        """Shutdown: the grace is nearly over and the child still runs a job. Kill it first, so
        the job (sent back to the queue: cancel) cannot start elsewhere while it still runs."""
        head = inflight.popleft()
        claim = head.prepared.claim
        child.kill()
        with self._cond:
            if self._children[index] is child:
                self._children[index] = None
        log.warning(
            "job %s/%s still running at shutdown: child %s killed, job sent back to the queue",
            claim.channel,
            claim.id,
            child.pid,
        )
        rest = collections.deque(inflight)
        inflight.clear()
        head.done(
            Outcome(
                "cancel",
                claim,
                reason="still running at shutdown",
                envelope=head.prepared.envelope,
                task=head.prepared.task,
            )
        )
        self._give_back(rest, closing=True)

    def _on_aborted(self, index: int, child: _Child, inflight: collections.deque[_Held]) -> None:
        """An aborted job's task did not stop within the grace: terminate its child."""
        head = inflight.popleft()
        claim = head.prepared.claim
        with self._cond:
            self._abort_at.pop((claim.channel, claim.id), None)
        child.kill()
        log.warning(
            "job %s/%s was aborted and did not stop within %.1f s: child %s terminated",
            claim.channel,
            claim.id,
            ABORT_GRACE,
            child.pid,
        )
        rest = collections.deque(inflight)
        inflight.clear()
        head.done(
            Outcome(
                "aborted",
                claim,
                exc_type="JobAborted",
                exc_message="child terminated",
                envelope=head.prepared.envelope,
                task=head.prepared.task,
            )
        )
        self._give_back(rest)
        self._replace(index)

    def _rebuild(self, prepared: Prepared, data: tuple[Any, ...]) -> Outcome:
        kind, value, exc_type, exc_message, tb, delay, reason, duration = data
        return Outcome(
            kind,
            prepared.claim,
            value=value,
            exc_type=exc_type,
            exc_message=exc_message,
            traceback=tb,
            delay=delay,
            reason=reason,
            envelope=prepared.envelope,
            task=prepared.task,
            duration=duration,
        )

    def _lost(self, prepared: Prepared, child: _Child) -> Outcome:
        """The child died while running the job: send it back, or stall it past max_cancels."""
        claim: Claim = prepared.claim
        code = child.exit_code()
        max_cancels = option_of(prepared.envelope, prepared.task, self.app, "max_cancels")
        count = claim.cancel_count + 1
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("child %s died (%s) running job %s/%s", child.pid, how, claim.channel, claim.id)
        if max_cancels and count > max_cancels:
            return Outcome(
                "stall",
                claim,
                reason=f"worker_lost: the child process died ({how}) {count} times",
                envelope=prepared.envelope,
                task=prepared.task,
            )
        return Outcome(
            "cancel",
            claim,
            reason=f"worker_lost: the child process died ({how})",
            envelope=prepared.envelope,
            task=prepared.task,
        )


def _release(held: _Held) -> Outcome:
    """The outcome of a job that never started: back to the head of its queue, count unchanged."""
    p = held.prepared
    return Outcome("release", p.claim, reason="not started", envelope=p.envelope, task=p.task)
