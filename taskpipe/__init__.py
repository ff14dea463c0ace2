"""taskpipe: a Python task queue on Thoonk job channels in Redis.

from taskpipe import TaskPipe

app = TaskPipe(broker="redis://127.0.0.1:6379/0")

@app.task
def add(a, b):
    return a + b

result = add.delay(2, 3)      # run `taskpipe worker -A mymodule:app`
result.get(timeout=10)        # -> 5
"""

from taskpipe.app import TaskPipe
from taskpipe.context import JobContext, current_job
from taskpipe.errors import (
    BrokerError,
    BrokerUnavailable,
    BrokerURLError,
    ConfigError,
    CronError,
    DependencyCycle,
    DurationError,
    EmptyChord,
    JobAborted,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    PayloadTooLarge,
    ResultExpired,
    ResultStalled,
    ResultTimeout,
    ResultUnknown,
    Retry,
    SerializationError,
    ShardCountChanged,
    TaskFailed,
    TaskpipeError,
    UnknownParent,
    UnknownTask,
    WorkflowError,
    WrongJobState,
)
from taskpipe.middleware import Middleware
from taskpipe.results import AsyncResult
from taskpipe.states import JobState
from taskpipe.task import Signature, Task
from taskpipe.worker import Worker, WorkerSettings
from taskpipe.workflows import GroupResult, chain, chord, group

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)

__all__ = [
    # the app, its tasks and their results
    "TaskPipe",
    "Task",
    "Signature",
    "AsyncResult",
    "Worker",
    "current_job",
    "JobContext",
    "JobState",
    "WorkerSettings",
    # errors: the root, then configuration
    "TaskpipeError",
    "ConfigError",
    "BrokerURLError",
    "DurationError",
    "CronError",
    "ShardCountChanged",
    # errors: the broker
    "BrokerUnavailable",
    "BrokerError",
    # errors: payloads and tasks
    "SerializationError",
    "PayloadTooLarge",
    "UnknownTask",
    "TaskFailed",
    "JobTimeout",
    "Retry",
    # errors: jobs and results
    "JobNotFound",
    "WrongJobState",
    "LeaseLost",
    "ResultTimeout",
    "ResultExpired",
    "ResultUnknown",
    "ResultStalled",
    # workflows and control (docs/workflows.md)
    "chain",
    "group",
    "chord",
    "GroupResult",
    "WorkflowError",
    "UnknownParent",
    "DependencyCycle",
    "EmptyChord",
    "JobAborted",
    # extending (docs/extending.md; Message, RunningJob in taskpipe.middleware, JobEvent in
    # taskpipe.events, LifecycleLog in taskpipe.lifecycle)
    "Middleware",
    "__version__",
]
