"""The retry policy for transient broker errors (taskpipe/broker_retry.py) and the client paths
that use it: a publish that retries never doubles a job, ``get()`` rides out a Redis restart
and fails fast on unknown, retracted and stalled jobs, ``log()`` / ``progress()`` buffer
through an outage, and no redis-py exception type escapes a public call (broker down or
LOADING).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from polling import wait_for
from redis_server import RedisServer, free_port
from worker_helpers import burst

from taskpipe import TaskPipe, current_job
from taskpipe.broker_retry import BrokerRetry, as_taskpipe_error, is_transient
from taskpipe.context import LOG_BUFFER_LINES, JobContext
from taskpipe.errors import (
    BrokerError,
    BrokerUnavailable,
    LeaseLost,
    ResultStalled,
    ResultTimeout,
    ResultUnknown,
    TaskpipeError,
)
from taskpipe.results import AsyncResult
from taskpipe.thoonk.feed import Feed
from taskpipe.thoonk.job import JobChannel
from taskpipe.thoonk.queue import Queue
from taskpipe.thoonk.sorted_feed import SortedFeed

pytestmark = pytest.mark.timeout(60)


# --- the policy --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"),
        redis.exceptions.ResponseError("LOADING Redis is loading the dataset in memory"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)
    wrapped = BrokerUnavailable("x")
    wrapped.__cause__ = exc
    assert is_transient(wrapped)  # a script call's mapped error counts by its cause
    assert isinstance(as_taskpipe_error("op", exc), BrokerUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.AuthenticationError("invalid username-password pair"),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        ResultTimeout("a TimeoutError, but not the broker's"),
        BrokerUnavailable("no cause: not known to be transient"),
    ],
)
def test_errors_that_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)
    mapped = as_taskpipe_error("op", exc)
    assert isinstance(mapped, TaskpipeError)
    if isinstance(exc, redis.exceptions.ResponseError) and "WRONGTYPE" in str(exc):
        assert isinstance(mapped, BrokerError) and "WRONGTYPE" in str(mapped)


def test_retry_runs_again_until_success_and_gives_up_with_broker_unavailable() -> None:
    tries: list[int] = []

    def flaky(attempt: int) -> str:
        tries.append(attempt)
        if attempt < 3:
            raise redis.exceptions.ConnectionError("Connection refused")
        return "ok"

    assert BrokerRetry(30, base=0.001, cap=0.002).call("op", flaky) == "ok"
    assert tries == [0, 1, 2, 3]

    def down(attempt: int) -> None:
        raise redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")

    with pytest.raises(BrokerUnavailable, match="op: broker unavailable") as info:
        BrokerRetry(0.05, base=0.001, cap=0.01).call("op", down)
    assert isinstance(info.value.__cause__, redis.exceptions.BusyLoadingError)

    calls: list[int] = []

    def wrong(attempt: int) -> None:
        calls.append(attempt)
        raise redis.exceptions.ResponseError("WRONGTYPE Operation against a key")

    with pytest.raises(BrokerError):
        BrokerRetry(30).call("op", wrong)
    assert calls == [0]  # not transient: no second try


# --- publishing: a retried publish never doubles a job -----------------------------------------
class _LostReply:
    """Wraps a channel method: the first ``n`` calls land but their reply is 'lost'."""

    def __init__(self, fn: Callable[..., Any], n: int = 1, land: bool = True) -> None:
        self.fn, self.n, self.land, self.calls = fn, n, land, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.n:
            if self.land:
                self.fn(*args, **kwargs)
            raise BrokerUnavailable(
                "put: broker unavailable"
            ) from redis.exceptions.ConnectionError("Connection reset by peer")
        return self.fn(*args, **kwargs)


@pytest.fixture
def add_app(app: TaskPipe) -> TaskPipe:
    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    return app


@pytest.mark.parametrize("land", [True, False], ids=["landed", "not-landed"])
def test_delay_retried_after_a_lost_reply_publishes_once(
    add_app: TaskPipe, monkeypatch: pytest.MonkeyPatch, land: bool
) -> None:
    ch = add_app.channel()
    wrapper = _LostReply(ch.put_request, land=land)
    monkeypatch.setattr(ch, "put_request", wrapper)
    r = add_app.tasks["add"].delay(2, 3)
    assert wrapper.calls == (1 if land else 2)  # landed: the retry saw it and did not put again
    assert ch.counts()["available"] == 1 and ch.counts()["published_total"] == 1
    assert ch.info(r.id).state == "available"


def test_apply_async_with_own_id_retried_publishes_once(
    add_app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    ch = add_app.channel()
    monkeypatch.setattr(ch, "put_request", _LostReply(ch.put_request))
    add_app.tasks["add"].apply_async((1,), id="mine", delay=60)
    assert ch.counts()["delayed"] == 1 and ch.counts()["published_total"] == 1


def test_map_and_publish_many_retried_after_a_partial_batch_publish_each_job_once(
    add_app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    ch, task = add_app.channel(), add_app.tasks["add"]
    real_fresh, real_many = ch.put_fresh_many, ch.put_many

    def half_fresh(items: Any, priority: bool = False, batch: int = 500, ids: Any = None) -> Any:
        half_fresh.calls += 1  # type: ignore[attr-defined]
        if half_fresh.calls == 1:  # type: ignore[attr-defined]
            real_fresh(items[:5], priority, batch, ids=ids[:5])  # the first batch landed
            raise BrokerUnavailable("x") from redis.exceptions.ConnectionError("reset")
        return real_fresh(items, priority, batch, ids=ids)

    half_fresh.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(ch, "put_fresh_many", half_fresh)
    results = task.map(range(12))
    assert len({r.id for r in results}) == 12
    assert ch.counts()["available"] == 12 and ch.counts()["published_total"] == 12

    def half_many(reqs: Any, batch: int = 500) -> Any:
        half_many.calls += 1  # type: ignore[attr-defined]
        if half_many.calls == 1:  # type: ignore[attr-defined]
            real_many(reqs[:3], batch)
            raise BrokerUnavailable("x") from redis.exceptions.TimeoutError("timeout")
        return real_many(reqs, batch)

    half_many.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(ch, "put_many", half_many)
    task.map(range(7), priority=True)
    assert ch.counts()["available"] == 19 and ch.counts()["published_total"] == 19


def test_publish_gives_up_after_publish_retry(prefix: str) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TaskPipe("down", broker=down, prefix=prefix, publish_retry="0.2s") as app:

        @app.task(name="add")
        def add(a: int) -> int:
            return a

        with pytest.raises(BrokerUnavailable, match="broker unavailable for") as info:
            add.delay(1)
        assert isinstance(info.value.__cause__, (redis.exceptions.RedisError, BrokerUnavailable))


# --- get(): fail fast ----------------------------------------------------------------------------
def test_get_fails_fast_on_an_unknown_job(add_app: TaskPipe) -> None:
    with pytest.raises(ResultUnknown, match="never published, or retracted"):
        add_app.AsyncResult("no-such-job").get(timeout=60)


def test_get_fails_fast_on_a_stalled_job(add_app: TaskPipe) -> None:
    r = add_app.tasks["add"].delay(1)
    ch = add_app.channel()
    claim = ch.get_claim(timeout=None)
    assert claim is not None
    ch.stall(claim.id, "bad input: no such file", token=claim.token)
    with pytest.raises(ResultStalled, match="bad input: no such file") as info:
        r.get(timeout=60)
    assert info.value.reason == "bad input: no such file" and info.value.job_id == r.id


def _waiter(result: AsyncResult, timeout: float = 60) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(result.get(timeout=timeout))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _subscribed(client: Any, channel: str) -> bool:
    return bool(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))


def test_get_fails_fast_when_the_job_is_retracted_or_stalled_while_waiting(
    add_app: TaskPipe, redis_server: RedisServer, broker_url: str
) -> None:
    ch = add_app.channel()
    first, second = add_app.tasks["add"].delay(1), add_app.tasks["add"].delay(2)
    thread, out = _waiter(first)
    if broker_url.startswith("redis"):
        wait_for(
            lambda: _subscribed(redis_server.client(), ch.keys.ch_finish), what="get() waiting"
        )
    first.retract()
    thread.join(30)
    assert len(out) == 1 and isinstance(out[0], ResultUnknown), out

    thread, out = _waiter(second)
    claim = ch.get_claim(timeout=None)
    assert claim is not None and claim.id == second.id
    ch.stall(claim.id, "poison", token=claim.token)
    thread.join(30)
    assert len(out) == 1 and isinstance(out[0], ResultStalled) and out[0].reason == "poison", out


def test_get_still_times_out_for_a_waiting_job(add_app: TaskPipe) -> None:
    with pytest.raises(ResultTimeout, match="still available"):
        add_app.tasks["add"].delay(1).get(timeout=0.05)


# --- get() through a real restart ----------------------------------------------------------------
@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


def test_get_waits_through_a_redis_restart_and_resubscribes(
    own_server: RedisServer, prefix: str
) -> None:
    with TaskPipe("restart", broker=own_server.url, prefix=prefix) as app:

        @app.task(name="add")
        def add(a: int) -> int:
            return a

        r = add.delay(41)
        ch = app.channel()
        thread, out = _waiter(r)
        wait_for(lambda: _subscribed(own_server.client(), ch.keys.ch_finish), what="get() waiting")
        own_server.stop()  # graceful: AOF keeps the job
        own_server.start()
        wait_for(
            lambda: _subscribed(own_server.client(), ch.keys.ch_finish),
            timeout=30,
            what="get() to subscribe again",
            ignore=(redis.exceptions.RedisError,),
        )
        claim = ch.get_claim(timeout=None)
        assert claim is not None and claim.id == r.id
        # a raw (Thoonk-native) result: the handle gets the bytes
        ch.finish(claim.id, b"raw-41", result_ttl_ms=60_000, token=claim.token)
        thread.join(30)
        assert out == [b"raw-41"], out


def test_delay_rides_out_a_real_restart_and_publishes_once(
    own_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TaskPipe("pub", broker=own_server.url, prefix=prefix, publish_retry="60s") as app:

        @app.task(name="add")
        def add(a: int) -> int:
            return a

        ch = app.channel()
        tries: list[int] = []
        real = ch.landed  # each retry asks first whether the failed try landed

        def spy(reqs: Any, since_ms: int) -> set[str]:
            tries.append(1)
            return real(reqs, since_ms)

        monkeypatch.setattr(ch, "landed", spy)
        own_server.stop()
        out: list[Any] = []
        thread = threading.Thread(target=lambda: out.append(add.delay(5)), daemon=True)
        thread.start()
        wait_for(lambda: len(tries) >= 2, what="delay() to retry while Redis is down")
        own_server.start()
        thread.join(30)
        assert len(out) == 1 and isinstance(out[0], AsyncResult)
        counts = ch.counts()
        assert counts["available"] == 1 and counts["published_total"] == 1
        assert ch.info(out[0].id).state == "available"


# --- log() and progress() through an outage ------------------------------------------------------
def test_log_and_progress_buffer_through_an_outage_and_flush_in_order(
    add_app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = add_app.tasks["add"].delay(1)
    ch = add_app.channel()
    claim = ch.get_claim(timeout=None)
    assert claim is not None
    ctx = JobContext(ch, claim, "add", log_max_lines=5000)  # the job's log keeps every line
    ctx.log("before")
    real_log, real_progress = ch.log, ch.set_progress
    outage = threading.Event()
    outage.set()

    def broken(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if outage.is_set():
                raise BrokerUnavailable(
                    "job_log: broker unavailable"
                ) from redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(ch, "log", broken(real_log))
    monkeypatch.setattr(ch, "set_progress", broken(real_progress))
    for i in range(LOG_BUFFER_LINES + 5):  # more than the buffer: the oldest 5 are dropped
        ctx.log(f"during {i}")
    ctx.progress(7, 10)
    assert ctx.pending == LOG_BUFFER_LINES + 1
    outage.clear()
    assert ctx.flush(timeout=5)
    lines = r.logs()
    assert lines[0].endswith("before")
    assert "5 log lines dropped during a broker outage" in lines[1]
    assert [line.split(" ", 1)[1] for line in lines[2:]] == [
        f"during {i}" for i in range(5, LOG_BUFFER_LINES + 5)
    ]
    assert r.progress == (7.0, 10.0)
    ctx.log("after")
    assert r.logs()[-1].endswith("after") and ctx.pending == 0


# --- no redis-py exception escapes a public call --------------------------------------------------
class ErrorBroker:
    """A loopback server speaking RESP that answers every command with one error reply (as a
    Redis that is LOADING, a read-only replica, ...); CLIENT (SETINFO at connect) gets +OK, as
    a loading Redis gives it. Fast and exact, where a real LOADING phase takes seconds to set
    up (the fault tests do that)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.commands = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while True:
                    parsed = _parse_command(buf)
                    if parsed is None:
                        break
                    name, buf = parsed
                    self.commands += 1
                    conn.sendall(b"+OK\r\n" if name.upper() == b"CLIENT" else self.reply)

    def close(self) -> None:
        self.sock.close()


