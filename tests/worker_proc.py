"""The one worker-subprocess helper of the suite: a real ``python -m taskpipe <command>`` process
(forked from a pre-imported launcher, ``fork_launcher``, unless ``fresh_interpreter=True``).

Used by the worker acceptance and crash tests (``test_worker_process.py``, ``test_worker_crash.py``)
and by the fault harness (``tests/fault/harness.py``). Output goes to a log file; the parent
keeps no handle on it (the child writes through its own copy of the descriptor).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from fork_launcher import ForkedProcess

if TYPE_CHECKING:
    import pytest

    from taskpipe import TaskPipe

__all__ = ["WorkerProcess", "AppProcesses"]


class WorkerProcess:
    """``python -m taskpipe <args>`` (``args[0]`` is the command: worker, scheduler, ...)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        new_session: bool = False,
        fresh_interpreter: bool = False,
    ) -> None:
        """Forked from the pre-imported launcher (``fork_launcher``: the same process, without
        the ~0.4 s of interpreter start and imports), or with ``fresh_interpreter=True`` (or
        ``TP_TEST_EXEC=1`` in the environment) a new interpreter, ``python -m taskpipe``."""
        self.args = [sys.executable, "-m", "taskpipe", *args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | ForkedProcess
        if not fresh_interpreter and not os.environ.get("TP_TEST_EXEC"):
            self.proc = ForkedProcess(list(args), env, str(log_path), new_session=new_session)
        else:
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
        """SIGCONT (in case it is frozen), SIGTERM, then wait for the exit code.

        A ``worker`` is first given up to ``timeout`` to finish starting: a SIGTERM that lands
        before it installed its handlers kills it (-15) instead of stopping it gracefully, which
        a loaded machine makes likely for a worker that got no job in the test."""
        self.send(signal.SIGCONT)
        if self._logs_its_start():
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline and not self.started():
                time.sleep(0.02)
        self.send(signal.SIGTERM)
        return self.wait(timeout)

    def started(self) -> bool:
        """A worker logged that it is consuming (its signal handlers are installed by then)."""
        return " pool, concurrency " in self.output()  # "worker <name> consuming <channels> (...)"

    def _logs_its_start(self) -> bool:
        """A ``worker`` command at the default log level (it logs "... consuming ...")."""
        if self.args[3] != "worker":
            return False
        quiet = ("warning", "error", "critical")
        return not any(
            flag in ("-l", "--loglevel") and level.lower() in quiet
            for flag, level in zip(self.args, self.args[1:])
        )

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


class AppProcesses:
    """An app module written from ``source`` into ``tmp``, loaded here (to publish and read) and
    run by real ``taskpipe worker`` processes. The module reads its broker URL and key prefix
    from ``TP_TEST_BROKER`` / ``TP_TEST_PREFIX``; ``r`` is a plain client of that broker."""

    def __init__(
        self,
        source: str,
        tmp: Path,
        url: str,
        prefix: str,
        monkeypatch: pytest.MonkeyPatch,
        *,
        tag: str = "tpapp",
        worker_args: tuple[str, ...] = (),
    ) -> None:
        from taskpipe.loading import load_app

        self.tmp, self.url, self.prefix = tmp, url, prefix
        module = f"{tag}_{uuid.uuid4().hex[:10]}"
        (tmp / f"{module}.py").write_text(source)
        self.module = module
        self.app_path = f"{module}:app"
        self.worker_args = worker_args
        monkeypatch.setenv("TP_TEST_BROKER", url)
        monkeypatch.setenv("TP_TEST_PREFIX", prefix)
        monkeypatch.syspath_prepend(str(tmp))
        self.app: TaskPipe = load_app(self.app_path)
        self.r = redis.Redis.from_url(url)
        self.workers: list[WorkerProcess] = []

    def worker(self, *args: str) -> WorkerProcess:
        """Start ``taskpipe worker -A <module>:app <worker_args> <args>`` (logged to ``tmp``)."""
        drop = ("QUEUE", "TASKPIPE_QUEUES", "TASKPIPE_APP")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(TP_TEST_BROKER=self.url, TP_TEST_PREFIX=self.prefix)
        path = os.pathsep.join([str(self.tmp), env.get("PYTHONPATH", "")])
        env["PYTHONPATH"] = path.rstrip(os.pathsep)
        w = WorkerProcess(
            ["worker", "-A", self.app_path, *self.worker_args, *args],
            env,
            self.tmp / f"worker{len(self.workers)}.log",
        )
        self.workers.append(w)
        return w

    def get(self, what: str, job_id: str) -> int | None:
        """The int the task module stored at ``<prefix><what>:<job id>``, or None."""
        value = self.r.get(f"{self.prefix}{what}:{job_id}")
        return None if value is None else int(value)

    def close(self) -> None:
        """Kill every worker started here, close the app and the client."""
        for w in self.workers:
            w.kill()
        self.app.close()
        self.r.close()
