"""The app object: owns the broker connection, the task registry and every default."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from taskpipe.broker_retry import BrokerRetry
from taskpipe.brokercheck import eviction_policy, eviction_warning
from taskpipe.connection import DEFAULT_URL, Connection, parse_url, redact_url
from taskpipe.durations import eta_to_delay, parse_duration, parse_optional_duration, to_ms
from taskpipe.errors import ConfigError, UnknownTask
from taskpipe.serialization import (
    DEFAULT_MAX_PAYLOAD,
    args_encoder,
    encode_envelope,
    get_serializer,
)
from taskpipe.sharding import Sharding
from taskpipe.task import (
    AsyncTask,
    Signature,
    Task,
    TaskDecorator,
    TaskOptions,
    check_send_options,
)
from taskpipe.thoonk.job import JobChannel, PutRequest, new_id
from taskpipe.thoonk.keys import cluster_name, has_hash_tag
from taskpipe.thoonk.thoonk import Thoonk

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    from taskpipe.results import AsyncResult

    P = ParamSpec("P")

__all__ = ["TaskPipe"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_NO_OPTIONS = TaskOptions()  # frozen: the options of a task name this app does not know


class TaskPipe:
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

    def __init__(self, name: str | None = None, broker: str | None = None, *, prefix: str = "",
                 serializer: str = "msgpack", result_ttl: Any = "1d", default_channel: str = "default",
                 retries: int = 0, retry_backoff: Any = "1s", retry_backoff_max: Any = "10m",
                 timeout: Any = None, lease: Any = "20s", max_cancels: int = 3,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, connection: Connection | None = None,
                 client: Any = None, publish_retry: Any = "5s", eager: bool = False,
                 shards: dict[str, int] | None = None) -> None:
        self.name = name or "taskpipe"
        if connection is None:
            if client is not None:
                connection = Connection(client=client)
            else:
                url = broker if broker is not None else (
                    os.environ.get("TASKPIPE_BROKER_URL") or DEFAULT_URL)
                parse_url(url)  # an explicit "" is an error, not "use the default"
                connection = Connection(url)
        self.connection = connection
        self.broker_url = connection.url
        self.thoonk = Thoonk(connection=connection, prefix=prefix)
        self.prefix = prefix
        self.serializer = get_serializer(serializer)
        self.result_ttl = parse_duration(result_ttl)
        self.default_channel = default_channel
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be a non-negative int, got {retries!r}")
        self.retries = retries
        self.retry_backoff = parse_duration(retry_backoff)
        self.retry_backoff_max = parse_duration(retry_backoff_max)
        self.timeout = parse_optional_duration(timeout)
        self.lease = parse_duration(lease)
        if self.lease < 0.05:
            raise ConfigError("lease must be at least 50ms")
        self.max_cancels = max_cancels
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
        self._eager: Any = None
        #: redis.asyncio clients by event loop (taskpipe.aio), dropped with their loop
        self._async_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: the shard layout of the channels (taskpipe.sharding)
        self.sharding = Sharding(self, shards)

    def __repr__(self) -> str:
        return f"<TaskPipe {self.name} broker={redact_url(self.broker_url)}>"

    # tasks ----------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> AsyncTask[T, P]: ...

    @overload
    def task(self, fn: Callable[P, T]) -> Task[T, P]: ...

    @overload
    def task(self, fn: None = None, *, name: str | None = None, **options: Any) -> TaskDecorator: ...

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
            for key in ("timeout", "hard_timeout", "retry_backoff", "retry_backoff_max", "result_ttl"):
                parse_optional_duration(getattr(opts, key))
            for key in ("retries", "max_cancels"):
                value = getattr(opts, key)
                if value is not None and (type(value) is not int or value < 0):
                    raise ConfigError(f"{key} must be a non-negative int, got {value!r}")
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ConfigError(f"a different task is already registered as {task_name!r}")
            cls = self.async_task_class if inspect.iscoroutinefunction(func) else self.task_class
            task: Task[Any] = cls(self, func, task_name, opts)
            if opts.raw:
                if not opts.channel:
                    raise ConfigError("a raw (Thoonk-native) task needs channel=")
                if opts.channel in self.raw_channels and self.raw_channels[opts.channel].fn is not func:
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
    def channel(self, name: str | None = None) -> JobChannel:
        """The Thoonk job channel of that name (created on first use).

        On a Redis Cluster the name gets a hash tag (``emails`` -> channel ``{emails}``, a name
        that already has one is kept) so every key of the channel lives in one slot; both
        spellings then return the same channel.
        """
        name = name or self.default_channel
        ch = self._channels.get(name)
        if ch is None:
            self.check_eviction_policy()  # once per app: a producer's first publish, a worker's start
            with self._lock:
                ch = self._channels.get(name)
                if ch is None:
                    real = name
                    if self.connection.is_cluster:
                        if "{" in self.prefix and not has_hash_tag(self.prefix):
                            raise ConfigError(f"prefix {self.prefix!r} has a '{{' but no complete "
                                              "hash tag: channel keys would span cluster slots")
                        real = cluster_name(name)
                    ch = self._channels.get(real) or self.broker_retry.call(
                        f"open channel {real!r}", lambda _attempt: self.thoonk.job_channel(real))
                    self._channels[name] = self._channels[real] = ch
        return ch

    def channel_name(self, name: str | None = None) -> str:
        """The physical name ``channel(name)`` opens (``{emails}`` on a cluster), opening nothing."""
        name = name or self.default_channel
        return cluster_name(name) if self.connection.is_cluster else name

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
        except Exception:  # noqa: BLE001 - broker down: the caller's own command reports it
            return False
        self._eviction_checked = True
        warning = eviction_warning(policy)
        if warning:
            logging.getLogger("taskpipe").warning(warning)
        return True

    # publishing -----------------------------------------------------------------------------
    def _build(self, name: str, args: Iterable[Any], kwargs: dict[str, Any] | None,
               task: Task[Any] | None, options: dict[str, Any]) -> tuple[JobChannel, PutRequest, Any]:
        if not options:  # the common case (``delay()``, ``map()``): no option to check or convert
            topts = task.options if task is not None else (
                self.tasks[name].options if name in self.tasks else _NO_OPTIONS)
            payload = (self._encoder_for(task)(args if type(args) is tuple else tuple(args))
                       if task is not None and not kwargs else
                       encode_envelope(name, tuple(args), dict(kwargs or {}), {},
                                       serializer=self.serializer, max_size=self.max_payload))
            channel = self.sharding.pick(topts.channel or self.default_channel, None)
            return channel, PutRequest(payload, new_id(), topts.priority, fresh=True), None
        check_send_options(options)
        topts = task.options if task is not None else (
            self.tasks[name].options if name in self.tasks else TaskOptions())
        env_opts: dict[str, Any] = {}
        for key in ("retries", "timeout", "hard_timeout", "retry_backoff", "result_ttl"):
            value = options.get(key)
            if value is not None:
                env_opts[key] = value if key == "retries" else parse_duration(value)
        if "retries" in env_opts and (not isinstance(env_opts["retries"], int) or env_opts["retries"] < 0):
            raise ConfigError(f"retries must be a non-negative int, got {env_opts['retries']!r}")
        on_finish = options.get("on_finish")
        callback = None
        if isinstance(on_finish, Signature):
            env_opts["on_finish"] = on_finish.to_dict()
        elif on_finish is not None:
            if not callable(on_finish):
                raise ConfigError("on_finish must be a callable or a task signature")
            callback = on_finish
        payload = encode_envelope(name, tuple(args), dict(kwargs or {}), env_opts,
                                  serializer=self.serializer, max_size=self.max_payload)
        delay_ms, eta_ms = 0, 0
        if options.get("delay") is not None:
            delay_ms = to_ms(options["delay"])
        if options.get("eta") is not None:
            eta = options["eta"]
            delay_ms = to_ms(eta_to_delay(eta, time.time())) if isinstance(eta, (datetime, int, float)) \
                else to_ms(eta)
        priority = bool(options["priority"]) if options.get("priority") is not None else topts.priority
        fresh = options.get("id") is None
        job_id = new_id() if fresh else options["id"]  # id="" is an error, not "make one"
        if not isinstance(job_id, str) or not job_id or "\0" in job_id:
            raise ConfigError(f"a job id must be a non-empty string without NUL, got {job_id!r}")
        channel = self.sharding.pick(  # after every check
            options.get("channel") or topts.channel or self.default_channel,
            None if fresh else job_id, options.get("shard_key"))
        return channel, PutRequest(payload, job_id, priority, delay_ms, eta_ms, fresh), callback

    def _encoder_for(self, task: Task[Any]) -> Callable[[tuple[Any, ...]], bytes]:
        """The task's envelope encoder for positional-only calls (made once per payload limit)."""
        cached = task._encoder
        if cached is None or cached[0] != self.max_payload or cached[1] is not self.serializer:
            cached = (self.max_payload, self.serializer,
                      args_encoder(task.name, serializer=self.serializer, max_size=self.max_payload))
            task._encoder = cached
        return cached[2]

    def send(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
             *, _task: Task[Any] | None = None, **options: Any) -> AsyncResult:
        """Publish a call of task ``name`` (registered here or not) and return its ``AsyncResult``.

        Options as for ``Task.apply_async``. Publishing an ``id`` that is already waiting,
        delayed, running or stalled adds nothing and returns a handle on the existing job.
        """
        from taskpipe.results import AsyncResult

        if self.eager:
            return self.eager_runner.send(name, args, kwargs, options)  # type: ignore[no-any-return]
        channel, req, callback = self._build(name, args, kwargs, _task, options)
        assert req.id is not None
        result = AsyncResult(self, req.id, channel.name)
        if callback is not None:  # watch first, so even an instant finish is heard
            self.finish_watcher.add(result, callback)
        since_ms = int(time.time() * 1000)

        def put(attempt: int) -> None:
            # a try that failed may still have landed: never publish the same job twice
            if not attempt or not channel.landed([req], since_ms):
                channel.put_request(req)

        self.broker_retry.call(f"publish to channel {channel.name!r}", put)
        return result

    def publish_many(self, signatures: Iterable[Signature], batch: int = 500) -> list[AsyncResult]:
        """Publish many signatures, pipelined in bounded batches; returns their results in order."""
        from taskpipe.results import AsyncResult

        if self.eager:
            return [self.send(sig.task, sig.args, sig.kwargs, **sig.options) for sig in signatures]
        by_channel: dict[str, tuple[JobChannel, list[PutRequest]]] = {}
        order: list[tuple[str, str]] = []
        for sig in signatures:
            channel, req, callback = self._build(sig.task, sig.args, sig.kwargs,
                                                 self.tasks.get(sig.task), dict(sig.options))
            if callback is not None:
                raise ConfigError("publish_many takes task signatures for on_finish, not callables")
            by_channel.setdefault(channel.name, (channel, []))[1].append(req)
            order.append((channel.name, req.id or ""))
        since_ms = int(time.time() * 1000)
        for channel, reqs in by_channel.values():
            def put(attempt: int, channel: JobChannel = channel, reqs: list[PutRequest] = reqs) -> None:
                if attempt:  # a batch that failed may have landed in part: publish the rest
                    done = channel.landed(reqs, since_ms)
                    reqs[:] = [r for r in reqs if r.id not in done]
                channel.put_many(reqs, batch=batch)

            self.broker_retry.call(f"publish to channel {channel.name!r}", put)
        return [AsyncResult(self, job_id, ch) for ch, job_id in order]

    def publish_calls(self, task: Task[Any], calls: Iterable[Any], batch: int = 500) -> list[AsyncResult]:
        """Publish one job of ``task`` per item of ``calls`` (a tuple is spread as arguments),
        with the task's own options; pipelined in bounded batches (``Task.map`` without options).

        Every call is encoded (and checked) before anything is written.
        """
        from taskpipe.results import AsyncResult

        if self.eager:
            return [self.send(task.name, c if isinstance(c, tuple) else (c,)) for c in calls]
        encode = self._encoder_for(task)
        items = [encode(c if isinstance(c, tuple) else (c,)) for c in calls]
        logical = task.options.channel or self.default_channel
        ids = [new_id() for _ in items]
        picked = [self.sharding.pick(logical, None) for _ in ids]  # one channel unless sharded
        by_shard: dict[str, tuple[JobChannel, list[str], list[bytes]]] = {}
        for channel, job_id, item in zip(picked, ids, items):
            entry = by_shard.setdefault(channel.name, (channel, [], []))
            entry[1].append(job_id)
            entry[2].append(item)
        since_ms = int(time.time() * 1000)
        for channel, shard_ids, shard_items in by_shard.values():
            todo_ids, todo_items = shard_ids, shard_items

            def put(attempt: int, channel: JobChannel = channel) -> None:
                nonlocal todo_ids, todo_items
                if attempt:  # a batch that failed may have landed in part: publish the rest
                    done = channel.landed([PutRequest(b"", i, fresh=True) for i in todo_ids],
                                          since_ms)
                    rest = [(i, item) for i, item in zip(todo_ids, todo_items) if i not in done]
                    todo_ids, todo_items = [i for i, _ in rest], [item for _, item in rest]
                channel.put_fresh_many(todo_items, task.options.priority, batch, ids=todo_ids)

            self.broker_retry.call(f"publish to channel {channel.name!r}", put)
        return [AsyncResult(self, job_id, channel.name) for job_id, channel in zip(ids, picked)]

    def AsyncResult(self, id: str, channel: str | None = None) -> AsyncResult:  # noqa: N802
        """A handle on a job published elsewhere (by id and channel)."""
        from taskpipe.results import AsyncResult

        if self.eager:
            return self.eager_runner.lookup(id)  # type: ignore[no-any-return]
        return AsyncResult(self, id, self.sharding.result_channel(channel or self.default_channel, id))

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
        from taskpipe.scheduler import CronEntry

        def deco(task: F) -> F:
            if not isinstance(task, Task):
                raise ConfigError("@app.cron goes above @app.task (it needs a task)")
            self.add_cron(task, expr, **options)
            return task

        CronEntry.validate(expr, options.get("tz"))
        return deco

    def add_cron(self, task: Task[Any] | str, expr: str, **options: Any) -> Any:
        """Add a cron entry for a task (or task name); returns the entry."""
        from taskpipe.scheduler import CronEntry

        entry = CronEntry.create(self, task if isinstance(task, str) else task.name, expr, **options)
        self.crons.append(entry)
        return entry

    # lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop background helpers and close connections."""
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
