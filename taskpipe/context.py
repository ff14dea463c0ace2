"""``current_job()``: what a running task knows about its own job, and how it reports progress and logs."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpipe.thoonk.job import Claim, JobChannel

__all__ = ["JobContext", "current_job", "JobLogHandler"]

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("taskpipe_job", default=None)


class JobContext:
    """The running job, as seen from inside its task (``taskpipe.current_job()``)."""

    def __init__(self, channel: JobChannel, claim: Claim, task: str, log_max_lines: int = 1000,
                 log_ttl_ms: int = 7 * 24 * 3600 * 1000) -> None:
        self.channel = channel
        self.claim = claim
        self.task = task
        self.id = claim.id
        self.attempts = claim.attempts
        self.cancel_count = claim.cancel_count
        self._log_max = log_max_lines
        self._log_ttl = log_ttl_ms

    def __repr__(self) -> str:
        return f"<JobContext {self.task} {self.channel.name}/{self.id}>"

    def progress(self, current: float, total: float = 100) -> None:
        """Report progress (e.g. ``progress(3, 10)``); readable as ``AsyncResult.progress``."""
        self.channel.set_progress(self.id, f"{current:g}/{total:g}", token=self.claim.token)

    def log(self, message: str, **data: Any) -> None:
        """Append a line to the job's log; keyword data is kept as JSON after the message."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}"
        if data:
            line += " " + json.dumps(data, default=str, sort_keys=True)
        self.channel.log(self.id, [line], max_lines=self._log_max, ttl_ms=self._log_ttl)


def current_job() -> JobContext | None:
    """The job the calling code runs in, or None outside a task."""
    return _current.get()


def _set_current(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def _reset_current(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


class JobLogHandler(logging.Handler):
    """A logging handler that copies records emitted inside a task into that job's log."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = _current.get()
        if ctx is None or record.name.startswith("taskpipe."):
            return
        try:
            line = f"{record.levelname} {record.name}: {record.getMessage()}"
            ctx.channel.log(ctx.id, [line], max_lines=ctx._log_max, ttl_ms=ctx._log_ttl)
        except Exception:  # noqa: BLE001 - logging must never break the task
            self.handleError(record)
