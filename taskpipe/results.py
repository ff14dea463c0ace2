"""``AsyncResult``: the handle ``delay()`` returns, to read a job's state, progress, logs and result."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import redis

from taskpipe.broker_retry import as_taskpipe_error, is_transient
from taskpipe.durations import ttl_ms
from taskpipe.errors import (
    BrokerUnavailable,
    ConfigError,
    JobNotFound,
    ResultExpired,
    ResultStalled,
    ResultTimeout,
    ResultUnknown,
    SerializationError,
    TaskFailed,
    TaskpipeError,
    WrongJobState,
)
from taskpipe.serialization import (
    Envelope,
    ResultRecord,
    decode_envelope,
    decode_result,
    encode_failure,
)
from taskpipe.states import DONE_STATES, FAILED_STATES, OUTCOME_STATES, QUEUED_STATES, JobState
from taskpipe.task import option_of
from taskpipe.thoonk.job import JobInfo

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["AsyncResult", "STATES", "final_state", "wait_seconds"]

if TYPE_CHECKING:
    from typing_extensions import TypeVar as DefaultTypeVar

    R = DefaultTypeVar("R", default=Any)  # a bare ``AsyncResult`` is ``AsyncResult[Any]``
else:
    R = TypeVar("R")

STATES = tuple(JobState)  # every state a job can be in (taskpipe.states)
STATE_CHECK_EVERY = 1.0  # seconds between state checks of a result wait (stalled is not an event)
_FOREVER = 365 * 24 * 3600.0
T = TypeVar("T")
_BROKER_FAULTS = (redis.exceptions.RedisError, OSError, BrokerUnavailable)


def wait_seconds(timeout: object) -> float:
    """How long a ``get(timeout=)`` waits: ``None`` is (almost) forever, a number of seconds is
    taken as given (below 0: do not wait); anything else is a ``ConfigError``."""
    if timeout is None:
        return _FOREVER
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(f"timeout must be a number of seconds or None, got {timeout!r}")
    return max(0.0, float(timeout))


def final_state(record: ResultRecord) -> JobState:
    """The state a finished job's result record means: finished, failed, timeout, aborted or
    expired."""
    if record.ok:
        return JobState.FINISHED
    return OUTCOME_STATES.get(record.exc_type or "", JobState.FAILED)


class AsyncResult(Generic[R]):
    """A published job: ``state``, ``ready()``, ``successful()``, ``get(timeout=)``, progress, logs.

    ``AsyncResult[int]`` (what ``add.delay()`` returns for ``add(...) -> int``): ``get()`` is an
    ``int``. ``await result`` (or ``await result.aget(timeout=)``) waits on ``redis.asyncio``.
    """

    def __init__(self, app: TaskPipe, id: str, channel: str) -> None:
        self.app = app
        self.id = id
        self.channel = channel
        self._record: ResultRecord | None = None
        self._finished_ms: int | None = None  # the finish ``_record`` is of (see ``_current``)
        #: flow control: ``"deduplicated"`` (an unfinished job with the same ``unique`` key, or
        #: one inside its ``unique_for`` window, already stood for this publish: ``id`` is that
        #: job's) or ``"debounced"`` (the waiting job ``id`` took this publish's arguments and
        #: due time); None for a job this publish created.
        self.dedup: str | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.channel}/{self.id}>"

    @property
    def deduplicated(self) -> bool:
        """True when this publish created no job of its own (``dedup`` is set)."""
        return self.dedup is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and (self.id, self.channel) == (
            other.id,
            other.channel,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.channel))

    @property
    def _ch(self) -> Any:
        return self.app.channel(self.channel)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """A read through the app's retry policy (transient broker errors are retried for
        ``publish_retry``; nothing but a ``TaskpipeError`` comes out)."""
        return self.app.broker_retry.call(f"{what} of job {self.id!r}", lambda _attempt: fn())

    def info(self) -> JobInfo:
        """The job's raw Thoonk state and bookkeeping."""
        info: JobInfo = self._call("state", lambda: self._ch.info(self.id))
        return info

    def _fetch(self) -> ResultRecord | None:
        """The stored result, without waiting (None if there is none)."""
        if self._record is None:
            raw = self._call("result", lambda: self._ch.stored_result(self.id))
            if raw is not None:
                self._accept(raw)
        return self._record

    def _current(self) -> ResultRecord | None:
        """The cached result if it is still the job's, else None (and the cache is dropped).

        Another process may have run the job again since this handle read its result (the
        CLI's ``jobs requeue``, the dashboard, ``history.requeue``): it is then queued or
        running (a ``QUEUED_STATES`` state) or has finished again (another finish time). One
        state read; a job gone since (its record expired, cleaned) keeps the result seen."""
        if self._record is None:
            return None
        info = self.info()
        if info.state in QUEUED_STATES or (
            info.state == JobState.FINISHED
            and self._finished_ms is not None
            and info.finished_ms != self._finished_ms
        ):
            self._record = self._finished_ms = None
        elif info.state == JobState.FINISHED:
            self._finished_ms = info.finished_ms
        return self._record

    def _accept(self, raw: bytes) -> None:
        """Take the job's result as published on ``job.finish`` (kept even when not stored)."""
        if self._record is not None:
            return
        try:
            self._record = decode_result(raw)
        except SerializationError:
            # a raw (Thoonk-native) result: bytes as the legacy clients published them
            self._record = ResultRecord(
                ok=True, value=raw, exc_type="", exc_message="", traceback=""
            )

    @property
    def state(self) -> JobState:
        """A ``JobState`` (a ``str``): delayed, waiting (for parents: ``depends_on``),
        available, claimed, stalled, finished, failed, timeout, aborted, expired, unknown."""
        if self._current() is not None:
            assert self._record is not None
            return final_state(self._record)
        info = self.info()
        if info.state == JobState.FINISHED:
            record = self._fetch()
            if record is not None:
                self._finished_ms = info.finished_ms
                return final_state(record)
        return info.state

    def abort(self, by: str | None = None) -> None:
        """Abort the job while it runs: it ends ``aborted`` at once (result: a ``TaskFailed``
        of type ``JobAborted`` naming ``by`` and when, and its record: both kept for
        ``failure_ttl``, as a failure's), its lease is released, it never runs again by itself,
        and the worker running it stops the task (``docs/workflows.md``).

        Raises ``WrongJobState`` if the job is not running (finished, or not started yet:
        use ``retract()``), ``JobNotFound`` if there is no such job; ``ConfigError`` if ``by``
        is not a str without NUL."""
        if by is not None and (not isinstance(by, str) or "\0" in by):
            raise ConfigError(f"abort(by=) must be a str without NUL, got {by!r}")
        who = by or f"{socket.gethostname()}:{os.getpid()}"
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        message = f"aborted by {who} at {when}"
        record = encode_failure("JobAborted", message, "", serializer=self.app.serializer)
        item = self._call("read", lambda: self._ch.get_item(self.id))
        env = None
        if item is not None:
            try:
                env = decode_envelope(item)
            except SerializationError:  # a raw (Thoonk-native) job: no task name
                env = None
        task = env.task if env is not None else None
        ttl_ms = self._failure_ttl_ms(env)
        event = None
        if self.app.job_events:  # the job's aborted event (docs/extending.md#events)
            event = json.dumps({"task": task, "error": f"JobAborted: {message}", "by": who})
        code = self._call(
            "abort",
            lambda: self._ch.abort(
                self.id, record, ttl_ms, who, event and event.encode(), label=task or ""
            ),
        )
        if code == 1:
            self._record = None
            return
        state = self.state
        if state == JobState.UNKNOWN:
            raise JobNotFound(f"no job {self.id!r} in channel {self.channel!r}")
        raise WrongJobState(self.id, "claimed (running)", state)

    def _failure_ttl_ms(self, env: Envelope | None) -> int:
        """How long an aborted job's result and record are kept: its ``failure_ttl`` (the
        call's, else its task's, else the app's), as the worker keeps a failure's."""
        task = self.app.tasks.get(env.task) if env is not None else None
        try:
            return ttl_ms(option_of(env, task, self.app, "failure_ttl"))
        except (TaskpipeError, TypeError, ValueError):  # a bad value: the app's (kept even so)
            return ttl_ms(self.app.failure_ttl)

    def aborted_by(self) -> tuple[str, float] | None:
        """``(who, unix time)`` of an abort of this job, or None."""
        info = self._call("abort record", lambda: self._ch.abort_info(self.id))
        return None if info is None else (info[0], info[1] / 1000.0)

    def ready(self) -> bool:
        """True once the job finished (successfully or not)."""
        return self.state in DONE_STATES

    def successful(self) -> bool:
        """True if the job finished without error."""
        return self.state == JobState.FINISHED

    def failed(self) -> bool:
        """True if the job finished with an error (timed-out, aborted and expired jobs too)."""
        return self.state in FAILED_STATES

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True) -> R: ...

    @overload
    def get(self, timeout: float | None = None, *, propagate: bool) -> R | TaskFailed: ...

    @overload
    def get(self, timeout: float | None, propagate: bool) -> R | TaskFailed: ...

    def get(self, timeout: float | None = None, propagate: bool = True) -> R | TaskFailed:
        """Wait for the result (``timeout`` seconds; None = forever) and return it.

        Raises ``ResultTimeout`` (a ``TimeoutError``) on time, ``TaskFailed`` carrying the remote
        error when the task failed (unless ``propagate=False``, which returns the ``TaskFailed``),
        ``ResultExpired`` when the job finished but its result is gone.

        Fails fast instead of waiting out ``timeout``: ``ResultUnknown`` when no such job exists
        (never published, or retracted, also while waiting), ``ResultStalled`` (with the reason)
        when the job is or becomes stalled (seen within ``STATE_CHECK_EVERY`` seconds).

        Rides out broker outages (restart, LOADING, failover) within ``timeout``: the wait
        reconnects and subscribes again; ``BrokerUnavailable`` only if the broker is still
        away when the time is up.
        """
        wait = wait_seconds(timeout)
        deadline = time.monotonic() + wait
        failures = 0
        while True:
            try:
                record = self._wait(deadline, timeout)
                break
            except _BROKER_FAULTS as exc:
                failures += 1
                time.sleep(self._retry_delay(exc, failures, deadline, timeout))
        return self._outcome(record, propagate)

    def _retry_delay(
        self, exc: BaseException, failures: int, deadline: float, timeout: float | None
    ) -> float:
        """How long a result wait sleeps after a broker error before it tries again; raises
        the error (as a ``TaskpipeError``) if it is not transient or the time is up."""
        if not is_transient(exc):
            mapped = as_taskpipe_error(f"result of job {self.id!r}", exc)
            if mapped is exc:
                raise exc
            raise mapped from exc
        delay = self.app.broker_retry.delay_of(failures, deadline)
        if delay is None:
            raise BrokerUnavailable(
                f"result of job {self.id!r}: broker unavailable until the timeout "
                f"({timeout} s) passed: {exc}"
            ) from exc
        return delay

    def _outcome(self, record: ResultRecord, propagate: bool) -> R | TaskFailed:
        if record.ok:
            return record.value  # type: ignore[no-any-return]
        error = TaskFailed(
            self.id, record.exc_type or "", record.exc_message or "", record.traceback or ""
        )
        if propagate:
            raise error
        return error  # propagate=False: the failure is the value

    def _check(self, info: JobInfo) -> ResultRecord | None:
        """Fail fast for a job that will never have a result; its record if it finished."""
        if info.state == JobState.FINISHED:
            record = self._fetch()
            if record is None:
                raise ResultExpired(
                    f"job {self.id!r} finished but its result is not stored "
                    "(expired, or result_ttl=0)"
                )
            self._finished_ms = info.finished_ms
            return record
        self._fail_fast(info.state, info.reason)
        return None

    def _fail_fast(self, state: JobState, reason: str) -> None:
        """Raise for a job that will never have a result (unknown or stalled)."""
        if state == JobState.UNKNOWN:
            raise ResultUnknown(
                f"no job {self.id!r} in channel {self.channel!r} (never published, or retracted)"
            )
        if state == JobState.STALLED:
            raise ResultStalled(self.id, reason)

    def _wait(self, deadline: float, timeout: float | None) -> ResultRecord:
        """One try at waiting for the result (broker errors propagate; ``get`` retries)."""
        record = self._current()
        if record is not None:
            return record
        ch = self.app.channel(self.channel, deadline=deadline)  # within get()'s timeout
        raw = ch.stored_result(self.id)
        if raw is not None:
            self._accept(raw)
            assert self._record is not None
            return self._record
        if deadline <= time.monotonic():  # timeout=0: one look, no subscription
            info = ch.info(self.id)
            record = self._check(info)
            if record is not None:
                return record
            raise ResultTimeout(f"job {self.id!r} is still {info.state} after {timeout} s")
        # a broken connection is not kept; after an answer we gave (timeout, unknown, stalled)
        # it is still in step
        answers = (ResultTimeout, ResultUnknown, ResultStalled, ResultExpired)
        with ch.watch(("finish", "retract"), keep_on=answers) as watch:
            prefix, own_id = self.id.encode() + b"\0", self.id.encode()
            # the state is read right after subscribing: it fails fast for an unknown or
            # stalled job, and finds a result that landed before the subscription
            checked = 0.0
            while True:
                now = time.monotonic()
                if now - checked >= STATE_CHECK_EVERY:
                    checked = now
                    info = ch.info(self.id)
                    record = self._check(info)
                    if record is not None:
                        return record
                remaining = deadline - now
                if remaining <= 0:
                    raise ResultTimeout(f"job {self.id!r} is still {info.state} after {timeout} s")
                event = watch.next(min(remaining, STATE_CHECK_EVERY))
                if event is None:
                    continue
                kind, data = event
                if kind == "finish" and data.startswith(prefix):
                    self._accept(data[len(prefix) :])
                    assert self._record is not None
                    return self._record
                if kind == "retract" and data == own_id:
                    raise ResultUnknown(
                        f"job {self.id!r} in channel {self.channel!r} was "
                        "retracted while waiting for its result"
                    )

    @overload
    async def aget(self, timeout: float | None = None, propagate: Literal[True] = True) -> R: ...

    @overload
    async def aget(self, timeout: float | None = None, *, propagate: bool) -> R | TaskFailed: ...

    @overload
    async def aget(self, timeout: float | None, propagate: bool) -> R | TaskFailed: ...

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R | TaskFailed:
        """``await result.aget(timeout=)``: ``get`` for async callers, on ``redis.asyncio``.

        Waits on the ``job.finish`` channel with the app's asyncio client of the running event
        loop (no thread per wait); same errors as ``get``: fails fast for an unknown, retracted
        or stalled job (checked every ``STATE_CHECK_EVERY`` seconds) and rides out broker
        outages within ``timeout``. Brokers redis.asyncio cannot reach (an app built on a
        ready-made ``client=``, Cluster) fall back to a thread.
        """
        from taskpipe.aio import job_state, wait_result

        wait = wait_seconds(timeout)
        deadline = time.monotonic() + wait
        failures = 0
        self._current()  # a cached result the job no longer has (run again) is dropped
        while self._record is None:
            try:
                found = await wait_result(self, max(0.0, deadline - time.monotonic()))
                if found is not None:
                    self._accept(found)
                    break
                # no result: finished without one, unknown, stalled, or still waiting at the
                # deadline (the state read is on the failure path only)
                state, reason = await job_state(self)
                if state == JobState.FINISHED:  # wait_result found no stored result
                    raise ResultExpired(
                        f"job {self.id!r} finished but its result is not stored "
                        "(expired, or result_ttl=0)"
                    )
                self._fail_fast(state, reason)
                if deadline <= time.monotonic():
                    raise ResultTimeout(f"job {self.id!r} is still {state} after {timeout} s")
            except _BROKER_FAULTS as exc:
                failures += 1
                await asyncio.sleep(self._retry_delay(exc, failures, deadline, timeout))
        assert self._record is not None
        return self._outcome(self._record, propagate)

    def __await__(self) -> Generator[Any, None, R]:
        """``await result``: ``await result.aget()`` (waits as long as it takes)."""
        return self.aget().__await__()

    @property
    def result(self) -> Any:
        """The result if ready (None otherwise); a failure is returned as ``TaskFailed``."""
        if not self.ready():
            return None
        return self.get(timeout=0, propagate=False)

    @property
    def progress(self) -> tuple[float, float] | None:
        """``(current, total)`` as last reported by the task, or None."""
        text = self.info().progress
        if not text:
            return None
        current, _, total = text.partition("/")
        try:
            return float(current), float(total or 0)
        except ValueError:
            return None

    def logs(self) -> list[str]:
        """The job's log lines (captured logging records and ``current_job().log`` calls)."""
        lines = self._call("logs", lambda: self._ch.logs(self.id))
        return [line.decode("utf-8", "replace") for line in lines]

    def retract(self) -> None:
        """Remove the job from its channel, whatever its state."""

        def retract(attempt: int) -> None:
            try:
                self._ch.retract(self.id, int(self.app.failure_ttl * 1000))
            except JobNotFound:
                if not attempt:  # a retry finds it gone: the try that failed had retracted it
                    raise

        self.app.broker_retry.call(f"retract of job {self.id!r}", retract)

    def forget(self) -> None:
        """Drop the job's stored result (Celery's meaning); the job itself is not touched: a
        pending job still runs (and stores its result), a finished one then reads as
        ``ResultExpired``. Use ``retract()`` to remove a job."""
        self._call("forget", lambda: self._ch.drop_result(self.id))
        self._record = None

    # history (docs/history.md) --------------------------------------------------------------
    def record(self) -> Any:
        """The job's ``JobRecord`` once it ended (task, args, attempts, worker, times, error),
        or None (not ended yet, or the record expired)."""
        from taskpipe.history import read_record

        return self._call("record", lambda: read_record(self.app, self.channel, self.id))

    def requeue(self, states: Any = ("failed", "timeout")) -> None:
        """Run a failed or timed-out job again with its original arguments: same id, attempts
        reset, its record kept. ``WrongJobState`` if it did not end in one of ``states``,
        ``JobNotFound`` if it has no record; nothing changes then."""
        from taskpipe.history import requeue

        requeue(self.app, self.channel, self.id, states)
        self._record = None

    def edit(self, args: Any = None, kwargs: Any = None) -> None:
        """Replace the arguments of this job while it is still waiting (available, delayed or
        stalled), atomically; ``WrongJobState`` once a worker holds it or it ended."""
        from taskpipe.history import edit_args

        edit_args(self.app, self.channel, self.id, args, kwargs)
