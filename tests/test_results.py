"""Results: states over a job's life, get/aget, remote errors, TTLs (app, task, call, 0),
expired vs unknown, handles rebuilt by id, progress and logs, and serialization end to end.

Runs on ``memory://``; the tests marked ``redis_smoke`` also on real Redis (where Redis
semantics matter: server clock, TTLs, pub/sub wake-ups, concurrency).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from polling import wait_for
from worker_helpers import burst, worker_running

from taskpipe import (
    ConfigError,
    PayloadTooLarge,
    ResultExpired,
    ResultTimeout,
    ResultUnknown,
    SerializationError,
    TaskFailed,
    TaskPipe,
    TaskpipeError,
    current_job,
)
from taskpipe.results import STATES
from taskpipe.serialization import SERIALIZER_IDS, decode_envelope

# the task layer on memory://; the redis_smoke tests also on real Redis (tests/conftest.py)
pytestmark = pytest.mark.task_layer

DAY_MS = 86_400_000


# helpers ---------------------------------------------------------------------------------------


def counts_and_ids(app: TaskPipe, channel: str = "default") -> tuple[dict[str, int], list[str]]:
    ch = app.channel(channel)
    return ch.counts(), ch.get_ids()


# states ----------------------------------------------------------------------------------------
@pytest.mark.redis_smoke
def test_states_over_a_jobs_life(app: TaskPipe) -> None:
    release = threading.Event()

    @app.task(name="life.step", stall_on_failure=True)
    def step(fail: bool) -> str:
        release.wait(10)
        if fail:
            raise ValueError("bad step")
        return "ok"

    assert set(STATES) == {
        "delayed",
        "available",
        "claimed",
        "stalled",
        "finished",
        "failed",
        "unknown",
        "waiting",
        "aborted",
        "expired",  # these 3: issue 15
        "timeout",
        "retracted",
    }  # these 2: issue 14
    r = step.apply_async([False], delay="100ms")
    assert r.state == "delayed" and not r.ready()
    wait_for(lambda: app.channel().promote()[0] or r.state == "available", what="the job due")
    assert r.state == "available"
    with worker_running(app, concurrency=2):
        wait_for(lambda: r.state == "claimed")
        assert not r.ready() and not r.successful()
        assert r.info().worker  # the claim names its worker
        release.set()
        assert r.get(timeout=5) == "ok"
    assert r.state == "finished" and r.ready() and r.successful() and not r.failed()

    stalled = step.delay(True)
    burst(app)
    assert stalled.state == "stalled" and not stalled.ready()
    assert app.AsyncResult(uuid.uuid4().hex).state == "unknown"


@pytest.mark.redis_smoke
def test_failed_state_and_remote_error(app: TaskPipe) -> None:
    @app.task(name="err.parse")
    def parse(text: str) -> int:
        return int(text)

    r = parse.delay("twelve")
    burst(app)
    assert r.state == "failed" and r.ready() and r.failed() and not r.successful()
    with pytest.raises(TaskFailed) as info:
        r.get(timeout=5)
    err = info.value
    assert isinstance(err, TaskpipeError)
    assert err.job_id == r.id
    assert err.exc_type == "ValueError"
    assert err.exc_message == "invalid literal for int() with base 10: 'twelve'"
    assert "Traceback (most recent call last)" in err.remote_traceback
    assert "in parse" in err.remote_traceback and "return int(text)" in err.remote_traceback
    assert "Remote traceback:" in str(err) and str(err).startswith("ValueError: invalid literal")
    returned = r.get(timeout=5, propagate=False)
    assert isinstance(returned, TaskFailed) and returned.exc_type == "ValueError"
    assert isinstance(r.result, TaskFailed)  # .result never raises


def test_result_property_and_rebuilt_handles(app: TaskPipe) -> None:
    @app.task(name="h.square", channel="maths")
    def square(x: int) -> int:
        return x * x

    r = square.delay(9)
    assert r.result is None  # not ready yet
    burst(app, ["maths"])
    assert r.result == 81
    by_app = app.AsyncResult(r.id, channel="maths")
    by_task = square.AsyncResult(r.id)
    assert by_app == by_task == r and hash(by_app) == hash(r)
    assert by_app.get(timeout=1) == 81 and by_task.state == "finished"
    # wrong channel: that channel never saw the id
    assert app.AsyncResult(r.id).state == "unknown"
    with pytest.raises(ResultUnknown):
        app.AsyncResult(r.id).get(timeout=0.1)


@pytest.mark.redis_smoke
def test_get_wakes_when_the_result_lands(app: TaskPipe) -> None:
    @app.task(name="wake.echo")
    def echo(x: Any) -> Any:
        return x

    r = echo.delay("hi")
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(r.get(timeout=20)))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()  # blocked: nothing has run yet
    burst(app)
    waiter.join(10)
    assert got == ["hi"]


def test_result_timeout_is_a_timeout_error(app: TaskPipe) -> None:
    @app.task(name="t.never")
    def never() -> None: ...

    r = never.delay()
    assert issubclass(ResultTimeout, TimeoutError)
    with pytest.raises(TimeoutError) as info:
        r.get(timeout=0.1)
    assert isinstance(info.value, ResultTimeout) and "available" in str(info.value)
    with pytest.raises(ResultTimeout):
        r.get(timeout=0)
    assert r.state == "available"  # still there, untouched


def test_get_refuses_a_timeout_that_is_not_a_number(app: TaskPipe) -> None:
    # get(timeout="1s") raised a bare ValueError from float(), aget and GroupResult.get too
    import asyncio

    from taskpipe import group

    @app.task(name="t.never2")
    def never() -> None: ...

    r = never.delay()
    for bad in ("1s", True, [1]):
        with pytest.raises(ConfigError, match="timeout"):
            r.get(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="timeout"):
            asyncio.run(r.aget(timeout=bad))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="timeout"):
            group([never.s()]).apply_async().get(timeout=bad)  # type: ignore[arg-type]


def test_aget_from_asyncio(app: TaskPipe) -> None:
    @app.task(name="aio.mul")
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task(name="aio.fail")
    def fail() -> None:
        raise LookupError("gone")

    rs = [mul.delay(i, i) for i in range(4)]
    bad = fail.delay()

    async def main() -> tuple[list[Any], Any]:
        ticks = 0

        async def ticker() -> None:  # the loop keeps running while aget waits
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        work = asyncio.create_task(asyncio.to_thread(burst, app))
        values = await asyncio.gather(*(r.aget(timeout=10) for r in rs))
        err = await bad.aget(timeout=10, propagate=False)
        with pytest.raises(TaskFailed):
            await bad.aget(timeout=10)
        await work
        tick.cancel()
        assert ticks > 1
        await app.aclose()
        return list(values), err

    values, err = asyncio.run(main())
    assert values == [0, 1, 4, 9]
    assert isinstance(err, TaskFailed) and err.exc_type == "LookupError"


# TTLs: app, task, call; 0; expired vs unknown --------------------------------------------------
@pytest.mark.redis_smoke
def test_result_ttl_per_app_task_and_call(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, result_ttl="2h")

    @app.task(name="ttl.app")
    def by_app() -> int:
        return 1

    @app.task(name="ttl.task", result_ttl="30m")
    def by_task() -> int:
        return 2

    rs = {
        "app": by_app.delay(),
        "task": by_task.delay(),
        "call": by_task.apply_async(result_ttl=timedelta(minutes=5)),
        "call-over-app": by_app.apply_async(result_ttl=45),
    }
    burst(app)
    expected = {"app": 7_200_000, "task": 1_800_000, "call": 300_000, "call-over-app": 45_000}
    for key, r in rs.items():
        ttl = r.info().result_ttl_ms or 0
        assert expected[key] - 10_000 < ttl <= expected[key], key
        assert r.get(timeout=1) in (1, 2)
    app.close()


def test_default_result_ttl_is_one_day(app: TaskPipe) -> None:
    @app.task(name="ttl.default")
    def f() -> str:
        return "kept"

    r = f.delay()
    burst(app)
    assert DAY_MS - 10_000 < (r.info().result_ttl_ms or 0) <= DAY_MS


@pytest.mark.redis_smoke
def test_result_ttl_zero_keeps_nothing(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, result_ttl=0)

    @app.task(name="ttl.none")
    def fire_and_forget() -> str:
        return "not stored"

    @app.task(name="ttl.kept", result_ttl="1h")
    def kept() -> str:
        return "stored"

    r, k, c = fire_and_forget.delay(), kept.delay(), kept.apply_async(result_ttl="0s")
    burst(app)
    for gone in (r, c):
        assert gone.state == "finished"  # the finished index still knows the job
        with pytest.raises(ResultExpired):
            gone.get(timeout=1)
        assert not app.connection.client.exists(app.channel().keys.result(gone.id))
    assert k.get(timeout=1) == "stored"
    app.close()


@pytest.mark.redis_smoke
def test_expired_vs_unknown(app: TaskPipe) -> None:
    @app.task(name="ttl.short", result_ttl="1s")
    def short() -> int:
        return 8

    r = short.delay()
    key = app.channel().keys.result(r.id)
    with worker_running(app, concurrency=1):
        assert r.get(timeout=5) == 8
    wait_for(lambda: not app.connection.client.exists(key))  # the TTL ran out
    fresh = app.AsyncResult(r.id)  # a new handle: nothing cached
    assert fresh.state == "finished"
    with pytest.raises(ResultExpired) as expired:
        fresh.get(timeout=1)
    assert isinstance(expired.value, LookupError)
    with pytest.raises(ResultUnknown) as unknown:
        app.AsyncResult("never-published").get(timeout=1)
    assert isinstance(unknown.value, LookupError)
    assert not issubclass(ResultExpired, ResultUnknown) and not issubclass(
        ResultUnknown, ResultExpired
    )
    r.retract()  # retracted: gone from every index, so unknown
    assert app.AsyncResult(r.id).state == "unknown"


# progress and logs -----------------------------------------------------------------------------
@pytest.mark.redis_smoke
def test_progress_and_logs(app: TaskPipe) -> None:
    import logging

    half = threading.Event()
    go_on = threading.Event()

    @app.task(name="pl.work")
    def work(n: int) -> int:
        job = current_job()
        assert job is not None
        for i in range(1, n + 1):
            job.progress(i, n)
            job.log(f"step {i}", step=i)
            if i == 2:
                half.set()
                go_on.wait(10)
        logging.getLogger("myapp").warning("all %d done", n)
        return n

    r = work.delay(4)
    assert r.progress is None and r.logs() == []
    with worker_running(app, concurrency=1):
        assert half.wait(10)
        assert r.progress == (2.0, 4.0)
        go_on.set()
        assert r.get(timeout=5) == 4
    lines = r.logs()
    assert [line.split(" ", 1)[1] for line in lines[:4]] == [
        f'step {i} {{"step": {i}}}' for i in range(1, 5)
    ]
    assert lines[4] == "WARNING myapp: all 4 done"
    assert current_job() is None  # outside a task


# serialization end to end ----------------------------------------------------------------------
SAMPLE = (
    datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
    datetime(2024, 5, 6, 7, 8, 9),
    date(2024, 2, 29),
    b"\x00\xffbytes",
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("3.14159265358979323846"),
    (1, "two", (3.0,)),
    {"nested": [1, {"set": frozenset({1, 2})}], 7: None},
    2**70,
    timedelta(days=1, microseconds=5),
)


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_types_round_trip_end_to_end(broker_url: str, prefix: str, serializer: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, serializer=serializer)
    received: list[Any] = []

    @app.task(name="ser.echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        received.append((args, kwargs))
        return {"args": args, "kwargs": kwargs}

    r = echo.delay(*SAMPLE, when=SAMPLE[0], raw=SAMPLE[3])
    item = app.channel().get_item(r.id) or b""
    assert item[:2] == b"TP" and item[3] == SERIALIZER_IDS[serializer]
    assert decode_envelope(item).serializer == serializer
    burst(app)
    value = r.get(timeout=5)
    for got in (received[0][0], value["args"]):
        assert got == SAMPLE
        assert [type(x) for x in got] == [type(x) for x in SAMPLE]
    assert type(value["args"]) is tuple and type(value["args"][6][2]) is tuple
    assert value["kwargs"] == {"when": SAMPLE[0], "raw": SAMPLE[3]}
    assert value["args"][0].utcoffset() == timedelta(hours=2)
    app.close()


def test_unserializable_args_write_nothing(app: TaskPipe) -> None:
    @app.task(name="ser.bad")
    def bad(x: Any) -> None: ...

    before = counts_and_ids(app)
    with pytest.raises(SerializationError, match=r"args\[0\]\['lock'\]"):
        bad.delay({"lock": threading.Lock()})
    with pytest.raises(SerializationError, match="kwargs"):
        bad.apply_async(kwargs={"x": object()})
    with pytest.raises(SerializationError):
        app.send("ser.bad", [{1, object}])
    assert isinstance(SerializationError("x"), TypeError)
    assert counts_and_ids(app) == before


def test_oversized_payload_writes_nothing(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, max_payload=1024)

    @app.task(name="ser.big")
    def big(blob: bytes) -> int:
        return len(blob)

    before = counts_and_ids(app)
    with pytest.raises(PayloadTooLarge, match="over the limit of 1024 bytes"):
        big.delay(b"x" * 2000)
    assert issubclass(PayloadTooLarge, SerializationError)
    assert counts_and_ids(app) == before
    r = big.delay(b"x" * 500)  # under the limit is fine
    burst(app)
    assert r.get(timeout=5) == 500
    app.close()


def test_default_max_payload_is_512_kib(app: TaskPipe) -> None:
    @app.task(name="ser.limit")
    def f(blob: bytes) -> None: ...

    assert app.max_payload == 512 * 1024
    with pytest.raises(PayloadTooLarge):
        f.delay(b"x" * (512 * 1024))
    assert app.channel().counts()["published_total"] == 0


def test_bad_results_fail_the_job(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, max_payload=4096)

    @app.task(name="ser.obj")
    def returns_object() -> Any:
        return object()

    @app.task(name="ser.huge")
    def returns_huge() -> bytes:
        return b"x" * 10_000

    a, b = returns_object.delay(), returns_huge.delay()
    assert burst(app) == {"failed": 2}
    counts = app.channel().counts()
    assert counts["claimed"] == 0 and counts["available"] == 0  # not stuck, not lost
    err_a = a.get(timeout=5, propagate=False)
    assert a.state == "failed" and isinstance(err_a, TaskFailed)
    assert err_a.exc_type == "SerializationError" and "object" in err_a.exc_message
    err_b = b.get(timeout=5, propagate=False)
    assert b.state == "failed" and isinstance(err_b, TaskFailed)
    assert err_b.exc_type == "PayloadTooLarge"
    app.close()
