"""Calls the app's run-side middleware hooks around one run of a job (``taskpipe.middleware``).

Used by the runner (thread pools and process-pool children) and the async pool, so every pool
fires the same hooks, once per event, in the process that runs the task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskpipe.errors import JobTimeout
from taskpipe.middleware import HEADERS_OPTION, RunningJob

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.context import JobContext
    from taskpipe.worker.runner import Outcome, Prepared

__all__ = ["before_run", "after_run"]


def before_run(app: TaskPipe, prepared: Prepared, ctx: JobContext | None) -> RunningJob:
    """Build the hooks' view of the job and call ``before_run``."""
    env, task, claim = prepared.envelope, prepared.task, prepared.claim
    assert env is not None and task is not None
    headers: Any = env.options.get(HEADERS_OPTION)
    if not isinstance(headers, dict):  # a producer wrote something else: hooks see none
        headers = {}
    job = RunningJob(
        app,
        task,
        task.name,
        claim.id,
        claim.channel,
        env.args,
        env.kwargs,
        {str(k): str(v) for k, v in headers.items()},
        claim.attempts + 1,
        ctx,
    )
    app.middleware.call("before_run", job)
    return job


def after_run(
    app: TaskPipe, job: RunningJob, outcome: Outcome, error: BaseException | None
) -> None:
    """Call ``on_timeout`` / ``on_retry`` / ``on_failure`` as the outcome says, then ``after_run``."""
    chain = app.middleware
    if error is not None:
        if isinstance(error, JobTimeout):
            chain.call("on_timeout", job, error)
        if outcome.kind == "retry":
            chain.call("on_retry", job, error, outcome.delay)
        elif outcome.kind in ("failure", "stall"):
            chain.call("on_failure", job, error)
    chain.call("after_run", job, outcome)
