"""The app's extension points: ``use`` (middleware and plugins), ``on`` (events), ``listen``,
``define`` / ``create`` (Kinetik's API) and ``configure`` (per-environment set-up).

``TaskPipe`` inherits :class:`ExtensionsMixin`; the state lives on the app (``app.middleware``,
``app.events``). See ``docs/extending.md``.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from taskpipe.definition import TaskDefinition
from taskpipe.errors import ConfigError
from taskpipe.lifecycle import LifecycleLog
from taskpipe.middleware import HOOKS

if TYPE_CHECKING:
    from taskpipe.events import AppEvents
    from taskpipe.middleware import MiddlewareChain
    from taskpipe.results import AsyncResult

__all__ = ["ExtensionsMixin", "ENV_VAR"]

#: the environment variable ``configure(env, fn)`` compares with (Kinetik's NODE_ENV)
ENV_VAR = "TASKPIPE_ENV"


class ExtensionsMixin:
    """Middleware, events, Kinetik's ``define``/``create``/``configure`` on the app."""

    middleware: MiddlewareChain
    events: AppEvents
    _lifecycle: LifecycleLog | None = None
    _lock: threading.Lock

    def use(self, plugin: Any) -> Any:
        """Add a middleware (an object with any of the hooks of ``taskpipe.middleware``), or
        run a plugin with the app: a function (``app.use(lambda app: app.on("fail", alert))``)
        or, as in Kinetik, an object with a ``handle(app)`` method. Returns what it was given."""
        if not isinstance(plugin, type) and any(callable(getattr(plugin, h, None)) for h in HOOKS):
            return self.middleware.add(plugin)
        if not isinstance(plugin, type) and callable(getattr(plugin, "handle", None)):
            plugin.handle(self)  # Kinetik's plugin object
            return plugin
        if callable(plugin) and not isinstance(plugin, type):
            plugin(self)
            return plugin
        raise ConfigError(
            f"app.use() takes a middleware instance or a function of the app, got {plugin!r}"
        )

    def on(self, event: str, fn: Callable[..., Any] | None = None) -> Any:
        """Call ``fn`` on an app event (``complete``, ``fail``, ``timeout``, ``retry``,
        ``stall``, ``log``, ``progress``, ``empty``, ``drain``); also a decorator
        (``@app.on("fail")``). Events arrive once ``app.listen()`` runs (``docs/extending.md``)."""
        if fn is None:
            return lambda f: self.events.on(event, f)
        return self.events.on(event, fn)

    def off(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``."""
        self.events.off(event, fn)

    def listen(self, channels: Iterable[str] | None = None) -> AppEvents:
        """Start following the job events of ``channels`` (default all) in a background
        thread, feeding ``app.on`` / ``task.on`` callbacks; ``app.events.stop()`` ends it."""
        return self.events.start(channels)

    @property
    def lifecycle_log(self) -> LifecycleLog:
        """The app's automatic job log lines middleware (for ``define()``'d tasks)."""
        with self._lock:
            if self._lifecycle is None:
                self._lifecycle = LifecycleLog(tasks=())
                self.middleware.add(self._lifecycle)
            return self._lifecycle

    def define(self, name: str) -> TaskDefinition:
        """Kinetik's chainable task definition:
        ``app.define("send email").tag("mail").desc("...").timeout("1m").action(fn)``."""
        return TaskDefinition(self, name)  # type: ignore[arg-type]

    def create(
        self, task: str, data: dict[str, Any] | None = None, delay: Any = None, **options: Any
    ) -> AsyncResult[Any]:
        """Kinetik's ``create(task, data, delay)``: publish a job of ``task`` whose keyword
        arguments are ``data`` (the publisher needs no code of the task)."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"create() takes the job's data as a dict, got {type(data).__name__}")
        if delay is not None:
            options["delay"] = delay
        return self.send(task, (), dict(data or {}), **options)  # type: ignore[attr-defined, no-any-return]

    def configure(
        self, env: str | Callable[..., Any] | None = None, fn: Callable[..., Any] | None = None
    ) -> Any:
        """Run ``fn(app)`` (or ``fn()``) only when ``TASKPIPE_ENV`` equals ``env``;
        ``configure(fn)`` always runs it. Returns the app (chainable); ``configure("prod")``
        with no function is a decorator."""
        if callable(env):
            env, fn = None, env
        if env is not None and not isinstance(env, str):
            raise ConfigError(f"configure() takes an environment name, got {env!r}")
        if fn is None:

            def deco(f: Callable[..., Any]) -> Callable[..., Any]:
                self.configure(env, f)
                return f

            return deco
        if env is None or os.environ.get(ENV_VAR, "") == env:
            if _takes_no_argument(fn):
                fn()
            else:
                fn(self)
        return self


def _takes_no_argument(fn: Callable[..., Any]) -> bool:
    try:
        return not inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it the app
        return False
