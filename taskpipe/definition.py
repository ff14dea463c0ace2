"""Kinetik's chainable task definition: ``app.define("send email").tag("mail").action(fn)``.

``define(name)`` returns a :class:`TaskDefinition`; ``tag`` (the channel), ``desc``,
``timeout``, ``retries`` and ``option`` set what ``@app.task`` would take, and ``action(fn)``
registers ``fn`` under ``name`` (the job type) and returns the same ``Task`` that
``@app.task(name=..., channel=..., timeout=...)`` makes. Defined tasks get Kinetik's automatic
job log lines (``taskpipe.lifecycle.LifecycleLog``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.durations import parse_duration
from taskpipe.errors import ConfigError

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.task import Task

__all__ = ["TaskDefinition"]


class TaskDefinition:
    """A task being defined (see the module docstring); every method but ``action`` chains."""

    def __init__(self, app: TaskPipe, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
        self.app = app
        self.name = name
        self.description = ""
        self.options: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<TaskDefinition {self.name!r} {self.options}>"

    def tag(self, tag: str) -> TaskDefinition:
        """The tag (taskpipe's channel) whose workers run this task; default: the app's."""
        if not isinstance(tag, str) or not tag:
            raise ConfigError(f"a tag must be a non-empty string, got {tag!r}")
        self.options["channel"] = tag
        return self

    def desc(self, description: str) -> TaskDefinition:
        """A short description (``task.description``; shown to middleware and tools)."""
        self.description = str(description)
        return self

    def timeout(self, duration: Any) -> TaskDefinition:
        """The soft time limit (``10000`` ms as in Kinetik is not accepted: ``"10s"``, ``10.0``)."""
        parse_duration(duration)
        self.options["timeout"] = duration
        return self

    def retries(self, count: int) -> TaskDefinition:
        """How many times a run that raised is retried."""
        self.options["retries"] = count
        return self

    def option(self, **options: Any) -> TaskDefinition:
        """Any other ``@app.task`` option (``priority``, ``retry_backoff``, ``result_ttl``...)."""
        self.options.update(options)
        return self

    def action(self, fn: Callable[..., Any]) -> Task[Any]:
        """Register ``fn`` as the task (called with the job's arguments); returns the ``Task``."""
        if not callable(fn):
            raise ConfigError(f"action() takes the task's function, got {fn!r}")
        task: Task[Any] = self.app.task(fn, name=self.name, **self.options)  # type: ignore[call-overload]
        task.description = self.description
        self.app.lifecycle_log.add_task(self.name)
        return task
