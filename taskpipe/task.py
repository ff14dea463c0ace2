"""Tasks and signatures: what ``@app.task`` makes, and how a call is published."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from taskpipe.durations import DurationLike
from taskpipe.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    from taskpipe.publishing import Publisher
    from taskpipe.results import AsyncResult
    from taskpipe.serialization import Envelope

    # ``Task[int]`` (any arguments) stays valid: the parameters default to ``...`` (PEP 696)
    P = ParamSpec("P", default=...)
else:
    try:  # where typing_extensions is installed, ``Task[int]`` works at run time too
        from typing_extensions import ParamSpec

        P = ParamSpec("P", default=...)
    except ImportError:  # (write ``Task[int, ...]`` in run-time expressions to be safe)
        from typing import ParamSpec

        P = ParamSpec("P")
Q = ParamSpec("Q")

__all__ = [
    "Task",
    "AsyncTask",
    "TaskOptions",
    "Signature",
    "TaskDecorator",
    "DURATION_OPTIONS",
    "option_of",
]

R = TypeVar("R")
T = TypeVar("T")


#: the options (task and per call) that hold a duration, checked with the duration grammar
DURATION_OPTIONS = (
    "timeout",
    "hard_timeout",
    "retry_backoff",
    "retry_backoff_max",
    "result_ttl",
    "failure_ttl",
)


@dataclass(frozen=True)
class TaskOptions:
    """Per-task defaults; ``None`` means "use the app's default"."""

    channel: str | None = None
    priority: bool | int | None = False  # True: head of the queue; 0 (first) .. 9 (last)
    timeout: DurationLike | None = None  # soft time limit; raises JobTimeout inside the task
    hard_timeout: DurationLike | None = None  # hard limit: the process-pool child is killed
    retries: int | None = None
    retry_backoff: DurationLike | None = None  # base delay of the exponential backoff
    retry_backoff_max: DurationLike | None = None
    result_ttl: DurationLike | None = None
    failure_ttl: DurationLike | None = (
        None  # how long a failed or timed-out job's record and error are kept
    )
    max_cancels: int | None = None
    stall_on_failure: bool = False  # after the last retry, stall instead of finishing as failed
    raw: bool = False  # a Thoonk-native handler: gets the channel's opaque bytes, returns bytes
    # flow control (docs/flow-control.md)
    rate_limit: str | None = None  # "100/s", "10/m", "1000/h": across all workers
    concurrency: int | None = None  # at most this many running at once (per key with the next)
    concurrency_key: Callable[..., Any] | None = None  # the task's arguments -> a key
    unique: bool = False  # no second job while one with the same key is unfinished
    unique_for: Any = None  # ... or for this long after the first publish (duration)
    unique_key: Any = None  # the dedup key (default: task name + arguments)
    debounce: Any = None  # the latest publish within this window wins (duration)

    @property
    def flowing(self) -> bool:
        """True when a publish of this task needs the flow-control put (``taskpipe.flow``)."""
        return (
            self.rate_limit is not None
            or self.concurrency is not None
            or self.unique
            or self.unique_for is not None
            or self.debounce is not None
            or (type(self.priority) is int)
        )


@dataclass(frozen=True)
class Signature:
    """A task call kept for later: ``add.s(2, 3)``. Used for ``on_finish=``, bulk publishing and
    workflows (``a.s(1) | b.s()``). ``immutable`` (``add.si(...)``): in a chain or chord it is
    not given the previous step's result."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    app: Publisher | None = field(default=None, compare=False, repr=False)
    immutable: bool = False

    def __or__(self, other: Any) -> Any:
        """``a.s() | b.s()``: a chain (``taskpipe.workflows.chain``)."""
        from taskpipe.workflows import chain

        return chain(self, other)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Publish the signature (extra args are appended, kwargs merged)."""
        return self.apply_async(args=args, kwargs=kwargs)

    def apply_async(
        self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Publish the signature with extra arguments and options."""
        if self.app is None:
            raise RuntimeError("this signature is not bound to an app")
        return self.app.send(
            self.task,
            args=(*self.args, *args),
            kwargs={**self.kwargs, **(kwargs or {})},
            **{**self.options, **options},
        )

    def set(self, **options: Any) -> Signature:
        """A copy with more publishing options (channel, priority, delay, ...)."""
        return replace(self, options={**self.options, **options})

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form stored inside a job envelope."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": {
                k: v for k, v in self.options.items() if k not in ("on_finish", "on_failure")
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Publisher | None = None) -> Signature:
        """Rebuild a signature from ``to_dict`` data."""
        return cls(
            str(data["task"]),
            tuple(data.get("args") or ()),
            dict(data.get("kwargs") or {}),
            dict(data.get("options") or {}),
            app,
        )


