"""The one exception hierarchy of taskpipe. Every error taskpipe raises is a ``TaskpipeError``."""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskpipe.durations import DurationLike

__all__ = [
    "TaskpipeError",
    "ConfigError",
    "BrokerURLError",
    "ShardCountChanged",
    "BrokerUnavailable",
    "BrokerError",
    "DurationError",
    "CronError",
    "ThoonkError",
    "FeedExists",
    "FeedDoesNotExist",
    "WrongFeedType",
    "ItemNotFound",
    "JobNotFound",
    "WrongJobState",
    "LeaseLost",
    "InvalidPosition",
    "Empty",
    "SerializationError",
    "PayloadTooLarge",
    "UnknownTask",
    "ResultTimeout",
    "ResultExpired",
    "ResultUnknown",
    "ResultStalled",
    "TaskFailed",
    "JobTimeout",
    "Retry",
    "WorkflowError",
    "UnknownParent",
    "DependencyCycle",
    "EmptyChord",
    "JobAborted",
]


class TaskpipeError(Exception):
    """Root of every error taskpipe raises."""


class ConfigError(TaskpipeError):
    """A setting or option has a value taskpipe cannot use."""


class ShardCountChanged(ConfigError):
    """A channel's configured shard count differs from the one its jobs were published with,
    and the channel still holds jobs (``docs/sharding.md``: drain it with the old count first)."""


class BrokerURLError(ConfigError):
    """A broker URL is malformed or names a scheme taskpipe does not support."""


class BrokerUnavailable(TaskpipeError):
    """The broker could not be reached (connection refused, timed out, or out of memory)."""


class BrokerError(TaskpipeError):
    """The broker answered a command with an error taskpipe does not expect (e.g. a key of the
    wrong type, a refused password); the redis-py error is its ``__cause__``."""


class DurationError(ConfigError, ValueError):
    """A duration (``'10s'``, ``'2h'``, a number or a timedelta) could not be understood."""


class CronError(ConfigError, ValueError):
    """A cron expression or time zone is invalid."""


class ThoonkError(TaskpipeError):
    """An error from the Thoonk object layer (feeds, sorted feeds, queues, job channels)."""


class FeedExists(ThoonkError):
    """A Thoonk object with that name already exists."""


class FeedDoesNotExist(ThoonkError):
    """No Thoonk object with that name exists."""


class WrongFeedType(ThoonkError):
    """The Thoonk object exists but has another type (e.g. a feed used as a job channel)."""


class _PlainKeyError(KeyError):
    """A KeyError whose message prints without the quotes KeyError adds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ItemNotFound(ThoonkError, _PlainKeyError):
    """The item id is not in the feed."""


class InvalidPosition(ThoonkError, ValueError):
    """A sorted-feed relative position is malformed or refers to the item itself."""


class Empty(ThoonkError, queue.Empty):
    """A Thoonk queue or job ``get(timeout=...)`` found nothing in time (thoonk.py's ``Empty``)."""


class JobNotFound(ThoonkError, _PlainKeyError):
    """No job with that id exists in the channel (in any state)."""


class WrongJobState(ThoonkError):
    """The job exists but is not in the state the operation needs (e.g. finishing an unclaimed job).

    Attributes: ``job_id``, ``expected`` (the state the operation needed) and ``actual``.
    """

    def __init__(self, job_id: str, expected: str, actual: str) -> None:
        super().__init__(f"job {job_id!r} is {actual}, expected {expected}")
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


class LeaseLost(WrongJobState):
    """The caller's claim on the job expired or was taken over; its outcome was refused (fencing)."""

    def __init__(self, job_id: str, actual: str = "claimed by another owner") -> None:
        super().__init__(job_id, "claimed with this lease token", actual)


class SerializationError(TaskpipeError, TypeError):
    """Arguments, a result or a payload could not be encoded or decoded."""


class PayloadTooLarge(SerializationError, ValueError):
    """An encoded payload or result is larger than the configured limit; nothing was written."""


class UnknownTask(TaskpipeError, LookupError):
    """No task is registered under that name."""


class ResultTimeout(TaskpipeError, TimeoutError):
    """``AsyncResult.get(timeout=)`` (or a Thoonk job's ``get_result``) ran out of time before
    the job finished."""


class ResultExpired(TaskpipeError, LookupError):
    """The job finished but its result is gone (its result TTL passed, or it was stored with TTL 0)."""


class ResultUnknown(TaskpipeError, LookupError):
    """No job with that id was ever seen in the channel (or it was retracted)."""


class ResultStalled(TaskpipeError, LookupError):
    """The job is stalled (parked until an operator retries it), so no result will come.

    Attributes: ``job_id`` and ``reason`` (why it was stalled).
    """

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(
            f"job {job_id!r} is stalled ({reason or 'no reason recorded'}); "
            f"retry it (taskpipe jobs retry {job_id}) and call get() again"
        )
        self.job_id = job_id
        self.reason = reason


class TaskFailed(TaskpipeError):
    """The task raised; carries the remote exception's type name, message and traceback.

    Attributes: ``job_id``, ``exc_type``, ``exc_message``, ``remote_traceback``.
    """

    def __init__(
        self, job_id: str, exc_type: str, exc_message: str, remote_traceback: str = ""
    ) -> None:
        super().__init__(f"{exc_type}: {exc_message}")
        self.job_id = job_id
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.exc_type}: {self.exc_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback
        return text


class JobTimeout(TaskpipeError, TimeoutError):
    """The task ran past its time limit."""


class Retry(TaskpipeError):
    """Raise inside a task to run it again later: ``raise Retry(delay='30s')``.

    A ``Retry`` counts as an attempt; once the task's retries are used up the job fails.
    """

    def __init__(self, delay: DurationLike | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.delay = delay
        self.reason = reason


class WorkflowError(ConfigError):
    """A chain, group, chord or ``depends_on`` cannot be published as given (nothing was
    written for the job that raised it)."""


class UnknownParent(WorkflowError):
    """A ``depends_on`` parent is not a job of its channel: never published, retracted, or
    finished so long ago that neither its result nor its finished-index entry remains."""


class DependencyCycle(WorkflowError):
    """``depends_on`` would make a job wait for itself (directly or through its parents)."""


class EmptyChord(WorkflowError):
    """A chord (or a group used as a chord's header) has no member: its callback would never
    run."""


class JobAborted(TaskpipeError):
    """Raised inside a task by ``current_job().check_abort()`` once the job was aborted
    (``AsyncResult.abort()``, ``taskpipe jobs abort``); the job already ended ``aborted``."""
