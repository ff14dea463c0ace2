"""The process pool's handle on one child (``ChildHandle``): the child process, started by the
pool's fork server or as a fresh interpreter, and the parent's end of its socket pair.

See ``procpool`` for the protocol and the rules; ``procchild`` holds what runs in the child.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection as Pipe
from typing import TYPE_CHECKING, Any

from taskpipe.errors import ConfigError
from taskpipe.worker.forkserver import Forked, ForkServer
from taskpipe.worker.procchild import CHILD_CODE, claim_fields

if TYPE_CHECKING:
    from taskpipe.thoonk.job import Claim

__all__ = ["ChildHandle", "START_TIMEOUT"]

START_TIMEOUT = 60.0  # seconds a new child may take to import the app


class ChildHandle:
    """One child process and the parent's end of its socket pair."""

    def __init__(self, app_path: str, server: ForkServer | None) -> None:
        mine, theirs = socket.socketpair()
        self.proc: subprocess.Popen[bytes] | Forked
        try:
            if server is not None:  # a fork of the pre-imported server
                self.proc = server.start(theirs.fileno(), START_TIMEOUT)
            else:  # a fresh interpreter
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", CHILD_CODE, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
        except OSError as exc:
            mine.close()
            raise ConfigError(f"a process-pool child could not be started: {exc}") from None
        finally:
            theirs.close()
        self.conn = Pipe(mine.detach())
        # one poll object for the pipe's life: ``Connection.poll`` builds a selector per call
        self._poller: Any = None
        if hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(self.conn.fileno(), select.POLLIN)
        self.pid = self.proc.pid
        self.ready = False
        self.stopped = False  # sent "stop": hand it nothing more
        self._send_lock = threading.Lock()  # serialises writes to the pipe and its close
        self.send((list(sys.path), app_path, logging.getLogger().getEffectiveLevel()))

    def readable(self, timeout: float) -> bool:
        """Whether a message (or the end of the pipe) can be read within ``timeout`` seconds;
        raises ``OSError`` once this end is closed."""
        if self._poller is None or self.conn.closed:
            return self.conn.poll(timeout)
        return bool(self._poller.poll(max(0, math.ceil(timeout * 1000))))

    def send(self, message: Any) -> bool:
        """Send a message to the child; False if its pipe is closed."""
        try:
            with self._send_lock:
                self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def hand(self, claims: list[Claim]) -> str:
        """Send claims to run: ``sent``, ``stopped`` (asked to stop: not sent) or ``dead``."""
        try:
            with self._send_lock:
                if self.stopped:
                    return "stopped"
                self.conn.send([claim_fields(c) for c in claims])
        except (OSError, ValueError):
            return "dead"
        return "sent"

    def stop(self) -> None:
        """Ask the child to give back the claims it has not started; it is handed no more."""
        try:
            with self._send_lock:
                if not self.stopped:
                    self.stopped = True
                    self.conn.send("stop")
        except (OSError, ValueError):
            pass

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
            raise ConfigError(
                f"a process-pool child died while starting (exit code {self.exit_code()})"
            ) from None
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

    def terminate(self) -> None:
        """Kill the child process at once, leaving its pipe open. Safe from any thread: the
        slot thread reading the pipe sees end-of-file and closes it itself (``kill``)."""
        if self.alive():
            try:
                self.proc.kill()
            except OSError:
                pass

    def kill(self) -> None:
        """Kill the child at once, reap it and close the parent's end of its pipe. Only the
        slot thread that reads the pipe (or anyone once that thread has ended) may call this:
        closing a descriptor another thread still polls would let that thread read from
        whatever socket reuses the number next (a Redis connection, say)."""
        self.terminate()
        self.join(5)
        with self._send_lock:  # one close, never in the middle of another thread's write
            self.conn.close()
        if isinstance(self.proc, Forked):
            self.proc.close()

    def exit_code(self) -> int | None:
        """The child's exit code once it has ended (negative = killed by that signal)."""
        self.join(1)
        return self.proc.returncode