def _parse_command(buf: bytes) -> tuple[bytes, bytes] | None:
    """(command name, rest) of one RESP array of bulk strings at the head of ``buf``, or None."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    count, pos, name = int(buf[1:end]), end + 2, b""
    for i in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(buf[pos + 1 : end])
        if len(buf) < end + 2 + size + 2:
            return None
        if i == 0:
            name = buf[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return name, buf[pos:]


def _public_calls(app: TaskPipe) -> dict[str, Callable[[], Any]]:
    task = app.tasks["add"]
    handle = app.AsyncResult("some-job")
    return {
        "delay": lambda: task.delay(1),
        "apply_async": lambda: task.apply_async((1,), id="x", delay=5),
        "send": lambda: app.send("add", (1,)),
        "map": lambda: task.map([1, 2]),
        "map with options": lambda: task.map([1, 2], priority=True),
        "publish_many": lambda: app.publish_many([task.s(1)]),
        "signature.delay": lambda: task.s(1).delay(),
        "get": lambda: handle.get(timeout=0.1),
        "get(timeout=0)": lambda: handle.get(timeout=0),
        "state": lambda: handle.state,
        "ready": handle.ready,
        "successful": handle.successful,
        "failed": handle.failed,
        "info": handle.info,
        "result": lambda: handle.result,
        "progress": lambda: handle.progress,
        "logs": handle.logs,
        "retract": handle.retract,
        "forget": handle.forget,
    }


def _thoonk_calls(app: TaskPipe) -> dict[str, Callable[[], Any]]:
    """The Thoonk object layer's public calls (objects built without touching the broker)."""
    t = app.thoonk
    feed, sfeed, q, job = Feed(t, "f"), SortedFeed(t, "s"), Queue(t, "q"), JobChannel(t, "j")
    return {
        "Thoonk.create": lambda: t.create("x", "feed"),
        "Thoonk.exists": lambda: t.exists("x"),
        "Thoonk.names": t.names,
        "Thoonk.get_config": lambda: t.get_config("x"),
        "Thoonk.set_config": lambda: t.set_config("x", a="1"),
        "Thoonk.delete": lambda: t.delete("x"),
        "Thoonk.feed": lambda: t.feed("f"),
        "Thoonk.queue": lambda: t.queue("q"),
        "Thoonk.job": lambda: t.job("j"),
        "Thoonk.sorted_feed": lambda: t.sorted_feed("s"),
        "Feed.publish": lambda: feed.publish(b"x"),
        "Feed.get_ids": feed.get_ids,
        "Feed.get_item": lambda: feed.get_item("1"),
        "Feed.get_all": feed.get_all,
        "Feed.retract": lambda: feed.retract("1"),
        "Feed.max_length": lambda: feed.max_length,
        "SortedFeed.append": lambda: sfeed.append(b"x"),
        "SortedFeed.get_ids": sfeed.get_ids,
        "SortedFeed.move_first": lambda: sfeed.move_first("1"),
        "Queue.put": lambda: q.put(b"x"),
        "Queue.get": lambda: q.get(timeout=None),
        "Queue.get_ids": q.get_ids,
        "JobChannel.put": lambda: job.put(b"x"),
        "JobChannel.claim": job.claim,
        "JobChannel.get": lambda: job.get(timeout=None),
        "JobChannel.finish": lambda: job.finish("1", b"r", token="t"),
        "JobChannel.get_result": lambda: job.get_result("1", timeout=0.1),
        "JobChannel.info": lambda: job.info("1"),
        "JobChannel.counts": job.counts,
        "JobChannel.logs": lambda: job.logs("1"),
        "JobChannel.stalled_ids": job.stalled_ids,
        "JobChannel.get_ids": job.get_ids,
        "JobChannel.paused": lambda: job.paused,
        "JobChannel.reap": job.reap,
        "JobChannel.promote": job.promote,
        # the abort and workflow mixins (AbortOps, WorkflowOps) let raw errors out
        "JobChannel.abort": lambda: job.abort("1", b"r", 1000, "ops"),
        "JobChannel.aborted_among": lambda: job.aborted_among([("1", "1:1")]),
        "JobChannel.abort_info": lambda: job.abort_info("1"),
        "JobChannel.put_waiting": lambda: job.put_waiting("2", b"x", [("j", "1")]),
        "JobChannel.waiting_parents": lambda: job.waiting_parents("1"),
        "JobChannel.dependants": lambda: job.dependants("1"),
        "JobChannel.stored_results": lambda: job.stored_results(["1"]),
    }


