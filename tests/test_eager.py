"""Eager mode (``TaskPipe(eager=True)``, ``taskpipe.testing.eager``) and its test clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from taskpipe import (
    ConfigError,
    PayloadTooLarge,
    ResultTimeout,
    ResultUnknown,
    SerializationError,
    TaskFailed,
    TaskPipe,
    UnknownTask,
)
from taskpipe.testing import eager, memory_app


@pytest.fixture
def eapp() -> TaskPipe:
    return TaskPipe("eager-test", broker="memory://eager-test", eager=True)


def test_runs_inline_with_real_serialization(eapp: TaskPipe) -> None:
    seen: list[Any] = []

    @eapp.task
    def record(when: dt.datetime, amount: Decimal, tags: tuple[str, ...]) -> dict[str, Any]:
        seen.append((when, amount, tags))
        return {"n": len(tags)}

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    r = record.delay(when, Decimal("1.50"), ("a", "b"))
    assert r.state == "finished" and r.successful()
    assert r.get() == {"n": 2}
    assert eapp.AsyncResult(r.id).get() == {"n": 2}  # found by id, as a view would
    with pytest.raises(ResultUnknown):
        eapp.AsyncResult("no-such-call").get()
    # the task got what a worker gets: decoded from the envelope (equal, but new objects)
    assert seen == [(when, Decimal("1.50"), ("a", "b"))] and seen[0][0] is not when
    with pytest.raises(SerializationError, match="args\\[0\\]"):
        record.delay(object(), Decimal(1), ())  # type: ignore[arg-type]
    assert len(seen) == 1  # the bad call never ran


def test_results_and_payloads_are_checked(eapp: TaskPipe) -> None:
    @eapp.task
    def make_set() -> Any:
        return object()

    @eapp.task
    def echo(data: bytes) -> int:
        return len(data)

    failed = make_set.delay()  # a result production cannot store is a failure, as in a worker
    assert failed.state == "failed"
    with pytest.raises(TaskFailed) as info:
        failed.get()
    assert info.value.exc_type == "SerializationError"
    eapp.max_payload = 1000
    with pytest.raises(PayloadTooLarge):
        echo.delay(b"x" * 2000)


def test_failures_retries_and_unknown_names(eapp: TaskPipe) -> None:
    calls: list[int] = []

    @eapp.task(retries=2)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return "ok"

    @eapp.task
    def boom() -> None:
        raise ValueError("bad")

    assert flaky.delay().get() == "ok" and len(calls) == 3
    r = boom.delay()
    with pytest.raises(TaskFailed, match="ValueError: bad"):
        r.get()
    assert isinstance(r.get(propagate=False), TaskFailed)
    with pytest.raises(UnknownTask):
        eapp.send("nobody.knows")
    with pytest.raises(ConfigError):
        boom.apply_async(colour="red")
    with pytest.raises(ConfigError, match="retries"):
        boom.apply_async(retries=-1)


def test_async_tasks_and_await(eapp: TaskPipe) -> None:
    @eapp.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert double.delay(4).get() == 8

    async def main() -> int:
        return await double.delay(5)  # eager inside a running loop too

    assert asyncio.run(main()) == 10


def test_clock_runs_delays_and_cron_in_order(eapp: TaskPipe) -> None:
    order: list[str] = []

    @eapp.task
    def note(what: str) -> str:
        order.append(f"{what}@{round(eapp.clock.now() - start)}")
        return what

    @eapp.cron("*/5 * * * *", args=("cron",))
    @eapp.task
    def tick(what: str) -> None:
        note(what)

    clock = eapp.clock
    now = clock.as_datetime()
    start = (
        now.replace(second=30, microsecond=0) + dt.timedelta(minutes=5 - now.minute % 5)
    ).timestamp()  # hh:m5:30, so the cron fires at +4.5 and +9.5 minutes
    clock.set(start)  # fires the cron entry's hh:m5:00 on the way
    assert [o.split("@")[0] for o in order] == ["cron"]
    order.clear()
    later = note.apply_async(("later",), delay="7m")
    eta = note.apply_async(("eta",), eta=clock.as_datetime() + dt.timedelta(minutes=2))
    gone = note.apply_async(("gone",), delay="1m")
    gone.retract()
    assert later.state == "delayed"
    with pytest.raises(ResultTimeout, match="advance"):
        later.get(timeout=10)
    ran = clock.advance("10m")
    assert later.get() == "later" and eta.get() == "eta"
    assert gone.state == "unknown" and "gone" not in str(order)
    names = [o.split("@")[0] for o in order]
    assert names.count("cron") == 2 and ran == 4
    times = [int(o.split("@")[1]) for o in order]
    assert times == sorted(times)  # everything ran at its own due time, in order
    assert list(zip(names, times)) == [("eta", 120), ("cron", 270), ("later", 420), ("cron", 570)]
    with pytest.raises(ConfigError):
        clock.set(start)  # never backwards


def test_eager_context_switches_an_existing_app() -> None:
    app = memory_app()

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with eager(app) as clock:
        assert add.delay(2, 3).get() == 5
        r = add.apply_async((1, 1), delay="1h")
        clock.advance("1h")
        assert r.get() == 2
    assert not app.eager
    with pytest.raises(ConfigError):
        app.clock  # noqa: B018 - only eager apps have one
    pending = add.delay(1, 2)  # back to publishing: nothing runs without a worker
    assert pending.state == "available"
    app.close()


def test_map_and_on_finish(eapp: TaskPipe) -> None:
    got: list[Any] = []

    @eapp.task
    def square(x: int) -> int:
        return x * x

    @eapp.task
    def store(value: int, where: str) -> str:
        got.append((value, where))
        return where

    assert [r.get() for r in square.map(range(4))] == [0, 1, 4, 9]
    square.apply_async((3,), on_finish=store.s("db"))
    square.apply_async((4,), on_finish=lambda value, result: got.append((value, result.id)))
    assert got[0] == (9, "db") and got[1][0] == 16