class Task(Generic[R, P]):
    """A function registered as a job type. Calling it runs it here; ``delay`` publishes it.

    Typed: ``Task[R, P]`` keeps the function's parameters ``P`` and its result type ``R`` (the
    awaited value for an ``async def``), so ``add.delay(1, "x")`` is a type error where
    ``add(a: int, b: int) -> int``, and ``add.delay(1, 2).get()`` is an ``int``.
    """

    def __init__(
        self, app: Publisher, fn: Callable[P, Any], name: str, options: TaskOptions
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    #: a short description (``app.define(...).desc(...)``); empty by default
    description: str = ""

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def on(self, event: str, fn: Callable[..., Any] | None = None) -> Any:
        """Call ``fn`` on an event of this task's jobs: ``complete(job)``, ``fail(err, job)``,
        ``timeout(job)``, ``retry(err, job)``, ``stall(job)``, ``log(job, line)``,
        ``progress(job, current, total)``; also a decorator. Events arrive while
        ``app.listen()`` runs (``docs/extending.md``)."""
        emitter = self._events().task(self.name)
        if fn is None:
            return lambda f: emitter.on(event, f)
        return emitter.on(event, fn)

    def off(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``."""
        self._events().task(self.name).off(event, fn)

    def _events(self) -> Any:
        """The app's events (``TaskPipe.events``); the ``Publisher`` protocol does not carry them."""
        events = getattr(self.app, "events", None)
        if events is None:
            raise ConfigError(f"the app of task {self.name!r} has no events (not a TaskPipe)")
        return events

    @property
    def raw(self) -> bool:
        """True for a Thoonk-native handler (``@app.task(raw=True, channel=...)``)."""
        return self.options.raw

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process, now (``async def`` tasks return a coroutine)."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def channel(self) -> str:
        """The channel this task publishes to by default."""
        return self.options.channel or self.app.default_channel

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Publish a call with the task's default options; returns its ``AsyncResult``."""
        return self.app.send(self.name, args=args, kwargs=kwargs, _task=self)

    def apply_async(
        self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[R]:
        """Publish a call with options.

        Options: ``channel``, ``priority``, ``delay``, ``eta``, ``id``, ``on_finish``,
        ``result_ttl``, ``retries``, ``timeout``, ``shard_key`` (a sharded channel: jobs of one
        key go to one shard, in order; ``docs/sharding.md``).
        """
        return self.app.send(self.name, args=args, kwargs=kwargs or {}, _task=self, **options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments."""
        return Signature(self.name, tuple(args), dict(kwargs), {}, self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain or chord it ignores the previous result."""
        return Signature(self.name, tuple(args), dict(kwargs), {}, self.app, immutable=True)

    def starmap(self, iterable: Iterable[Iterable[Any]], **options: Any) -> list[AsyncResult[R]]:
        """Publish one job per item, each item spread as the arguments (``add.starmap([(1, 2),
        (3, 4)])``), pipelined in batches; ``map`` spreads only tuples. An item that is not a
        list or tuple of arguments (an int, a str) is a ``SerializationError``."""
        from taskpipe.publishing import call_args

        return self.map((call_args(self.name, a) for a in iterable), **options)

    def map(self, iterable: Iterable[Any], **options: Any) -> list[AsyncResult[R]]:
        """Publish one job per item (a tuple is spread as arguments), pipelined in batches."""
        if not options:  # the common case: one task, positional arguments, its own options
            return self.app.publish_calls(self, iterable)
        return self.app.publish_many(
            self.s(*(a if isinstance(a, tuple) else (a,))).set(**options) for a in iterable
        )

    def AsyncResult(self, id: str) -> AsyncResult[R]:  # noqa: N802 - mirrors Celery's API
        """A handle on a job of this task published elsewhere."""
        return self.app.AsyncResult(id, channel=self.channel)


class AsyncTask(Task[R, P]):
    """The task of an ``async def`` function: calling it returns the coroutine; ``R`` is the
    awaited value, so ``delay(...).get()`` is typed as what the coroutine returns."""

    def __call__(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        """Make the coroutine of one run, here (await it to run it)."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns: a decorator that keeps the signature."""

    @overload
    def __call__(self, fn: Callable[Q, Coroutine[Any, Any, T]]) -> AsyncTask[T, Q]: ...

    @overload
    def __call__(self, fn: Callable[Q, T]) -> Task[T, Q]: ...


def option_of(env: Envelope | None, task: Task[Any] | None, app: Any, key: str) -> Any:
    """An option for one call: the call's own value, else the task's, else the app's default."""
    if env is not None and env.options.get(key) is not None:
        return env.options[key]
    value = getattr(task.options, key, None) if task is not None else None
    if value is not None:
        return value
    return getattr(app, key, None)