def test_every_public_method_of_a_job_channel_maps_broker_errors() -> None:
    """Each mixin ``JobChannel`` is made of (``JobReads``, ``AbortOps``...) has its public methods
    wrapped by ``maps_broker_errors`` (they set ``_broker_errors_mapped_by_subclass``): a mixin
    without the flag let redis-py's errors out, e.g. ``current_job().aborted`` raised a raw
    ``ConnectionError`` inside a task while the broker restarted."""
    unmapped = [
        f"{base.__name__}.{name}"
        for base in JobChannel.__mro__[1:-1]
        for name, value in vars(base).items()
        if not name.startswith("_")
        and callable(value)
        and not hasattr(getattr(JobChannel, name), "__wrapped__")
    ]
    assert unmapped == []


def test_the_abort_check_reads_an_outage_as_not_aborted(add_app: TaskPipe) -> None:
    # the docs promise it ("a broker outage reads as 'not aborted'"); the check raised
    # redis-py's ConnectionError instead, failing the task that called check_abort()
    add_app.tasks["add"].delay(1)
    ch = add_app.channel()
    claim = ch.get_claim(timeout=None)
    assert claim is not None
    with TaskPipe(
        "down", broker=f"redis://127.0.0.1:{free_port()}/0", prefix="x:", publish_retry="0.1s"
    ) as down:
        ctx = JobContext(JobChannel(down.thoonk, ch.name), claim, "add")
        assert ctx.aborted is False
        ctx.check_abort()  # does not raise


