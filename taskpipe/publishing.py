"""Publishing: how a task call becomes a job (envelope building, ``send``, ``publish_many``).

``TaskPipe`` owns one ``Publishing`` (``app.publishing``) and delegates ``send``,
``publish_many`` and ``publish_calls`` to it. ``Task`` and ``Signature`` only know the small
``Publisher`` protocol (what the app offers them), never the app's internals.

Publishing options (``apply_async`` / ``app.send`` / ``Signature.set``) are checked and turned
into envelope fields and put parameters in one place, ``plan_send``. To add an option: put its
converter in ``ENVELOPE_OPTIONS`` (a field the worker reads from the envelope) or its name in
``PUT_OPTIONS`` (a field of the put itself) and read it in ``plan_send``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from taskpipe.aliases import translate_options
from taskpipe.callbacks import callbacks_of
from taskpipe.durations import eta_to_delay, expires_at, parse_duration, to_ms
from taskpipe.errors import ConfigError, SerializationError
from taskpipe.flow import FLOW_SEND_OPTIONS, build_flow, check_priority
from taskpipe.limits import check_count
from taskpipe.middleware import HEADERS_OPTION, Message, before_publish, publish_options
from taskpipe.serialization import args_encoder, encode_envelope
from taskpipe.task import Signature, TaskOptions
from taskpipe.thoonk.flow import DEBOUNCED, DEDUPLICATED, put_flow
from taskpipe.thoonk.job import JobChannel, PutRequest, new_id
from taskpipe.workflows import dependency_options, publish_waiting

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.results import AsyncResult
    from taskpipe.serialization import Serializer
    from taskpipe.task import Task

__all__ = [
    "Publisher",
    "Publishing",
    "SendPlan",
    "plan_send",
    "check_job_id",
    "check_send_options",
    "SEND_OPTIONS",
    "ENVELOPE_OPTIONS",
    "PUT_OPTIONS",
]


class Publisher(Protocol):
    """What a ``Task`` or a ``Signature`` needs from its app to publish (``TaskPipe`` is one)."""

    #: the channel of a task that names none
    default_channel: str

    def send(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        _task: Any = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Publish one call of task ``name`` with publishing options."""
        ...

    def publish_many(
        self, signatures: Iterable[Signature], batch: int = 500
    ) -> list[AsyncResult[Any]]:
        """Publish many signatures, pipelined."""
        ...

    def publish_calls(
        self, task: Task[Any], calls: Iterable[Any], batch: int = 500
    ) -> list[AsyncResult[Any]]:
        """Publish one job of ``task`` per call, with the task's own options."""
        ...

    def AsyncResult(self, id: str, channel: str | None = None) -> AsyncResult[Any]:  # noqa: N802
        """A handle on a job by id and channel."""
        ...


