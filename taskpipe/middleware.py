"""Middleware: code that runs around every publish and every run of a job (``app.use(mw)``).

A middleware is an instance of :class:`Middleware` (override the hooks you need; the others are
no-ops) or any object with a subset of the hook methods. Hooks, in the order they fire:

==================================  =========================================================
hook                                when (and where)
==================================  =========================================================
``before_publish(message)``         before a call is encoded and written (publishing process);
                                    it may add ``message.headers`` (carried in the envelope)
``after_publish(message, result)``  after the job was written (``result`` is its handle)
``worker_start(worker)``            a worker starts (its main process)
``before_run(job)``                 before the task runs (the process that runs it: the worker,
                                    or a process-pool child)
``on_timeout(job, exc)``            the run passed its soft time limit (``JobTimeout``)
``on_retry(job, exc, delay)``       the run raised and the job runs again in ``delay`` seconds
``on_failure(job, exc)``            the job failed for good (no retry left; a final timeout too)
``after_run(job, outcome)``         after every run: ``outcome.kind`` is ``success``,
                                    ``retry``, ``failure`` or ``stall``
``worker_stop(worker)``             a worker stops (its main process)
==================================  =========================================================

Each hook fires exactly once per event. A hook that raises is logged (logger
``taskpipe.middleware``) and skipped: it never changes what happens to the job, and the other
middlewares still run. Middlewares run in the order they were added (``after_*`` too).

Run-side hooks fire in the process that runs the task: register middleware where the app is
defined (at import), so process-pool children, which import the app, have it as well.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.context import JobContext
    from taskpipe.results import AsyncResult
    from taskpipe.task import Task

__all__ = ["Middleware", "Message", "RunningJob", "MiddlewareChain", "HOOKS", "HEADERS_OPTION"]

log = logging.getLogger("taskpipe.middleware")

#: every hook a middleware may have
HOOKS = (
    "before_publish",
    "after_publish",
    "before_run",
    "after_run",
    "on_failure",
    "on_retry",
    "on_timeout",
    "worker_start",
    "worker_stop",
)

#: the envelope option that carries ``Message.headers`` to the worker (``RunningJob.headers``)
HEADERS_OPTION = "headers"


@dataclass
class Message:
    """A call being published, as ``before_publish`` / ``after_publish`` see it.

    ``headers`` (str -> str) travel with the job in its envelope and reach ``RunningJob.headers``
    on the worker (e.g. a trace context). ``state`` is a scratch dict for middlewares (not sent).
    ``id`` and ``channel`` are set once the job is written.
    """

    app: TaskPipe
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    channel: str | None = None


@dataclass
class RunningJob:
    """A job being run, as the run-side hooks see it.

    ``context`` is the job's ``JobContext`` (``context.log(...)`` writes to the job's log) when
    the task runs; ``state`` is a scratch dict shared by the hooks of one run.
    """

    app: TaskPipe
    task: Task[Any]
    name: str
    id: str
    channel: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    headers: dict[str, str]
    attempt: int
    context: JobContext | None = None
    state: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """Base class with a no-op method per hook; override the ones you need."""

    def before_publish(self, message: Message) -> None:
        """Before a call is published; may add ``message.headers``."""

    def after_publish(self, message: Message, result: AsyncResult[Any]) -> None:
        """After the job was written."""

    def before_run(self, job: RunningJob) -> None:
        """Before the task runs."""

    def after_run(self, job: RunningJob, outcome: Any) -> None:
        """After every run (``outcome.kind``: success, retry, failure, stall)."""

    def on_failure(self, job: RunningJob, exc: BaseException) -> None:
        """The job failed for good."""

    def on_retry(self, job: RunningJob, exc: BaseException, delay: float) -> None:
        """The run raised; the job runs again in ``delay`` seconds."""

    def on_timeout(self, job: RunningJob, exc: BaseException) -> None:
        """The run passed its soft time limit."""

    def worker_start(self, worker: Any) -> None:
        """A worker starts."""

    def worker_stop(self, worker: Any) -> None:
        """A worker stops."""


class MiddlewareChain:
    """The app's middlewares (``app.middleware``) and the one place their hooks are called."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._by_hook: dict[str, list[Any]] = {hook: [] for hook in HOOKS}
        self._lock = threading.Lock()

    def add(self, middleware: Any) -> Any:
        """Add a middleware (an object with any subset of ``HOOKS``); returns it."""
        if isinstance(middleware, type):
            from taskpipe.errors import ConfigError

            raise ConfigError(
                f"app.use() takes a middleware instance, not the class {middleware.__name__}"
            )
        hooks = [h for h in HOOKS if callable(getattr(middleware, h, None))]
        if not hooks:
            from taskpipe.errors import ConfigError

            raise ConfigError(f"{middleware!r} has none of the middleware hooks {', '.join(HOOKS)}")
        with self._lock:
            self._items.append(middleware)
            for hook in hooks:
                self._by_hook[hook].append(middleware)
        return middleware

    def remove(self, middleware: Any) -> None:
        """Remove a middleware (no error if it was not added)."""
        with self._lock:
            if middleware in self._items:
                self._items.remove(middleware)
            for hooks in self._by_hook.values():
                if middleware in hooks:
                    hooks.remove(middleware)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Any:
        return iter(list(self._items))

    def has(self, hook: str) -> bool:
        """True if some middleware has ``hook``."""
        return bool(self._by_hook[hook])

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook(*args)`` on every middleware that has it; an error is logged, never raised."""
        for middleware in list(self._by_hook[hook]):
            try:
                getattr(middleware, hook)(*args)
            except Exception:
                log.exception("middleware %r failed in %s", middleware, hook)


def before_publish(
    app: TaskPipe, task: str, args: Any, kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> Message:
    """Run ``before_publish`` on a call about to be published; returns the message, whose
    ``args``, ``kwargs`` and ``publish_options()`` are what to publish."""
    message = Message(app, task, tuple(args), dict(kwargs or {}), dict(options))
    app.middleware.call("before_publish", message)
    return message


def publish_options(message: Message) -> dict[str, Any]:
    """The message's publishing options, with its headers (if any) as the ``headers`` option."""
    if not message.headers:
        return message.options
    headers = {str(k): str(v) for k, v in message.headers.items()}
    return {**message.options, HEADERS_OPTION: headers}