def _assert_no_raw_errors(app: TaskPipe) -> None:
    for name, call in {**_public_calls(app), **_thoonk_calls(app)}.items():
        try:
            call()
        except TaskpipeError:
            pass
        except redis.exceptions.RedisError as exc:  # pragma: no cover - the defect under test
            pytest.fail(f"{name}: raw {type(exc).__name__} escaped: {exc}")
        else:
            pytest.fail(f"{name}: returned with the broker away")


def test_no_redis_exception_escapes_a_public_call_with_the_broker_down(prefix: str) -> None:
    with TaskPipe(
        "down", broker=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix, publish_retry="0.1s"
    ) as app:
        app.task(name="add")(lambda a: a)
        _assert_no_raw_errors(app)


@pytest.mark.parametrize(
    "reply",
    [
        b"-LOADING Redis is loading the dataset in memory\r\n",
        b"-READONLY You can't write against a read only replica.\r\n",
        b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
        b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        b"-ERR unknown command\r\n",
    ],
    ids=["LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "WRONGTYPE", "ERR"],
)
def test_no_redis_exception_escapes_a_public_call_on_a_refusing_broker(
    reply: bytes, prefix: str
) -> None:
    broker = ErrorBroker(reply)
    try:
        with TaskPipe("refusing", broker=broker.url, prefix=prefix, publish_retry="0.05s") as app:
            app.task(name="add")(lambda a: a)
            _assert_no_raw_errors(app)
        assert broker.commands > 0
    finally:
        broker.close()


# --- on_finish callables through a restart -------------------------------------------------------
def test_on_finish_callable_runs_after_a_redis_outage(
    own_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher thread meets the outage (its pub/sub and its subscribe fail) and keeps going."""
    with TaskPipe("watch", broker=own_server.url, prefix=prefix) as app:

        @app.task(name="inc")
        def inc(a: int) -> int:
            return a + 1

        got: list[Any] = []
        done = threading.Event()

        def on_finish(value: Any, _result: Any) -> None:
            got.append(value)
            done.set()

        inc.apply_async((1,), on_finish=on_finish)
        with caplog.at_level(logging.WARNING, logger="taskpipe.callbacks"):
            own_server.stop()
            wait_for(lambda: "finish watcher" in caplog.text, what="the watcher to meet the outage")
            own_server.start()
        burst(app)
        assert done.wait(30), "the on_finish callable never ran"
        assert got == [2]


def test_progress_after_a_lost_lease_raises_and_leaves_nothing_pending(add_app: TaskPipe) -> None:
    add_app.tasks["add"].delay(1)
    ch = add_app.channel()
    claim = ch.get_claim(timeout=None)
    assert claim is not None
    ctx = JobContext(ch, dataclasses.replace(claim, token="not-the-owner"), "add")
    with pytest.raises(LeaseLost):
        ctx.progress(1, 2)  # not an outage: raised, not buffered
    assert ctx.pending == 0 and ctx.flush(timeout=1)


def test_get_raises_broker_unavailable_when_the_broker_is_still_away_at_its_timeout(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default 5 s ``publish_retry``: opening the channel inside ``get()`` retries only
    until get's own deadline (it used to retry for the whole 5 s past a 0.2 s timeout)."""
    with TaskPipe("down", broker=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix) as app:
        retry_call = app.broker_retry.call
        deadlines: list[tuple[str, float | None]] = []

        def spy(what: str, fn: Any, *, deadline: float | None = None) -> Any:
            deadlines.append((what, deadline))
            return retry_call(what, fn, deadline=deadline)

        monkeypatch.setattr(app.broker_retry, "call", spy)
        with pytest.raises(BrokerUnavailable, match="until the timeout") as info:
            app.AsyncResult("some-job", channel="ch").get(timeout=0.2)
        assert isinstance(info.value.__cause__, (redis.exceptions.RedisError, BrokerUnavailable))
        opens = [d for what, d in deadlines if what.startswith("open channel")]
        assert opens and all(d is not None for d in opens), deadlines


def test_publish_retry_zero_tries_once(
    monkeypatch: pytest.MonkeyPatch, prefix: str, broker_url: str
) -> None:
    with TaskPipe("once", broker=broker_url, prefix=prefix, publish_retry=0) as app:
        app.task(name="add")(lambda a: a)
        ch = app.channel()
        wrapper = _LostReply(ch.put_request, land=False)
        monkeypatch.setattr(ch, "put_request", wrapper)
        with pytest.raises(BrokerUnavailable):
            app.tasks["add"].delay(1)
        assert wrapper.calls == 1 and ch.counts()["published_total"] == 0


@pytest.mark.parametrize("pool", ["thread", "async"])
def test_a_task_whose_logs_meet_an_outage_finishes_with_every_line(
    app: TaskPipe, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a real worker (thread pool, asyncio pool): the broker refuses the task's log writes
    while it runs; the task succeeds and the worker writes the lines when it returns."""
    if pool == "async":

        @app.task(name="chat")
        async def chat(n: int) -> int:
            for i in range(n):
                current_job().log(f"line {i}")  # type: ignore[union-attr]
            return n
    else:

        @app.task(name="chat")
        def chat(n: int) -> int:
            for i in range(n):
                current_job().log(f"line {i}")  # type: ignore[union-attr]
            return n

    ch = app.channel()
    real_log = ch.log
    outage = threading.Event()
    outage.set()

    def log(*args: Any, **kwargs: Any) -> Any:
        if outage.is_set():
            raise BrokerUnavailable(
                "job_log: broker unavailable"
            ) from redis.exceptions.ConnectionError("Connection refused")
        return real_log(*args, **kwargs)

    real_flush = JobContext.flush
    flushed: list[int] = []

    def flush(self: JobContext, timeout: float = 10.0) -> bool:
        flushed.append(self.pending)  # what the outage held back when the task returned
        outage.clear()  # the broker is back
        return real_flush(self, timeout)

    monkeypatch.setattr(ch, "log", log)
    monkeypatch.setattr(JobContext, "flush", flush)
    r = app.tasks["chat"].delay(5)
    burst(app, pool=pool)
    assert flushed == [5]
    assert r.get(timeout=10) == 5
    assert [line.split(" ", 1)[1] for line in r.logs()] == [f"line {i}" for i in range(5)]
