"""Error reporting middleware (Sentry-style): report a job's failure to any capture function.

    import sentry_sdk
    from taskpipe.contrib.errors_reporting import ErrorReporter
    app.use(ErrorReporter(sentry_sdk.capture_exception))

``ErrorReporter(capture)`` calls ``capture(exc, tags={...}, extras={...})`` in the process that
ran the task, with the exception object the task raised (its traceback included), when a job
fails for good (the ``on_failure`` hook: no retry left, a final timeout too). ``tags`` and
``extras`` are the scope keywords ``sentry_sdk.capture_exception`` takes: the task, channel and
job id, the attempt. ``retries=True`` also reports each run that raised and will be retried
(``on_retry``); ``with_context=False`` calls ``capture(exc)`` alone (for other reporters).
It depends on no SDK: any callable works (a fake one in tests). A reporter that raises is
logged by the middleware chain and never changes the job's outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskpipe.errors import ConfigError
from taskpipe.middleware import Middleware, RunningJob

__all__ = ["ErrorReporter"]


class ErrorReporter(Middleware):
    """Reports failures through ``capture`` (see the module docstring)."""

    def __init__(
        self, capture: Callable[..., Any], *, retries: bool = False, with_context: bool = True
    ) -> None:
        if not callable(capture):
            raise ConfigError(f"ErrorReporter needs a capture function, got {capture!r}")
        self.capture = capture
        self.retries = retries
        self.with_context = with_context

    def _report(self, job: RunningJob, exc: BaseException, final: bool) -> None:
        if not self.with_context:
            self.capture(exc)
            return
        tags = {
            "taskpipe.task": job.name,
            "taskpipe.channel": job.channel,
            "taskpipe.final": "yes" if final else "no",
        }
        extras = {
            "job_id": job.id,
            "attempt": job.attempt,
            "args": repr(job.args)[:1000],
            "kwargs": repr(job.kwargs)[:1000],
        }
        self.capture(exc, tags=tags, extras=extras)

    def on_failure(self, job: RunningJob, exc: BaseException) -> None:
        """The job failed for good: report it."""
        self._report(job, exc, final=True)

    def on_retry(self, job: RunningJob, exc: BaseException, delay: float) -> None:
        """A run raised and will be retried: reported only with ``retries=True``."""
        if self.retries:
            self._report(job, exc, final=False)
