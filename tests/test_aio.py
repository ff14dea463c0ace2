"""``await result`` / ``result.aget()`` on redis.asyncio (real Redis and memory://): no thread
per wait, the same results and errors as ``get()``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from taskpipe import AsyncResult, ResultExpired, ResultTimeout, ResultUnknown, TaskFailed, TaskPipe
from taskpipe.testing import run_until_idle


@pytest.fixture
def no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("aget() used a thread")

    monkeypatch.setattr(asyncio, "to_thread", refuse)


def _run_worker_in_thread(app: TaskPipe) -> threading.Thread:
    thread = threading.Thread(target=run_until_idle, args=(app,), daemon=True)
    thread.start()
    return thread


def test_many_awaits_share_the_loop(app: TaskPipe, no_threads: None) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def boom() -> None:
        raise ValueError("bad")

    async def main() -> None:
        results = [square.delay(i) for i in range(50)]
        failed = boom.delay()
        waits = [asyncio.ensure_future(r.aget(timeout=30)) for r in results]
        before = set(threading.enumerate())
        await asyncio.sleep(0)  # let the waits subscribe
        # no thread started (one left over from an earlier test may end meanwhile)
        assert set(threading.enumerate()) <= before
        worker = _run_worker_in_thread(app)
        assert await asyncio.gather(*waits) == [i * i for i in range(50)]
        assert await results[7] == 49  # awaiting the handle itself
        with pytest.raises(TaskFailed) as info:
            await failed.aget(timeout=30)
        assert info.value.exc_type == "ValueError"
        assert isinstance(await failed.aget(timeout=1, propagate=False), TaskFailed)
        worker.join(30)
        await app.aclose()

    asyncio.run(main())


def test_errors_match_get(app: TaskPipe, no_threads: None) -> None:
    @app.task(result_ttl=0)
    def unstored() -> int:
        return 1

    @app.task
    def later() -> int:
        return 2

    async def main() -> None:
        with pytest.raises(ResultUnknown):
            await app.AsyncResult("no-such-job").aget(timeout=0.05)
        pending = later.delay()
        with pytest.raises(ResultTimeout):
            await pending.aget(timeout=0.05)
        gone = unstored.delay()
        run_until_idle(app)
        with pytest.raises(ResultExpired):
            await gone.aget(timeout=1)
        assert await pending.aget(timeout=1) == 2
        await app.aclose()

    asyncio.run(main())


def test_loops_get_their_own_client(app: TaskPipe) -> None:
    @app.task
    def one() -> int:
        return 1

    r = one.delay()
    run_until_idle(app)

    async def read(handle: AsyncResult[int]) -> int:
        try:
            return await handle.aget(timeout=5)
        finally:
            await app.aclose()

    assert asyncio.run(read(r)) == 1
    assert asyncio.run(read(app.AsyncResult(r.id))) == 1  # a second, new loop
