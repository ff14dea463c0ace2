"""``DjangoTaskPipe``: the app of a Django project (settings, transactions, connections)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from django.conf import settings
from django.db import close_old_connections, reset_queries, transaction

from taskpipe.contrib._framework import FrameworkTaskPipe
from taskpipe.errors import ConfigError
from taskpipe.results import AsyncResult
from taskpipe.task import AsyncTask, P, R, Task
from taskpipe.thoonk.job import new_id

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    Q = ParamSpec("Q")
T = TypeVar("T")

__all__ = ["DjangoTaskPipe", "DjangoTask", "get_app", "SETTINGS_ONLY"]

#: keys of ``settings.TASKPIPE`` that are not ``TaskPipe`` options
SETTINGS_ONLY = {"dashboard_url", "dashboard_token", "autodiscover"}


class DjangoTask(Task[R, P]):
    """A task of a Django project: adds ``delay_on_commit`` (typed like ``delay``)."""

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Publish the call once the current transaction commits (at once outside one).

        Returns the handle now (its id is fixed before publishing); if the transaction rolls
        back, nothing is published and the handle stays ``unknown``."""
        return self.app.send(self.name, args=args, kwargs=kwargs, on_commit=True)


class DjangoAsyncTask(AsyncTask[R, P], DjangoTask[R, P]):
    """An ``async def`` task of a Django project."""


class DjangoTaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns in a Django project."""

    @overload
    def __call__(self, fn: Callable[Q, Coroutine[Any, Any, T]]) -> DjangoAsyncTask[T, Q]: ...

    @overload
    def __call__(self, fn: Callable[Q, T]) -> DjangoTask[T, Q]: ...


class DjangoTaskPipe(FrameworkTaskPipe):
    """A ``TaskPipe`` configured from ``settings.TASKPIPE``.

    Extras over ``TaskPipe``: ``on_commit=True`` (or a database alias) as a publishing option
    and ``task.delay_on_commit(...)``; database connections handled around each task run as
    Django handles them around a request."""

    task_class = DjangoTask
    async_task_class = DjangoAsyncTask

    if TYPE_CHECKING:  # what @app.task makes here: tasks with delay_on_commit, still typed

        @overload
        def task(self, fn: Callable[Q, Coroutine[Any, Any, T]]) -> DjangoAsyncTask[T, Q]: ...

        @overload
        def task(self, fn: Callable[Q, T]) -> DjangoTask[T, Q]: ...

        @overload
        def task(
            self, fn: None = None, *, name: str | None = None, **options: Any
        ) -> DjangoTaskDecorator: ...

        def task(self, fn: Any = None, *, name: str | None = None, **options: Any) -> Any: ...

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.from_settings(**options)

    def from_settings(self, **options: Any) -> None:
        """(Re)build the app from ``settings.TASKPIPE`` (and ``options``), keeping its tasks;
        runs again when a test changes the setting (``override_settings``)."""
        conf = dict(getattr(settings, "TASKPIPE", None) or {})
        self.django_settings = {k: conf.pop(k) for k in list(conf) if k in SETTINGS_ONLY}
        conf.setdefault("name", "django")
        self.reconfigure(**{**conf, **options})

    def send(
        self,
        name: str,
        args: Any = (),
        kwargs: dict[str, Any] | None = None,
        *,
        _task: Any = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """``TaskPipe.send``; ``on_commit=True`` (or ``on_commit="alias"``) publishes only when
        the surrounding transaction of that database commits."""
        on_commit = options.pop("on_commit", None)
        if not on_commit:
            return super().send(name, args, kwargs, _task=_task, **options)
        using = on_commit if isinstance(on_commit, str) else None
        options.setdefault("id", new_id())
        if not isinstance(options["id"], str) or not options["id"]:
            raise ConfigError(f"a job id must be a non-empty string, got {options['id']!r}")
        self.publishing.build(name, args, kwargs, _task, options)  # every check now, not at commit
        publish = functools.partial(
            super().send, name, tuple(args), dict(kwargs or {}), _task=_task, **options
        )
        transaction.on_commit(publish, using=using)
        return AsyncResult(
            self,
            options["id"],
            (
                options.get("channel")
                or (
                    _task.channel
                    if _task is not None
                    else self.tasks[name].channel
                    if name in self.tasks
                    else self.default_channel
                )
            ),
        )

    def task_context(self) -> AbstractContextManager[Any]:
        """What Django does around a request: reset the query log, close stale connections."""
        return _db_cycle()


@contextmanager
def _db_cycle() -> Any:
    reset_queries()
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


@functools.lru_cache(maxsize=1)
def get_app() -> DjangoTaskPipe:
    """The process's app (see ``taskpipe.contrib.django``)."""
    return DjangoTaskPipe()


def settings_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: a changed ``TASKPIPE`` rebuilds the app (if built)."""
    if setting == "TASKPIPE" and get_app.cache_info().currsize:
        get_app().from_settings()
