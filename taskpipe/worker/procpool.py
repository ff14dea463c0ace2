"""The process pool: N child processes run jobs, so CPU-bound tasks run in parallel and a task
can be killed at its hard time limit.

Each child is a fresh interpreter (``python -c``, started with ``subprocess``: no fork of a
threaded worker, and no re-import of the caller's ``__main__``) that imports the app from the
worker's ``-A module:app`` and gets claims over a socket pair (pickled messages). It runs a job
with ``run_prepared`` (so the soft timeout, ``current_job()``, progress and logs work as in the
thread pool, through the child's own broker connection) and sends back a slim, picklable
outcome. Leases are renewed and outcomes written by the parent worker, never by the child.

For every child, one parent thread (a *slot*) hands it jobs and watches it:

- past a job's ``hard_timeout`` the slot kills the child (SIGKILL), starts a new one, and the job
  fails with ``JobTimeout`` (retried by the task's policy);
- if the child dies (segfault, ``os._exit``, killed), the job goes back to the queue (a cancel,
  cancel count +1), or is stalled with reason ``worker_lost: ...`` once its cancel count would pass
  ``max_cancels``; a new child takes the slot.

Children ignore SIGINT and SIGTERM (a signal to the whole process group is for the worker, which
drains, then stops them with SIGKILL) and, on Linux, die with the worker
(``PR_SET_PDEATHSIG``); elsewhere a child exits when its pipe to the worker closes. They are
ordinary processes, so a task may start processes of its own.
"""

from __future__ import annotations

import ctypes
import logging
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import TYPE_CHECKING, Any

from taskpipe.durations import parse_duration
from taskpipe.errors import ConfigError, JobTimeout
from taskpipe.worker.runner import (
    Outcome,
    Prepared,
    decide_failure,
    option_of,
    prepare,
    run_prepared,
)

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import Claim

__all__ = ["ProcessPool", "hard_timeout_of"]

log = logging.getLogger("taskpipe.worker")
Done = Callable[[Outcome], None]

_START_TIMEOUT = 60.0  # seconds a new child may take to import the app
_SLIM_FIELDS = ("kind", "value", "exc_type", "exc_message", "traceback", "delay", "reason",
                "duration")


def hard_timeout_of(prepared: Prepared, app: TaskPipe) -> float | None:
    """The hard time limit of a prepared job (call option, else task option), in seconds."""
    value = option_of(prepared.envelope, prepared.task, app, "hard_timeout")
    seconds = parse_duration(value) if value is not None else 0.0
    return seconds or None


# --- the child ------------------------------------------------------------------------------
def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child exits at the pipe's EOF instead
        pass


def _slim(outcome: Outcome) -> dict[str, Any]:
    data = {name: getattr(outcome, name) for name in _SLIM_FIELDS}
    try:
        pickle.dumps(data["value"])
    except Exception as exc:  # noqa: BLE001 - any unpicklable value becomes a failure
        data.update(kind="failure", value=None, exc_type="SerializationError",
                    exc_message=f"the result of the task cannot leave the child process: {exc}")
    return data


def _child_main(fd: int) -> None:
    """Entry point of a pool child: load the app, then run claims from the pipe until EOF."""
    # Ctrl-C (SIGINT to the process group) and a SIGTERM sent to the whole group (systemd's
    # default KillMode) are for the worker: it drains, then stops its children itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    conn = Pipe(fd)
    try:
        path, app_path, level = conn.recv()
        sys.path[:] = path
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from taskpipe.context import JobLogHandler
        from taskpipe.loading import load_app

        app = load_app(app_path)
        logging.getLogger().addHandler(JobLogHandler())
    except BaseException as exc:  # noqa: BLE001 - report why, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            claim = conn.recv()
        except (EOFError, OSError):
            return
        if claim is None:
            return
        prepared = prepare(app, claim)
        outcome = run_prepared(app, prepared, app.channel(claim.channel))
        conn.send(("outcome", _slim(outcome)))


_CHILD_CODE = "import sys; from taskpipe.worker.procpool import _child_main; _child_main(int(sys.argv[1]))"


# --- the parent -----------------------------------------------------------------------------
class _Child:
    """One child process and the parent's end of its socket pair."""

    def __init__(self, app_path: str) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.conn = Pipe(mine.detach())
        self.pid = self.proc.pid
        self.ready = False
        self._send_lock = threading.Lock()
        self.send((list(sys.path), app_path, logging.getLogger().getEffectiveLevel()))

    def send(self, message: Any) -> bool:
        """Send a message to the child; False if its pipe is closed."""
        try:
            with self._send_lock:
                self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def wait_ready(self, timeout: float) -> None:
        """Wait for the child's hello; ``ConfigError`` if it could not load the app."""
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.kill()
            raise ConfigError(f"a process-pool child did not start within {timeout:.0f} s")
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise ConfigError(f"a process-pool child died while starting (exit code "
                              f"{self.exit_code()})") from None
        if kind != "ready":
            self.kill()
            raise ConfigError(f"a process-pool child could not load the app: {detail}")
        self.ready = True

    def alive(self) -> bool:
        """True while the child process runs."""
        return self.proc.poll() is None

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the child to exit."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        """Kill the child at once and reap it."""
        if self.alive():
            try:
                self.proc.kill()
            except OSError:
                pass
        self.join(5)
        self.conn.close()

    def exit_code(self) -> int | None:
        """The child's exit code once it has ended (negative = killed by that signal)."""
        self.join(1)
        return self.proc.returncode


