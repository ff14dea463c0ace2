"""The app object: owns the broker connection, the task registry and every default."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from taskpipe.broker_retry import BrokerRetry
from taskpipe.connection import DEFAULT_URL, Connection, parse_url, redact_url
from taskpipe.durations import DurationLike, parse_duration, parse_optional_duration
from taskpipe.errors import ConfigError, TaskpipeError, UnknownTask
from taskpipe.events import AppEvents
from taskpipe.extensions import ExtensionsMixin
from taskpipe.flow import check_task_flow
from taskpipe.limits import COUNT_OPTIONS, check_count, check_lease
from taskpipe.middleware import MiddlewareChain
from taskpipe.publishing import Publishing, check_job_id
from taskpipe.serialization import DEFAULT_MAX_PAYLOAD, get_serializer
from taskpipe.sharding import Sharding
from taskpipe.task import (
    DURATION_OPTIONS,
    AsyncTask,
    Signature,
    Task,
    TaskDecorator,
    TaskOptions,
)
from taskpipe.thoonk.broker_check import eviction_policy, eviction_warning
from taskpipe.thoonk.job import JobChannel
from taskpipe.thoonk.keys import cluster_name, has_hash_tag
from taskpipe.thoonk.thoonk import Thoonk

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    from taskpipe.results import AsyncResult

    P = ParamSpec("P")

__all__ = ["TaskPipe"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def check_channel_name(name: object) -> str:
    """``name`` if it is a valid channel name (a non-empty str without NUL: the workflow indexes
    separate channel and id with NUL), else ``ConfigError`` naming the value."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ConfigError(f"a channel name must be a non-empty str without NUL, got {name!r}")
    return name


