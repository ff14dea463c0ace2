"""``current_job()``: what a running task knows about its own job, and how it reports progress and logs."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import is_transient
from taskpipe.errors import BrokerUnavailable, JobAborted

if TYPE_CHECKING:
    from taskpipe.thoonk.job import Claim, JobChannel

__all__ = ["JobContext", "current_job", "JobLogHandler", "LOG_BUFFER_LINES"]

LOG_BUFFER_LINES = 1000  # log lines a task keeps through a broker outage (the oldest go first)
ABORT_CHECK_EVERY = 0.1  # seconds: ``aborted`` asks the broker at most this often
FLUSH_RETRY_EVERY = 0.5  # seconds between tries to write what an outage held back
log = logging.getLogger("taskpipe.context")

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "taskpipe_job", default=None
)


class JobContext:
    """The running job, as seen from inside its task (``taskpipe.current_job()``).

    ``log()`` and ``progress()`` never fail a task because the broker is away for a while
    (restart, LOADING, failover): what cannot be written is kept (the last progress, up to
    ``LOG_BUFFER_LINES`` log lines, the oldest dropped first with a note of how many) and
    written by a later call once the broker answers, or by the worker when the task ends.
    """

    def __init__(
        self,
        channel: JobChannel,
        claim: Claim,
        task: str,
        log_max_lines: int = 1000,
        log_ttl_ms: int = 7 * 24 * 3600 * 1000,
    ) -> None:
        self.channel = channel
        self.claim = claim
        self.task = task
        self.id = claim.id
        self.attempts = claim.attempts
        self.cancel_count = claim.cancel_count
        self._log_max = log_max_lines
        self._log_ttl = log_ttl_ms
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=LOG_BUFFER_LINES)  # held back by an outage
        self._dropped = 0
        self._progress: str | None = None  # the last progress an outage held back
        self._next_try = 0.0
        self._aborted = False
        self._abort_next = 0.0

    def __repr__(self) -> str:
        return f"<JobContext {self.task} {self.channel.name}/{self.id}>"

    def progress(self, current: float, total: float = 100) -> None:
        """Report progress (e.g. ``progress(3, 10)``); readable as ``AsyncResult.progress``.

        During a broker outage the value is kept and written later (see the class)."""
        with self._lock:
            self._progress = f"{current:g}/{total:g}"
            self._write()

    def log(self, message: str, **data: Any) -> None:
        """Append a line to the job's log; keyword data is kept as JSON after the message.

        During a broker outage the line is kept and written later (see the class)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}"
        if data:
            line += " " + json.dumps(data, default=str, sort_keys=True)
        self._append(line)

    def _append(self, line: str) -> None:
        with self._lock:
            if len(self._lines) == LOG_BUFFER_LINES:
                self._dropped += 1
            self._lines.append(line)
            self._write()

    @property
    def aborted(self) -> bool:
        """True once the job was aborted (``AsyncResult.abort()``, ``taskpipe jobs abort``):
        the task should stop. Asks the broker at most every ``ABORT_CHECK_EVERY`` seconds (a
        broker outage reads as "not aborted")."""
        if self._aborted:
            return True
        now = time.monotonic()
        if now < self._abort_next:
            return False
        self._abort_next = now + ABORT_CHECK_EVERY
        try:
            self._aborted = bool(self.channel.aborted_among([(self.id, self.claim.token)]))
        except BrokerUnavailable:
            return False
        return self._aborted

    def check_abort(self) -> None:
        """Raise ``JobAborted`` if the job was aborted (call it in a long task's loop)."""
        if self.aborted:
            raise JobAborted(f"job {self.id} was aborted")

    @property
    def pending(self) -> int:
        """Log lines (and a progress) held back by a broker outage, not written yet."""
        return len(self._lines) + (self._progress is not None)

    def _write(self, force: bool = False) -> None:
        """Write what is pending (under the lock); keep it on a transient broker error."""
        if not force and self._next_try > time.monotonic():
            return  # the broker was away a moment ago: don't make every call wait for it
        try:
            progress, self._progress = self._progress, None
            if progress is not None:
                try:
                    self.channel.set_progress(self.id, progress, token=self.claim.token)
                except BrokerUnavailable as exc:
                    if is_transient(exc) and self._progress is None:
                        self._progress = progress  # kept for a later try
                    raise
            while self._lines:
                note = (
                    [
                        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} taskpipe: {self._dropped} log "
                        "lines dropped during a broker outage"
                    ]
                    if self._dropped
                    else []
                )
                taken = min(len(self._lines), 1000 - len(note))  # job_log takes 1000 a call
                lines = note + [self._lines[i] for i in range(taken)]
                self.channel.log(self.id, lines, max_lines=self._log_max, ttl_ms=self._log_ttl)
                self._dropped = 0
                for _ in range(taken):
                    self._lines.popleft()
            self._next_try = 0.0
        except BrokerUnavailable as exc:
            if not is_transient(exc):
                raise
            self._next_try = time.monotonic() + FLUSH_RETRY_EVERY

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what a broker outage held back, trying for up to ``timeout`` seconds; True
        when nothing is left (the worker calls this when the task returns)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.pending:
                try:
                    self._write(force=True)
                except Exception as exc:  # noqa: BLE001 - not an outage (e.g. the lease was lost)
                    log.warning(
                        "job %s/%s: %d log lines and progress not written: %s",
                        self.channel.name,
                        self.id,
                        len(self._lines),
                        exc,
                    )
                    self._lines.clear()
                    self._progress = None
                    return False
                if not self.pending:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "job %s/%s: %d log lines and progress not written: broker unavailable",
                        self.channel.name,
                        self.id,
                        len(self._lines),
                    )
                    return False
                time.sleep(min(FLUSH_RETRY_EVERY, left))
        return True


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
            ctx._append(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never break the task
            self.handleError(record)