class ProcessPool:
    """N child processes running jobs, with hard timeouts and replacement of dead children.

    Same interface as ``ThreadPool``: ``submit(prepared, done)`` and ``shutdown()``.
    ``app_path`` is the ``module:app`` the children import (the worker's ``-A``).
    """

    kind = "process"

    def __init__(self, app: TaskPipe, size: int, app_path: str | None) -> None:
        if not app_path:
            raise ConfigError("the process pool needs the app as 'module:app' (taskpipe worker "
                              "-A module:app, or Worker(..., app_path='module:app')) so its "
                              "child processes can import it")
        if getattr(app.connection, "scheme", "") == "memory":
            raise ConfigError("the process pool needs a broker its child processes can reach; "
                              f"{app.broker_url!r} lives inside this process (use the thread pool)")
        if size < 1:
            raise ConfigError("the process pool needs at least one process")
        self.app = app
        self.size = size
        self.app_path = app_path
        self._queue: queue.Queue[tuple[Prepared, Done] | None] = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.restarts = 0
        self._children: list[_Child | None] = [None] * size
        children = [_Child(app_path) for _ in range(size)]
        try:
            for child in children:
                child.wait_ready(_START_TIMEOUT)
        except ConfigError:
            for child in children:
                child.kill()
            raise
        self._children = list(children)
        self._threads = [threading.Thread(target=self._slot, args=(i,), daemon=True,
                                          name=f"taskpipe-proc-{i}") for i in range(size)]
        for t in self._threads:
            t.start()

    @property
    def pids(self) -> list[int]:
        """Process ids of the live children."""
        with self._lock:
            return [c.pid for c in self._children if c is not None]

    def submit(self, prepared: Prepared, done: Done) -> None:
        """Queue a job for the next free child (a job that cannot run is answered at once)."""
        if prepared.early is not None:
            done(prepared.early)
            return
        self._queue.put((prepared, done))

    def shutdown(self) -> None:
        """Stop the children: idle ones exit at once, any still running a job are killed."""
        self._closing.set()
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            children = [c for c in self._children if c is not None]
        for child in children:
            child.send(None)
        deadline = time.monotonic() + 1.0
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            child.kill()
        deadline = time.monotonic() + 2.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # slots ----------------------------------------------------------------------------------
    def _slot(self, index: int) -> None:
        while not self._closing.is_set():
            item = self._queue.get()
            if item is None:
                return
            prepared, done = item
            try:
                outcome, healthy = self._run(index, prepared)
            except BaseException as exc:  # noqa: BLE001 - never lose an outcome
                log.exception("process pool slot %d failed", index)
                outcome, healthy = Outcome("cancel", prepared.claim,
                                           reason=f"worker error: {exc!r}"), False
            done(outcome)
            if not healthy and not self._closing.is_set():
                self._replace(index)

    def _child(self, index: int) -> _Child:
        with self._lock:
            child = self._children[index]
        if child is None:
            self._replace(index)
            with self._lock:
                child = self._children[index]
            assert child is not None
        return child

    def _replace(self, index: int) -> None:
        """Kill the slot's child (if any) and start a new one, retrying until it comes up."""
        with self._lock:
            old, self._children[index] = self._children[index], None
        if old is not None:
            old.kill()
        delay = 0.5
        while not self._closing.is_set():
            try:
                child = _Child(self.app_path)
                child.wait_ready(_START_TIMEOUT)
            except ConfigError as exc:
                log.error("process pool: %s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            with self._lock:
                if self._closing.is_set():
                    child.kill()
                    return
                self._children[index] = child
                self.restarts += 1
            return

    def _run(self, index: int, prepared: Prepared) -> tuple[Outcome, bool]:
        """Run one job on the slot's child; returns the outcome and whether the child is healthy."""
        child = self._child(index)
        claim = prepared.claim
        limit = hard_timeout_of(prepared, self.app)
        deadline = time.monotonic() + limit if limit else None
        if not child.send(claim):
            return self._lost(prepared, child), False
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                child.kill()
                log.warning("job %s/%s ran past its hard time limit of %s s: child %s killed",
                            claim.channel, claim.id, limit, child.pid)
                exc = JobTimeout(f"task {prepared.envelope.task if prepared.envelope else '?'} "
                                 f"ran past its hard time limit of {limit} s (process killed)")
                outcome = decide_failure(self.app, prepared, exc, "")
                outcome.duration = limit
                return outcome, False
            try:
                readable = child.conn.poll(0.5 if remaining is None else min(remaining, 0.5))
                message = child.conn.recv() if readable else None
            except (EOFError, OSError):  # the pipe closed: the child is gone
                return self._lost(prepared, child), False
            if message is not None and message[0] == "outcome":
                return self._rebuild(prepared, message[1]), True
            if not child.alive():
                return self._lost(prepared, child), False

    def _rebuild(self, prepared: Prepared, data: dict[str, Any]) -> Outcome:
        return Outcome(data["kind"], prepared.claim, value=data["value"],
                       exc_type=data["exc_type"], exc_message=data["exc_message"],
                       traceback=data["traceback"], delay=data["delay"], reason=data["reason"],
                       envelope=prepared.envelope, task=prepared.task, duration=data["duration"])

    def _lost(self, prepared: Prepared, child: _Child) -> Outcome:
        """The child died while running the job: send it back, or stall it past max_cancels."""
        claim: Claim = prepared.claim
        code = child.exit_code()
        max_cancels = option_of(prepared.envelope, prepared.task, self.app, "max_cancels")
        count = claim.cancel_count + 1
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("child %s died (%s) running job %s/%s", child.pid, how, claim.channel, claim.id)
        if max_cancels and count > max_cancels:
            return Outcome("stall", claim, reason=f"worker_lost: the child process died ({how}) "
                           f"{count} times", envelope=prepared.envelope, task=prepared.task)
        return Outcome("cancel", claim, reason=f"worker_lost: the child process died ({how})",
                       envelope=prepared.envelope, task=prepared.task)

