"""Automatic job log lines (Kinetik's): created, started, completed, failed, timed out, retried.

``LifecycleLog`` is a middleware (``taskpipe.middleware``) that writes one timestamped line to
the job's own log (``taskpipe jobs logs ID``, ``AsyncResult.logs``) at each step of its life.
Tasks made with ``app.define(...)`` get it automatically; for others, ``app.use(LifecycleLog())``
(every task) or ``LifecycleLog(tasks=["send email"])``. It costs one write per line: the
"created" line is one more round trip per publish, which is why it is not on for every app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskpipe.middleware import Message, Middleware, RunningJob

if TYPE_CHECKING:
    from taskpipe.results import AsyncResult

__all__ = ["LifecycleLog"]

log = logging.getLogger("taskpipe.lifecycle")


def _stamp() -> str:
    """The timestamp of a job log line (as ``JobContext.log`` writes it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class LifecycleLog(Middleware):
    """Writes a timestamped line to a job's log on creation, start, completion, failure,
    timeout and retry. ``tasks``: only these task names (default: every task)."""

    def __init__(self, tasks: Iterable[str] | None = None) -> None:
        self.tasks: set[str] | None = None if tasks is None else set(tasks)
        self._lock = threading.Lock()

    def add_task(self, name: str) -> None:
        """Log the lines of one more task."""
        with self._lock:
            if self.tasks is not None:
                self.tasks.add(name)

    def wants(self, name: str) -> bool:
        """True if jobs of task ``name`` get the lines."""
        return self.tasks is None or name in self.tasks

    def _line(self, job: RunningJob, text: str) -> None:
        if job.context is not None and self.wants(job.name):
            job.context.log(f"taskpipe: {text}")

    def after_publish(self, message: Message, result: AsyncResult[Any]) -> None:
        """``created``: written by the publisher right after the job was put."""
        if not self.wants(message.task):
            return
        line = f"{_stamp()} taskpipe: created (task {message.task}, channel {result.channel})"
        message.app.channel(result.channel).log(result.id, [line])

    def before_run(self, job: RunningJob) -> None:
        """``started``, with the attempt number."""
        self._line(job, f"started (attempt {job.attempt})")

    def after_run(self, job: RunningJob, outcome: Any) -> None:
        """``completed`` (with the run time) or ``will retry``."""
        if outcome.kind == "success":
            self._line(job, f"completed in {outcome.duration or 0.0:.3f}s")
        elif outcome.kind == "retry":
            self._line(job, f"will retry in {outcome.delay:.2f}s")

    def on_failure(self, job: RunningJob, exc: BaseException) -> None:
        """``failed`` (for good), with the error."""
        self._line(job, f"failed: {type(exc).__name__}: {exc}"[:2000])

    def on_retry(self, job: RunningJob, exc: BaseException, delay: float) -> None:
        """A run that raised and will run again: the error."""
        self._line(job, f"attempt {job.attempt} raised {type(exc).__name__}: {exc}"[:2000])

    def on_timeout(self, job: RunningJob, exc: BaseException) -> None:
        """``timed out``: the run passed its soft time limit."""
        self._line(job, f"timed out: {exc}"[:2000])
