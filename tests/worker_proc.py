"""The one worker-subprocess helper of the suite: a real ``python -m taskpipe <command>`` process.

Used by the worker acceptance and crash tests (``test_worker_process.py``, ``test_worker_crash.py``)
and by the fault harness (``tests/fault/harness.py``). Output goes to a log file; the parent
keeps no handle on it (the child writes through its own copy of the descriptor).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """``python -m taskpipe <args>`` (``args[0]`` is the command: worker, scheduler, ...)."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, *, new_session: bool = False
    ) -> None:
        self.args = [sys.executable, "-m", "taskpipe", *args]
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=new_session,
            )
        self.pid = self.proc.pid

    def send(self, sig: int) -> None:
        """Send a signal (SIGKILL, SIGTERM, SIGSTOP, SIGCONT...) if the process still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit code (negative: killed by that signal)."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGCONT (in case it is frozen), SIGTERM, then wait for the exit code."""
        self.send(signal.SIGCONT)
        self.send(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def lines(self, *needles: str) -> list[str]:
        """Output lines containing every one of ``needles``."""
        return [line for line in self.output().splitlines() if all(n in line for n in needles)]
