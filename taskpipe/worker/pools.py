"""Execution pools: threads (default, I/O-bound), an asyncio loop (``async def`` tasks), processes.

Every pool takes ``submit(prepared, done)`` and calls ``done(outcome)`` from one of its threads.
Pool threads are daemons, so a worker that must stop at once is never held up by a stuck task.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.context import JobContext, _set_current
from taskpipe.errors import JobAborted, JobTimeout
from taskpipe.worker.hooks import after_run, before_run
from taskpipe.worker.runner import (
    Outcome,
    Prepared,
    aborted_outcome,
    cancel_on_abort,
    decide_failure,
    run_prepared,
    timeout_of,
)

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["ThreadPool", "AsyncPool", "make_pool"]

log = logging.getLogger("taskpipe.worker")
Done = Callable[[Outcome], None]
#: What a thread pool calls when a task returned; it may hand back the next job for the same thread.
DoneNext = Callable[[Outcome], "Prepared | None"]
#: A wait for work run on a pool thread: returns a job for that thread to run next, or None.
Wait = Callable[[], "tuple[Prepared, DoneNext] | None"]


def _worker_error(prepared: Prepared, exc: Exception) -> Outcome:
    """The outcome of a job that could not be run for a reason outside its task: a failure
    naming the error (stored once), never a cancel that would run it again and again."""
    return Outcome(
        "failure",
        prepared.claim,
        exc_type=type(exc).__name__,
        exc_message=f"worker error before or after the task ran: {exc}",
        traceback=traceback.format_exc(),
        envelope=prepared.envelope,
        task=prepared.task,
    )


class ThreadPool:
    """N daemon threads running jobs; ``async def`` tasks get a private event loop per call."""

    kind = "thread"

    def __init__(self, app: TaskPipe, size: int) -> None:
        self.app = app
        self.size = size
        self._queue: queue.SimpleQueue[tuple[Prepared, DoneNext] | Wait | None] = (
            queue.SimpleQueue()
        )
        #: called before a job that was sent back before (cancel count > 0) starts: the worker
        #: writes the outcomes it holds first, so that a job which kills its process takes no
        #: finished neighbour's outcome with it
        self.before_suspect: Callable[[], None] | None = None
        self._threads = [
            threading.Thread(target=self._loop, name=f"taskpipe-job-{i}", daemon=True)
            for i in range(size)
        ]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        channels: dict[str, Any] = {}  # the channels of the jobs run, by name
        while True:
            item = self._queue.get()
            if item is None:
                return
            if callable(item):  # a wait for work: it may hand back a job for this thread to run
                item = item()
                if item is None:
                    continue
            prepared, done = item
            nxt: Prepared | None = prepared
            while nxt is not None:  # ``done`` may hand back the next job for this thread
                claim = nxt.claim
                if claim.cancel_count and self.before_suspect is not None:
                    self.before_suspect()
                channel = channels.get(claim.channel)
                if channel is None:
                    channel = channels[claim.channel] = self.app.channel(claim.channel)
                try:
                    outcome = run_prepared(self.app, nxt, channel)
                except Exception as exc:  # noqa: BLE001 - an error outside the task: fail this job once
                    outcome = _worker_error(nxt, exc)
                except BaseException as exc:  # noqa: BLE001 - never lose an outcome
                    outcome = Outcome("cancel", nxt.claim, reason=f"worker error: {exc!r}")
                nxt = done(outcome)

    def submit(self, prepared: Prepared, done: DoneNext) -> None:
        """Queue a job to run on the next free thread. ``done(outcome)`` may return another
        prepared job: this thread runs it next (with the same ``done``)."""
        self._queue.put((prepared, done))

    def submit_wait(self, wait: Wait) -> None:
        """Run ``wait()`` on the next free thread, then the job it returns (if any) on that same
        thread: a job that arrives while the worker is idle starts on the thread that received
        its claim, with no hand-over between threads (a thread wake-up costs about 0.1 ms on a
        virtual machine whose other core sleeps)."""
        self._queue.put(wait)

    def shutdown(self) -> None:
        """Let the threads end after their current job."""
        for _ in self._threads:
            self._queue.put(None)


class AsyncPool:
    """One event loop thread running ``async def`` tasks concurrently; plain tasks go to threads."""

    kind = "async"

    def __init__(self, app: TaskPipe, size: int) -> None:
        self.app = app
        self.size = size
        self.loop = asyncio.new_event_loop()
        self._threads = ThreadPool(app, max(1, min(size, 8)))
        self._thread = threading.Thread(target=self._run_loop, name="taskpipe-async", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()  # once stopped (shutdown): no leaked loop or self-pipe sockets

    def submit(self, prepared: Prepared, done: Done) -> None:
        """Run an async task on the loop, a sync one on a thread."""
        if prepared.early is not None or prepared.task is None or not prepared.task.is_async:
            self._threads.submit(prepared, done)
            return
        asyncio.run_coroutine_threadsafe(self._run(prepared, done), self.loop)

    async def _run(self, prepared: Prepared, done: Done) -> None:
        env, task, claim = prepared.envelope, prepared.task, prepared.claim
        assert env is not None and task is not None
        channel = self.app.channel(claim.channel)
        ctx = JobContext(channel, claim, task.name)
        _set_current(ctx)
        started = time.perf_counter()
        try:
            seconds = timeout_of(env, task, self.app)
        except Exception as bad:  # noqa: BLE001 - checked on claim (``prepare``); never a cancel
            done(_worker_error(prepared, bad))
            return
        job = None
        if self.app.middleware:
            job = before_run(self.app, prepared, ctx)
            started = time.perf_counter()  # the run time is the task's, not its hooks'
        error: BaseException | None = None
        main = asyncio.ensure_future(task.fn(*env.args, **env.kwargs))
        watch = asyncio.ensure_future(cancel_on_abort(ctx, main))  # an abort cancels it
        try:
            value = await (asyncio.wait_for(main, seconds) if seconds else main)
            outcome = Outcome("success", claim, value=value, envelope=env, task=task)
        except asyncio.CancelledError:
            if not (main.cancelled() and ctx.aborted):
                raise
            message = f"job {claim.id} was aborted (its coroutine was cancelled)"
            outcome = aborted_outcome(prepared, message)
        except JobAborted as aborted:  # check_abort() inside the coroutine
            outcome = aborted_outcome(prepared, str(aborted))
        except asyncio.TimeoutError:
            error = JobTimeout(f"task {task.name} ran past its time limit of {seconds} s")
            outcome = decide_failure(self.app, prepared, error, "")
        except Exception as exc:  # noqa: BLE001 - the task's error is the job's outcome
            error = exc
            outcome = decide_failure(self.app, prepared, exc, traceback.format_exc())
        finally:
            watch.cancel()
        outcome.duration = time.perf_counter() - started
        if job is not None:
            after_run(self.app, job, outcome, error)
        if ctx.pending:  # log lines / progress a broker outage held back
            await asyncio.to_thread(ctx.flush)
        done(outcome)

    def shutdown(self) -> None:
        """Stop the thread helpers; the loop thread is a daemon."""
        self._threads.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)


def make_pool(kind: str, app: TaskPipe, size: int, app_path: str | None = None) -> Any:
    """Build the pool named ``thread``, ``async`` or ``process``."""
    if kind == "thread":
        return ThreadPool(app, size)
    if kind == "async":
        return AsyncPool(app, size)
    if kind == "process":
        from taskpipe.worker.procpool import ProcessPool

        return ProcessPool(app, size, app_path)
    from taskpipe.errors import ConfigError

    raise ConfigError(f"unknown pool {kind!r}; expected thread, async or process")
