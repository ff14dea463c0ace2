"""The process pool's fork server: children start as forks of a pre-imported interpreter.

A fresh interpreter spends most of its start importing redis-py, msgpack and taskpipe (about
0.4 s of CPU). So a process pool starts one *fork server* (``ForkServer``): a fresh interpreter
(``python -c SERVER_CODE``, started with ``subprocess`` like the children used to be) that
imports what every child needs (``PRELOAD``: never the user's app, never the caller's
``__main__``), then, single-threaded, forks a child on each request. The child returns from
``serve`` to the top level of ``SERVER_CODE`` and runs ``procchild._child_main``, which imports
the app from ``-A module:app`` itself, so user code never runs in the server and a threaded or
stateful app is never forked. When the child is done the interpreter exits as it would after
``python -c`` (``atexit`` handlers, non-daemon threads joined, streams flushed).

The server ignores SIGINT and SIGTERM (a signal to the process group is for the worker, as with
the children) and exits when its control socket to the worker closes (the pool's ``close()``,
or the worker's death); on Linux its children die with it (they set ``PR_SET_PDEATHSIG``, and
the server is their parent), so a SIGKILLed worker still takes its children with it. The server
reaps its children and writes each one's pid, then its exit code (negative: killed by that
signal), to a pipe per child, which ``Forked`` reads (the ``subprocess.Popen`` subset the pool
uses). Available where ``os.fork`` and passing descriptors over a Unix socket are
(``available()``); elsewhere the pool starts each child with ``python -c`` as before.
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading

__all__ = ["SERVER_CODE", "PRELOAD", "ForkServer", "Forked", "available", "serve"]

#: What the server imports before it forks: what any child imports before it loads the app.
PRELOAD = ("taskpipe", "taskpipe.loading", "taskpipe.context", "taskpipe.worker.procchild")

#: The server (``python -c SERVER_CODE FD``): ``serve`` returns only in a forked child.
SERVER_CODE = (
    "import sys; from taskpipe.worker.forkserver import serve; fd = serve(int(sys.argv[1])); "
    "from taskpipe.worker.procchild import _child_main; _child_main(fd)"
)

_INT = struct.Struct("q")


def available() -> bool:
    """Whether children can be forked from a server here (POSIX with descriptor passing)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")


# --- the server -----------------------------------------------------------------------------
def serve(control_fd: int) -> int:
    """Run the fork server on ``control_fd`` (its end of the socket pair to the worker).

    Each request is one byte with two descriptors: the child's end of its socket pair to the
    worker, and the write end of its status pipe. Returns, in the forked child only, the
    descriptor of its socket; in the server it ends with ``SystemExit`` at the control
    socket's end of file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # the preloaded objects: no collection in a child touches (copies) them
    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd is written
    signal.set_wakeup_fd(wake_w)
    status: dict[int, int] = {}  # live child pid -> write end of its status pipe
    while True:
        ready, _, _ = select.select([control_fd, wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    break
            _reap(status)
        if control_fd not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, 1, 2)
        if not message:  # the worker closed the pool, or died
            raise SystemExit(0)
        child_fd, status_w = fds
        pid = os.fork()
        if pid == 0:  # the child: drop the server's state, run the child's code
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            control.close()
            for fd in (wake_r, wake_w, status_w, *status.values()):
                os.close(fd)
            return child_fd
        os.close(child_fd)
        status[pid] = status_w
        _write(status_w, pid)


def _reap(status: dict[int, int]) -> None:
    """Reap the children that exited and report their exit codes."""
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            _write(fd, os.waitstatus_to_exitcode(code))
            os.close(fd)


def _write(fd: int, number: int) -> None:
    try:
        os.write(fd, _INT.pack(number))  # 8 bytes to a pipe: one atomic write
    except OSError:  # the worker no longer reads it
        pass


# --- the worker's side ----------------------------------------------------------------------
class Forked:
    """A child forked by the server: the part of ``subprocess.Popen`` the pool uses (``pid``,
    ``returncode``, ``poll()``, ``wait(timeout)``, ``kill()``) over the child's status pipe."""

    def __init__(self, pid: int, status_r: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._status = status_r  # non-blocking; closed by ``close()``
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        """The exit code once the child has ended, else None."""
        with self._lock:
            if self.returncode is None and self._status >= 0:
                try:
                    data = os.read(self._status, _INT.size)
                except BlockingIOError:
                    return None
                if data:
                    self.returncode = _INT.unpack(data)[0]
                else:  # end of file, no code: the server is gone; so is the child, from now
                    _kill(self.pid)  # (on Linux its PR_SET_PDEATHSIG is on the way too)
                    self.returncode = -signal.SIGKILL
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for the child to end; ``subprocess.TimeoutExpired``
        if it has not."""
        code = self.poll()
        if code is None and self._status >= 0:
            _readable(self._status, timeout)  # (an error if closed meanwhile: poll() answers)
            code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(f"child {self.pid}", timeout or 0.0)
        return code

    def kill(self) -> None:
        """SIGKILL the child, unless it has already ended."""
        if self.poll() is None:
            _kill(self.pid)

    def close(self) -> None:
        """Close the status pipe (the child has been killed and waited for)."""
        with self._lock:
            if self._status >= 0:
                os.close(self._status)
                self._status = -1


class ForkServer:
    """The worker's handle on its fork server, started at the first ``start()`` (again if it
    died) and stopped by ``close()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one request at a time on the control socket
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._closed = False

    def start(self, child_fd: int, timeout: float) -> Forked:
        """Fork a child that runs the pool's child code on ``child_fd`` (its end of its socket
        pair to the worker; the caller closes its copy). ``OSError`` if the server is gone or
        does not answer within ``timeout`` seconds (it may have to start first)."""
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                if self._closed:
                    raise OSError("the fork server is closed")
                socket.send_fds(self._running(), [b"f"], [child_fd, status_w])
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        try:
            data = _read_pid(status_r, timeout)  # the server answers with the pid at once
        except BaseException:
            os.close(status_r)
            raise
        os.set_blocking(status_r, False)
        return Forked(_INT.unpack(data)[0], status_r)

    def _running(self) -> socket.socket:
        """(lock held) The control socket of a running server, started if need be."""
        if self._proc is not None and self._control is not None and self._proc.poll() is None:
            return self._control
        self._stop()
        mine, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", SERVER_CODE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._control = mine
        return mine

    def close(self) -> None:
        """Stop the server (its live children die with it, on Linux): call it once the children
        have been stopped."""
        with self._lock:
            self._closed = True
            self._stop()

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # the server exits at the end of file
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable within ``timeout`` seconds (``poll``: no limit on the
    descriptor's number, unlike ``select``); False on any error (a closed descriptor)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        return bool(select.select([fd], [], [], timeout)[0])
    except (OSError, ValueError):
        return False


def _read_pid(fd: int, timeout: float) -> bytes:
    """The pid the server writes to a new child's status pipe (8 bytes, one atomic write)."""
    if not _readable(fd, timeout):
        raise OSError(f"the fork server did not fork a child within {timeout:.0f} s")
    data = os.read(fd, _INT.size)
    if len(data) != _INT.size:
        raise OSError("the fork server died before it forked the child")
    return data