class TaskPipe(ExtensionsMixin):
    """A taskpipe application.

    ``TaskPipe(broker="redis://127.0.0.1:6379/0")``. The broker URL comes from the argument, else
    ``TASKPIPE_BROKER_URL``, else ``redis://127.0.0.1:6379/0``; ``memory://`` runs an embedded
    broker in this process. ``prefix`` namespaces every key, so two apps can share one Redis.
    Nothing is global: two apps in one process never interfere.

    ``publish_retry`` (a duration, default 5 s; 0 = one try) is how long ``delay()``,
    ``apply_async``, ``send``, ``map`` and ``publish_many`` keep trying through a broker outage
    (connection refused or reset, LOADING, READONLY, TRYAGAIN, MASTERDOWN, timeouts) before
    they raise ``BrokerUnavailable``; a retried publish never creates a second job.
    ``eager=True`` (tests) runs every call inline instead of publishing it (``docs/testing.md``).
    ``shards={"emails": 8}`` spreads a channel over 8 physical channels, on different Redis
    Cluster masters (``docs/sharding.md``); every other channel keeps one (the Thoonk layout).
    """

    #: the classes ``@app.task`` makes (framework integrations add methods in subclasses)
    task_class: type[Task[Any]] = Task
    async_task_class: type[Task[Any]] = AsyncTask

    def __init__(
        self,
        name: str | None = None,
        broker: str | None = None,
        *,
        prefix: str = "",
        serializer: str = "msgpack",
        result_ttl: DurationLike = "1d",
        failure_ttl: DurationLike = "7d",
        default_channel: str = "default",
        retries: int = 0,
        retry_backoff: DurationLike = "1s",
        retry_backoff_max: DurationLike = "10m",
        timeout: DurationLike | None = None,
        lease: DurationLike = "20s",
        max_cancels: int = 3,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        connection: Connection | None = None,
        client: Any = None,
        publish_retry: DurationLike = "5s",
        eager: bool = False,
        record_successes: bool = True,
        shards: dict[str, int] | None = None,
    ) -> None:
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a str, got {prefix!r}")
        check_channel_name(default_channel)
        self.name = name or "taskpipe"
        if connection is None:
            if client is not None:
                connection = Connection(client=client)
            else:
                url = (
                    broker
                    if broker is not None
                    else (os.environ.get("TASKPIPE_BROKER_URL") or DEFAULT_URL)
                )
                parse_url(url)  # an explicit "" is an error, not "use the default"
                connection = Connection(url)
        self.connection = connection
        self.broker_url = connection.url
        self.thoonk = Thoonk(connection=connection, prefix=prefix)
        self.prefix = prefix
        self.serializer = get_serializer(serializer)
        self.result_ttl = parse_duration(result_ttl)
        #: how long failed and timed-out jobs (record, error) are kept (docs/history.md)
        self.failure_ttl = parse_duration(failure_ttl)
        self.default_channel = default_channel
        self.retries = check_count("retries", retries)
        self.retry_backoff = parse_duration(retry_backoff)
        self.retry_backoff_max = parse_duration(retry_backoff_max)
        self.timeout = parse_optional_duration(timeout)
        self.lease = check_lease(parse_duration(lease))
        self.max_cancels = check_count("max_cancels", max_cancels)
        self.max_payload = max_payload
        #: the retry policy for transient broker errors of publishes and reads (``publish_retry``)
        self.broker_retry = BrokerRetry(parse_duration(publish_retry))
        self.tasks: dict[str, Task[Any]] = {}
        self.raw_channels: dict[str, Task[Any]] = {}
        self._channels: dict[str, JobChannel] = {}
        self._lock = threading.Lock()
        self._watcher: Any = None
        self.crons: list[Any] = []
        self._eviction_checked = False
        #: eager (test) mode: every call runs inline, nothing is published (taskpipe.eager)
        self.eager = eager
        #: keep a record of succeeded jobs too (docs/history.md); False: failures only (a
        #: finish then costs what it did before records, for high-throughput channels)
        self.record_successes = bool(record_successes)
        self._eager: Any = None
        #: middlewares (``app.use``) and in-process events (``app.on``, ``task.on``)
        self.middleware = MiddlewareChain()
        self.events = AppEvents(self)
        #: workers announce written outcomes on the job event stream (``docs/extending.md``)
        self.job_events = True
        #: redis.asyncio clients by event loop (taskpipe.aio), dropped with their loop
        self._async_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: the shard layout of the channels (taskpipe.sharding)
        self.sharding = Sharding(self, shards)
        #: envelope building, send, publish_many and the encoder cache (taskpipe.publishing)
        self.publishing = Publishing(self)

    def __repr__(self) -> str:
        return f"<TaskPipe {self.name} broker={redact_url(self.broker_url)}>"

    # tasks ----------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> AsyncTask[T, P]: ...

    @overload
    def task(self, fn: Callable[P, T]) -> Task[T, P]: ...

    @overload
    def task(
        self, fn: None = None, *, name: str | None = None, **options: Any
    ) -> TaskDecorator: ...

    def task(self, fn: Any = None, *, name: str | None = None, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(channel='high', retries=3)``.

        Options: ``name``, ``channel``, ``priority``, ``timeout``, ``hard_timeout``, ``retries``,
        ``retry_backoff``, ``retry_backoff_max``, ``result_ttl``, ``max_cancels``,
        ``stall_on_failure``, ``raw``.

        ``raw=True`` (with ``channel=``) makes a Thoonk-native handler: it receives every job of
        that channel as the opaque bytes a thoonk.py / thoonk.js producer put, and the bytes it
        returns are what their ``job.finish`` listeners receive.
        """

        def register(func: Callable[..., Any]) -> Task[Any]:
            try:
                opts = TaskOptions(**options)
            except TypeError as exc:
                raise ConfigError(f"bad task option: {exc}") from None
            for key in DURATION_OPTIONS:
                parse_optional_duration(getattr(opts, key))
            for key in COUNT_OPTIONS:
                if getattr(opts, key) is not None:
                    check_count(key, getattr(opts, key))
            check_task_flow(opts)
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if not isinstance(task_name, str) or "\0" in task_name:
                raise ConfigError(f"a task name must be a str without NUL, got {task_name!r}")
            if opts.channel:
                check_channel_name(opts.channel)
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ConfigError(f"a different task is already registered as {task_name!r}")
            cls = self.async_task_class if inspect.iscoroutinefunction(func) else self.task_class
            task: Task[Any] = cls(self, func, task_name, opts)
            if opts.raw:
                if not opts.channel:
                    raise ConfigError("a raw (Thoonk-native) task needs channel=")
                if (
                    opts.channel in self.raw_channels
                    and self.raw_channels[opts.channel].fn is not func
                ):
                    raise ConfigError(f"channel {opts.channel!r} already has a raw handler")
                self.raw_channels[opts.channel] = task
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def get_task(self, name: str) -> Task[Any]:
        """The registered task of that name; ``UnknownTask`` if none."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(f"no task registered as {name!r} in app {self.name!r}") from None

    def signature(self, name: str, *args: Any, **kwargs: Any) -> Signature:
        """A signature by task name (no code of the task needed)."""
        return Signature(name, tuple(args), dict(kwargs), {}, self)

    # channels -------------------------------------------------------------------------------
    def channel(self, name: str | None = None, *, deadline: float | None = None) -> JobChannel:
        """The Thoonk job channel of that name (created on first use).

        Opening it retries a broker outage for ``publish_retry``, or until ``deadline`` (a
        ``time.monotonic()`` value: a caller's own timeout) if that comes first.

        On a Redis Cluster the name gets a hash tag (``emails`` -> channel ``{emails}``, a name
        that already has one is kept) so every key of the channel lives in one slot; both
        spellings then return the same channel. A sharded channel's logical name is refused
        (``ConfigError``): its shards are ``app.sharding.channels(name)``.
        """
        name = name or self.default_channel
        ch = self._channels.get(name)
        if ch is None:
            check_channel_name(name)
            if self.sharding.count(name) > 1:
                raise ConfigError(
                    f"channel {name!r} is sharded: its shards are app.sharding.channels({name!r})"
                )
            self.check_eviction_policy()  # once per app: a producer's first publish, a worker's start
            with self._lock:
                ch = self._channels.get(name)
                if ch is None:
                    real = name
                    if self.connection.is_cluster:
                        if "{" in self.prefix and not has_hash_tag(self.prefix):
                            raise ConfigError(
                                f"prefix {self.prefix!r} has a '{{' but no complete "
                                "hash tag: channel keys would span cluster slots"
                            )
                        real = cluster_name(name)
                    ch = self._channels.get(real) or self.broker_retry.call(
                        f"open channel {real!r}",
                        lambda _attempt: self.thoonk.job_channel(real),
                        deadline=deadline,
                    )
                    self._channels[name] = self._channels[real] = ch
        return ch

    def existing_channel(self, name: str | None = None) -> JobChannel | None:
        """The channel ``channel(name)`` opens if it exists on the broker, else None: what the
        read-only APIs (``jobs``, ``history.read_record``, ``task_breakdown``) use, so reading
        a channel never creates it (``app.jobs("typo")`` is an empty answer, not a new empty
        channel named "typo"). An invalid or sharded name is refused as by ``channel``."""
        name = name or self.default_channel
        if name in self._channels:
            return self._channels[name]
        check_channel_name(name)
        real = self.channel_name(name)
        if self.sharding.count(name) == 1 and not self.broker_retry.call(
            f"look up channel {real!r}", lambda _attempt: self.thoonk.feed_exists(real)
        ):
            return None
        return self.channel(name)

    def channel_name(self, name: str | None = None) -> str:
        """The physical name ``channel(name)`` opens (``{emails}`` on a cluster), opening nothing."""
        name = name or self.default_channel
        return cluster_name(name) if self.connection.is_cluster else name

    def set_limits(
        self,
        channel: str | None = None,
        *,
        rate_limit: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        """Set a channel's own flow limits, shared by every worker (None clears one).

        ``rate_limit="100/s"`` (``"10/m"``, ``"1000/h"``): jobs of the channel start at most
        that fast; ``concurrency=N``: at most N of its jobs claimed at once. See
        ``docs/flow-control.md``. Per-task limits are task options (``@app.task(rate_limit=)``).
        """
        from taskpipe.flow import parse_rate_limit
        from taskpipe.thoonk.flow import set_channel_limits

        rate = parse_rate_limit(rate_limit) if rate_limit is not None else None
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise ConfigError(f"concurrency must be a positive int, got {concurrency!r}")
        ch = self.channel(channel)
        self.broker_retry.call(
            f"set limits of channel {ch.name!r}",
            lambda _attempt: set_channel_limits(ch, rate, concurrency),
        )

    def check_eviction_policy(self) -> bool:
        """Warn once (logger ``taskpipe``) if the broker may evict keys: a ``maxmemory-policy``
        other than ``noeviction`` silently deletes jobs under memory pressure. Run on the first
        channel this app opens (a producer's first publish, a worker's start); ``taskpipe
        doctor`` checks every setting. Returns False if the broker could not be asked now."""
        if self._eviction_checked:
            return True
        if self.connection.is_memory or self.connection.is_cluster:  # cluster: see doctor
            self._eviction_checked = True
            return True
        try:
            policy = eviction_policy(self.connection.client)
        except TaskpipeError:  # a setting to fix (TLS handshake, database number): say it now
            raise
        except Exception:  # noqa: BLE001 - broker down: the caller's own command reports it
            return False
        self._eviction_checked = True
        warning = eviction_warning(policy)
        if warning:
            logging.getLogger("taskpipe").warning(warning)
        return True

    # publishing (taskpipe.publishing) --------------------------------------------------------
    def send(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        _task: Task[Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish a call of task ``name`` (registered here or not) and return its ``AsyncResult``.

        Options as for ``Task.apply_async``. Publishing an ``id`` that is already waiting,
        delayed, running or stalled adds nothing and returns a handle on the existing job.
        """
        return self.publishing.send(name, args, kwargs, _task, options)

    def publish_many(self, signatures: Iterable[Signature], batch: int = 500) -> list[AsyncResult]:
        """Publish many signatures, pipelined in bounded batches; returns their results in order."""
        return self.publishing.publish_many(signatures, batch)

    def publish_calls(
        self, task: Task[Any], calls: Iterable[Any], batch: int = 500
    ) -> list[AsyncResult]:
        """Publish one job of ``task`` per item of ``calls`` (a tuple is spread as arguments),
        with the task's own options; pipelined in bounded batches (``Task.map`` without options).

        Every call is encoded (and checked) before anything is written.
        """
        return self.publishing.publish_calls(task, calls, batch)

    def jobs(
        self,
        channel: str | None = None,
        *,
        state: str | None = None,
        task: str | None = None,
        since: Any = None,
        until: Any = None,
        error: str | None = None,
        limit: int = 50,
    ) -> list[Any]:
        """Ended jobs (their ``JobRecord``), newest first, filtered by ``state`` (succeeded,
        failed, timeout), ``task``, finish time (``since`` / ``until``: epoch seconds or
        datetimes) and ``error`` text. Reads indexes kept by the finish script, not a scan.
        See ``taskpipe.history.find_jobs`` and ``docs/history.md``."""
        from taskpipe.history import find_jobs

        return find_jobs(
            self,
            channel,
            state=state,
            task=task,
            since=since,
            until=until,
            error=error,
            limit=limit,
        )

    def AsyncResult(self, id: str, channel: str | None = None) -> AsyncResult:  # noqa: N802
        """A handle on a job published elsewhere (by id and channel)."""
        from taskpipe.results import AsyncResult

        check_job_id(id)
        if self.eager:
            return self.eager_runner.lookup(id)  # type: ignore[no-any-return]
        return AsyncResult(
            self, id, self.sharding.result_channel(channel or self.default_channel, id)
        )

    @property
    def eager_runner(self) -> Any:
        """The inline runner of an eager app (``taskpipe.eager.EagerRunner``)."""
        from taskpipe.eager import EagerRunner

        with self._lock:
            if self._eager is None:
                self._eager = EagerRunner(self)
        return self._eager

    @property
    def clock(self) -> Any:
        """An eager app's test clock: ``app.clock.advance("10m")`` runs what became due."""
        if not self.eager:
            raise ConfigError("the test clock exists only in eager mode (TaskPipe(eager=True))")
        return self.eager_runner.clock

    @property
    def finish_watcher(self) -> Any:
        """The app's watcher that runs ``on_finish`` callables in this process."""
        from taskpipe.callbacks import FinishWatcher

        with self._lock:
            if self._watcher is None:
                self._watcher = FinishWatcher(self)
        return self._watcher

    # cron (filled in by taskpipe.scheduler) ---------------------------------------------------
    def cron(self, expr: str, **options: Any) -> Callable[[F], F]:
        """Run the decorated task on a cron schedule: ``@app.cron('*/5 * * * *')`` over ``@app.task``."""
        from taskpipe.cron import CronEntry

        def deco(task: F) -> F:
            if not isinstance(task, Task):
                raise ConfigError("@app.cron goes above @app.task (it needs a task)")
            self.add_cron(task, expr, **options)
            return task

        CronEntry.validate(expr, options.get("tz"))
        return deco

    def add_cron(self, task: Task[Any] | str, expr: str, **options: Any) -> Any:
        """Add a cron entry for a task (or task name); returns the entry."""
        from taskpipe.cron import CronEntry

        entry = CronEntry.create(
            self, task if isinstance(task, str) else task.name, expr, **options
        )
        self.crons.append(entry)
        return entry

    # lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop background helpers and close connections."""
        self.events.stop()
        if self._watcher is not None:
            self._watcher.stop()
        for channel in list(self._channels.values()):
            channel.close()
        self.connection.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client that ``await result`` made for the running event
        loop (call it before the loop ends, e.g. at the end of ``asyncio.run``'s coroutine or in
        an ASGI lifespan's shutdown; the FastAPI integration does)."""
        import asyncio

        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose(close_connection_pool=True)  # a Sentinel master's pool too
            for sentinel_client in getattr(client, "taskpipe_sentinels", ()):
                await sentinel_client.aclose()

    def __enter__(self) -> TaskPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
