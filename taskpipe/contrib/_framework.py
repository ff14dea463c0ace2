"""What the framework integrations share: an app whose tasks run inside a context (a Flask app
context, Django's database connection handling) and that can be configured after its tasks
were declared (application factories, settings read late)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from taskpipe.app import TaskPipe
from taskpipe.errors import ConfigError

__all__ = ["FrameworkTaskPipe"]

_KEEP = ("name", "tasks", "raw_channels", "crons")  # name: unless the options give one


class FrameworkTaskPipe(TaskPipe):
    """A ``TaskPipe`` whose tasks run inside ``task_context()`` (a context manager given by the
    framework integration), and which ``reconfigure()`` can point at another broker later."""

    def task_context(self) -> AbstractContextManager[Any]:
        """The context each task run happens in (none here; integrations override it)."""
        from contextlib import nullcontext

        return nullcontext()

    def reconfigure(self, **options: Any) -> None:
        """Build the app again from ``options`` (as for ``TaskPipe``), keeping its tasks and
        cron entries: for settings known only after the tasks were declared."""
        unknown = set(options) - set(inspect.signature(TaskPipe.__init__).parameters)
        if unknown:
            raise ConfigError(f"unknown taskpipe setting(s): {', '.join(sorted(unknown))}")
        kept = {key: getattr(self, key) for key in _KEEP}
        self.close()
        TaskPipe.__init__(self, **{"name": kept.pop("name"), **options})
        for key, value in kept.items():
            setattr(self, key, value)

    if not TYPE_CHECKING:  # type checkers see TaskPipe.task's typed overloads

        def task(self, fn=None, *, name=None, **options):
            def register(func):
                task_name = name or f"{func.__module__}.{func.__qualname__}"
                known = self.tasks.get(task_name)
                if known is not None and getattr(known.fn, "__wrapped__", None) is func:
                    return known  # the same function declared again (a module imported twice)
                return TaskPipe.task(self, self._in_context(func), name=task_name, **options)

            return register(fn) if fn is not None else register

    def _in_context(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self.task_context():
                    return await func(*args, **kwargs)

            return run_async

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.task_context():
                return func(*args, **kwargs)

        return run