def _headers(value: Any) -> dict[str, str]:
    """Middleware headers (a trace context...): a ``str -> str`` map carried to the worker."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"headers must be a dict of str to str, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


#: publishing options written into the envelope's ``options`` (read by the worker): name -> the
#: converter from what the caller passed to the wire value (raises ``ConfigError`` on bad input)
ENVELOPE_OPTIONS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "retries": partial(check_count, "retries"),
        "timeout": parse_duration,
        "hard_timeout": parse_duration,
        "retry_backoff": parse_duration,
        "result_ttl": parse_duration,
        "failure_ttl": parse_duration,  # how long a failed / timed-out job's record is kept
        HEADERS_OPTION: _headers,  # read by the run-side middleware hooks (``RunningJob.headers``)
    }
)

#: publishing options that shape the put itself (where, when, which id, what runs after), or
#: that ``plan_send`` / ``Publishing.build`` turn into envelope fields themselves
PUT_OPTIONS = (
    frozenset(
        {
            "channel",
            "priority",
            "delay",
            "eta",
            "id",
            "on_finish",
            "on_failure",
            "expires",  # -> envelope expires_ms (checked at claim)
            # workflows (taskpipe.workflows): wait for parents
            "depends_on",
            "allow_failure",
            "pass_results",
            "shard_key",
        }
    )
    | FLOW_SEND_OPTIONS
)  # flow control: unique, unique_for, unique_key, debounce (taskpipe.flow)

#: every publishing option ``apply_async`` / ``app.send`` accept (eager mode checks the same set)
SEND_OPTIONS = frozenset(ENVELOPE_OPTIONS) | PUT_OPTIONS


def check_send_options(options: Iterable[str]) -> None:
    """Raise ``ConfigError`` naming any publishing option that is not in ``SEND_OPTIONS``."""
    unknown = set(options) - SEND_OPTIONS
    if unknown:
        raise ConfigError(f"unknown publishing option(s): {', '.join(sorted(unknown))}")


@dataclass(slots=True)  # not frozen: made on every publish with options, kept cheap
class SendPlan:
    """Publishing options, checked and converted: what ``plan_send`` returns."""

    #: the envelope's ``options`` (what the worker reads: retries, time limits, on_finish, ...)
    envelope: dict[str, Any] = field(default_factory=dict)
    #: the ``on_finish`` / ``on_failure`` callables, combined (run in this process by the app's
    #: finish watcher)
    callback: Callable[..., Any] | None = None
    channel: str | None = None
    priority: bool | int | None = None  # True: head of the queue; 0 (first) .. 9 (last)
    delay_ms: int = 0
    eta_ms: int = 0
    #: the caller's job id (``None``: make a fresh one)
    job_id: str | None = None
    #: a sharded channel's shard key (``None``: by the custom id, else round robin)
    shard_key: str | bytes | None = None


def check_job_id(job_id: Any) -> str:
    """``job_id`` if it is a caller's valid job id (a non-empty str without NUL), else
    ``ConfigError`` naming the value."""
    if not isinstance(job_id, str) or not job_id or "\0" in job_id:
        raise ConfigError(f"a job id must be a non-empty string without NUL, got {job_id!r}")
    return job_id


def plan_send(options: Mapping[str, Any], now: float | None = None) -> SendPlan:
    """Check publishing options and turn them into envelope fields and put parameters.

    ``now`` (epoch seconds, default the wall clock) is what an ``eta`` datetime or timestamp is
    measured from. Raises ``ConfigError`` naming the first bad option.
    """
    check_send_options(options)
    envelope: dict[str, Any] = {}
    for key, convert in ENVELOPE_OPTIONS.items():
        value = options.get(key)
        if value is not None:
            envelope[key] = convert(value)
    callback = callbacks_of(options, envelope)  # on_finish / on_failure (taskpipe.callbacks)
    if options.get("expires") is not None:  # checked by the worker that claims it
        envelope["expires_ms"] = int(
            expires_at(options["expires"], time.time() if now is None else now) * 1000
        )
    delay_ms = 0
    if options.get("delay") is not None:
        delay_ms = to_ms(options["delay"])
    if options.get("eta") is not None:
        eta = options["eta"]
        delay_ms = (
            to_ms(eta_to_delay(eta, time.time() if now is None else now))
            if isinstance(eta, (datetime, int, float))
            else to_ms(eta)
        )
    priority = check_priority(options.get("priority"))  # never coerced (taskpipe.flow)
    job_id = options.get("id")
    if job_id is not None:  # id="" is an error, not "make one"
        check_job_id(job_id)
    shard_key = options.get("shard_key")
    if shard_key is not None and not isinstance(shard_key, (str, bytes)):
        raise ConfigError(f"shard_key must be a str or bytes, got {type(shard_key).__name__}")
    return SendPlan(
        envelope, callback, options.get("channel") or None, priority, delay_ms, 0, job_id, shard_key
    )


def _dedups(options: Mapping[str, Any], topts: TaskOptions) -> bool:
    """True when a publish with these options may be deduplicated (its outcome needs a reply)."""
    return any(
        options.get(k, getattr(topts, k)) not in (None, False)
        for k in ("unique", "unique_for", "debounce")
    )


_NO_OPTIONS = TaskOptions()  # frozen: the options of a task name this app does not know

Encoder = Callable[[tuple[Any, ...]], bytes]


class Publishing:
    """The app's publishing: builds envelopes and puts them on channels, retrying through broker
    outages (``app.broker_retry``) without ever publishing a job twice.

    It owns the cache of per-task positional-argument encoders (the fast path of ``delay()`` and
    ``map()``), rebuilt when the app's serializer or payload limit changes.
    """

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        # task name -> (max_payload, serializer, encoder) for positional-only calls
        self._encoders: dict[str, tuple[int, Serializer, Encoder]] = {}

    def encoder_for(self, task: Task[Any]) -> Encoder:
        """The task's envelope encoder for positional-only calls (made once per payload limit)."""
        app = self.app
        cached = self._encoders.get(task.name)
        if cached is None or cached[0] != app.max_payload or cached[1] is not app.serializer:
            cached = (
                app.max_payload,
                app.serializer,
                args_encoder(task.name, serializer=app.serializer, max_size=app.max_payload),
            )
            self._encoders[task.name] = cached
        return cached[2]

    def task_options(self, name: str, task: Task[Any] | None) -> TaskOptions:
        """The options of the task being published (its defaults for the call)."""
        if task is not None:
            return task.options
        known = self.app.tasks.get(name)
        return known.options if known is not None else _NO_OPTIONS

    def build(
        self,
        name: str,
        args: Iterable[Any],
        kwargs: dict[str, Any] | None,
        task: Task[Any] | None,
        options: Mapping[str, Any],
    ) -> tuple[JobChannel, PutRequest, Callable[..., Any] | None]:
        """Check and encode one call: its channel, its put, and its ``on_finish`` callable."""
        if type(args) is not tuple:
            args = call_args(name, args)
        if kwargs is not None and type(kwargs) is not dict:
            kwargs = call_kwargs(name, kwargs)
        app = self.app
        topts = self.task_options(name, task)
        if not options and not topts.flowing:  # the common case (``delay()``, ``map()``)
            payload = (
                self.encoder_for(task)(args if type(args) is tuple else tuple(args))
                if task is not None and not kwargs
                else encode_envelope(
                    name,
                    tuple(args),
                    dict(kwargs or {}),
                    {},
                    serializer=app.serializer,
                    max_size=app.max_payload,
                )
            )
            channel = app.sharding.pick(topts.channel or app.default_channel, None)
            return channel, PutRequest(payload, new_id(), topts.priority is True, fresh=True), None
        plan = plan_send(options)
        head, flow = build_flow(name, topts, tuple(args), kwargs or {}, options)
        plan.envelope.update(dependency_options(app, options))  # depends_on (taskpipe.workflows)
        parents = tuple((str(c), str(i)) for c, i in plan.envelope.get("parents", ()))
        if flow is not None and flow.dedup and parents:
            raise ConfigError(
                f"task {name!r}: depends_on cannot be combined with unique, unique_for or "
                "debounce: deduplication is decided at publish, a dependant runs when its "
                "parents finish"
            )
        payload = encode_envelope(
            name,
            tuple(args),
            dict(kwargs or {}),
            plan.envelope,
            serializer=app.serializer,
            max_size=app.max_payload,
        )
        fresh = plan.job_id is None
        job_id = new_id() if plan.job_id is None else plan.job_id
        channel = app.sharding.pick(  # after every check; a custom id maps to one shard
            plan.channel or topts.channel or app.default_channel, plan.job_id, plan.shard_key
        )
        return (
            channel,
            PutRequest(payload, job_id, head, plan.delay_ms, plan.eta_ms, fresh, flow, parents),
            plan.callback,
        )

    def send(
        self,
        name: str,
        args: Iterable[Any],
        kwargs: dict[str, Any] | None,
        task: Task[Any] | None,
        options: dict[str, Any],
    ) -> AsyncResult[Any]:
        """``TaskPipe.send``: publish one call and return its ``AsyncResult``."""
        from taskpipe.results import AsyncResult

        app = self.app
        options = translate_options(options)  # Celery's option names (taskpipe.aliases)
        if type(args) is not tuple:
            args = call_args(name, args)
        if kwargs is not None and type(kwargs) is not dict:
            kwargs = call_kwargs(name, kwargs)
        if app.eager:
            return app.eager_runner.send(name, args, kwargs, options)  # type: ignore[no-any-return]
        message = None
        if app.middleware:  # before_publish may add headers (carried in the envelope)
            message = before_publish(app, name, args, kwargs, options)
            args, kwargs, options = message.args, message.kwargs, publish_options(message)
        channel, req, callback = self.build(name, args, kwargs, task, options)
        assert req.id is not None
        result: AsyncResult[Any] = AsyncResult(app, req.id, channel.name)
        if callback is not None:  # watch first, so even an instant finish is heard
            app.finish_watcher.add(result, callback)
        since_ms = int(time.time() * 1000)

        def put(attempt: int) -> None:
            # a try that failed may still have landed: never publish the same job twice
            if not attempt or not channel.landed([req], since_ms):
                if req.parents:  # waits for its parents (taskpipe.workflows)
                    publish_waiting(channel, req, req.parents)
                    return
                if req.flow is None:
                    channel.put_request(req)
                    return
                outcome = put_flow(channel, req)  # dedup: the result points at the holder
                if outcome.code in (DEDUPLICATED, DEBOUNCED):
                    result.id = outcome.id
                    result.dedup = "deduplicated" if outcome.code == DEDUPLICATED else "debounced"

        app.broker_retry.call(f"publish to channel {channel.name!r}", put)
        if message is not None:
            message.id, message.channel = result.id, result.channel
            app.middleware.call("after_publish", message, result)
        return result

    def publish_many(
        self, signatures: Iterable[Signature], batch: int = 500
    ) -> list[AsyncResult[Any]]:
        """``TaskPipe.publish_many``: publish signatures, pipelined per channel in batches."""
        from taskpipe.results import AsyncResult

        app = self.app
        if app.eager:
            return [app.send(sig.task, sig.args, sig.kwargs, **sig.options) for sig in signatures]
        by_channel: dict[str, tuple[JobChannel, list[PutRequest]]] = {}
        order: list[tuple[str, str]] = []
        messages: list[tuple[int, Message]] = []  # (index in order, message): the publish hooks
        singles: list[tuple[int, Signature]] = []  # dedup: one publish each, to see the outcome
        for sig in signatures:
            options = translate_options(dict(sig.options))
            if _dedups(options, self.task_options(sig.task, app.tasks.get(sig.task))):
                singles.append((len(order), sig))
                order.append(("", ""))
                continue
            args, kwargs = sig.args, sig.kwargs
            if app.middleware:  # each message through the publish hooks (singles: in send)
                message = before_publish(app, sig.task, args, kwargs, options)
                args, kwargs, options = message.args, message.kwargs, publish_options(message)
                messages.append((len(order), message))
            channel, req, callback = self.build(
                sig.task, args, kwargs, app.tasks.get(sig.task), options
            )
            if callback is not None:
                raise ConfigError("publish_many takes task signatures for on_finish, not callables")
            if options.get("depends_on") is not None:
                raise ConfigError("publish_many cannot publish depends_on jobs: use apply_async")
            by_channel.setdefault(channel.name, (channel, []))[1].append(req)
            order.append((channel.name, req.id or ""))
        since_ms = int(time.time() * 1000)
        for channel, reqs in by_channel.values():

            def put(
                attempt: int, channel: JobChannel = channel, reqs: list[PutRequest] = reqs
            ) -> None:
                if attempt:  # a batch that failed may have landed in part: publish the rest
                    done = channel.landed(reqs, since_ms)
                    reqs[:] = [r for r in reqs if r.id not in done]
                channel.put_many(reqs, batch=batch)

            app.broker_retry.call(f"publish to channel {channel.name!r}", put)
        results: list[AsyncResult[Any]] = [AsyncResult(app, job_id, ch) for ch, job_id in order]
        for index, message in messages:
            result = results[index]
            message.id, message.channel = result.id, result.channel
            app.middleware.call("after_publish", message, result)
        for index, sig in singles:
            results[index] = app.send(sig.task, sig.args, sig.kwargs, **sig.options)
        return results

    def publish_calls(
        self, task: Task[Any], calls: Iterable[Any], batch: int = 500
    ) -> list[AsyncResult[Any]]:
        """``TaskPipe.publish_calls``: one job of ``task`` per call, with its own options.

        Every call is encoded (and checked) before anything is written.
        """
        from taskpipe.results import AsyncResult

        app = self.app
        if app.eager:
            return [app.send(task.name, c if isinstance(c, tuple) else (c,)) for c in calls]
        if app.middleware or task.options.flowing:  # each call through the publish hooks /
            # flow control: each job through build (job_put_flow)
            return self.publish_many(task.s(*(c if isinstance(c, tuple) else (c,))) for c in calls)
        encode = self.encoder_for(task)
        items = [encode(c if isinstance(c, tuple) else (c,)) for c in calls]
        logical = task.options.channel or app.default_channel
        ids = [new_id() for _ in items]
        picked = [app.sharding.pick(logical, None) for _ in ids]  # one channel unless sharded
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
                    done = channel.landed(
                        [PutRequest(b"", i, fresh=True) for i in todo_ids], since_ms
                    )
                    rest = [(i, item) for i, item in zip(todo_ids, todo_items) if i not in done]
                    todo_ids, todo_items = [i for i, _ in rest], [item for _, item in rest]
                channel.put_fresh_many(
                    todo_items, task.options.priority is True, batch, ids=todo_ids
                )

            app.broker_retry.call(f"publish to channel {channel.name!r}", put)
        return [AsyncResult(app, job_id, channel.name) for job_id, channel in zip(ids, picked)]


def call_args(name: str, args: object) -> tuple[Any, ...]:
    """A call's positional arguments as a tuple: any iterable but a string, bytes or a mapping
    (``send("t", "abc")`` would be three arguments), else ``SerializationError``."""
    if isinstance(args, (str, bytes, bytearray, Mapping)) or not isinstance(args, Iterable):
        raise SerializationError(
            f"args of a call of {name!r} must be a list or tuple of "
            f"arguments, got {type(args).__name__}"
        )
    return tuple(args)


def call_kwargs(name: str, kwargs: object) -> dict[str, Any]:
    """A call's keyword arguments as a dict, else ``SerializationError``."""
    if not isinstance(kwargs, Mapping):
        raise SerializationError(
            f"kwargs of a call of {name!r} must be a dict of keyword "
            f"arguments, got {type(kwargs).__name__}"
        )
    return dict(kwargs)
