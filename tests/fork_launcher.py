"""Start ``python -m taskpipe <command>`` processes by forking a pre-imported launcher.

A fresh interpreter spends ~0.4 s of CPU importing redis-py and taskpipe before a worker does
anything; the suite starts well over a hundred worker and scheduler processes. The launcher is
one plain interpreter per test process (started on first use, single-threaded, with taskpipe,
its CLI and their dependencies imported, and no app module) that forks a child per request. The
child is then set up as ``python -m taskpipe <args>`` would be: its own environment, working
directory, ``sys.path`` (the working directory, then ``PYTHONPATH``, then the interpreter's
own), argv, a new session if asked, stdin from /dev/null, stdout and stderr to its log; it runs
``taskpipe.__main__`` and exits through the interpreter's normal exit (atexit handlers, thread
joins, exit code). It is a real process: signals, SIGKILL, exit codes and process groups behave
as for an exec'd one. What it skips is the interpreter's start and the imports, so a test that
checks the command line or the start of a new interpreter (``test_secrets``) starts its
processes with ``fresh_interpreter=True`` (``WorkerProcess``) instead.

The launcher, not the test process, is the children's parent: it reaps them and reports each
exit status on its stdout, which a reader thread here turns into ``returncode``s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import IO

__all__ = ["ForkedProcess", "Launcher", "launcher"]

LAUNCHER_CODE = r"""
import json, os, runpy, select, signal, sys
import taskpipe  # what every command imports anyway (redis-py, msgpack, ...)
for name in ("taskpipe.cli.main", "taskpipe.cli.worker_cmd", "taskpipe.cli.cron_cmd",
             "taskpipe.worker.worker", "taskpipe.scheduler", "croniter", "click"):
    __import__(name)
base_path = [p for p in sys.path if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
base_path = [p for p in base_path if p not in ("", os.getcwd())]
requests = sys.stdin.buffer
out = sys.stdout
running = set()


def report(line):
    out.write(line + "\n")
    out.flush()


def reap():
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            running.clear()
            return
        if pid == 0:
            return
        running.discard(pid)
        report("exit %d %d" % (pid, os.waitstatus_to_exitcode(status)))


def child(req):
    if req["new_session"]:
        os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in (null, log):
        if fd > 2:
            os.close(fd)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [req["cwd"], *extra, *base_path]
    sys.argv[:] = [os.path.join(os.path.dirname(taskpipe.__file__), "__main__.py"), *req["args"]]
    runpy.run_module("taskpipe", run_name="__main__", alter_sys=True)


wake_r, wake_w = os.pipe()  # SIGCHLD wakes the select (no polling)
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.signal(signal.SIGCHLD, lambda *_: None)
signal.set_wakeup_fd(wake_w)
while True:
    ready, _, _ = select.select([requests, wake_r], [], [])
    if wake_r in ready:
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
        reap()
    if requests not in ready:
        continue
    line = requests.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        out = None  # fd 0 (the requests) is replaced by /dev/null in child()
        child(req)
        sys.exit(0)
    running.add(pid)
    report("started %d" % pid)
    reap()
"""


class Launcher:
    """One launcher process and the exit codes it reported (see the module docstring)."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=False,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout: IO[bytes] = self.proc.stdout
        self._lock = threading.Lock()  # one request at a time: its "started" line is its own
        self._cond = threading.Condition()
        self._started: list[int] = []
        self.codes: dict[int, int] = {}
        self.closed = False  # the launcher is gone (its output ended)
        self._reader = threading.Thread(target=self._read, name="fork-launcher", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self._stdout:
            kind, pid_s, *rest = raw.decode().split()
            with self._cond:
                if kind == "started":
                    self._started.append(int(pid_s))
                else:
                    self.codes[int(pid_s)] = int(rest[0])
                self._cond.notify_all()
        with self._cond:  # the launcher is gone: nothing more will be reported
            self.closed = True
            self._cond.notify_all()

    def start(
        self, args: list[str], env: dict[str, str], log: str, cwd: str, new_session: bool
    ) -> int:
        """Fork ``python -m taskpipe <args>``; returns its pid."""
        req = {"args": args, "env": env, "log": log, "cwd": cwd, "new_session": new_session}
        with self._lock:
            with self._cond:
                before = len(self._started)
            self._stdin.write(json.dumps(req).encode() + b"\n")
            self._stdin.flush()
            with self._cond:
                if not self._cond.wait_for(lambda: len(self._started) > before or self.closed, 60):
                    raise RuntimeError("the fork launcher did not answer")
                if len(self._started) == before:
                    raise RuntimeError("the fork launcher is gone")
                return self._started[before]

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """The exit code of ``pid`` within ``timeout`` seconds, or None."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self.codes or self.closed, timeout)
            return self.codes.get(pid)


_launchers: dict[
    int, Launcher
] = {}  # per test process (by pid: a forked test process makes its own)


def launcher() -> Launcher:
    """This test process's launcher (started on first use)."""
    me = os.getpid()
    found = _launchers.get(me)
    if found is None or found.closed or found.proc.poll() is not None:
        found = _launchers[me] = Launcher()
    return found


class ForkedProcess:
    """The part of ``subprocess.Popen`` that ``WorkerProcess`` uses, for a forked child."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: str, *, new_session: bool
    ) -> None:
        self._launcher = launcher()
        self.pid = self._launcher.start(args, env, log, os.getcwd(), new_session)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        if self.returncode is None:
            self.returncode = self._launcher.wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if self.returncode is None:
            self.returncode = self._launcher.wait(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(["taskpipe", str(self.pid)], timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child (if it still runs)."""
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)
