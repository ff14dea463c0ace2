"""Must pass ``mypy --strict``: typed tasks keep their signatures and result types."""

from __future__ import annotations

from taskpipe import AsyncResult, TaskPipe

app = TaskPipe(broker="memory://typing")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(channel="high", retries=2)
def greet(name: str, *, shout: bool = False) -> str:
    return name.upper() if shout else name


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


def use() -> None:
    r: AsyncResult[int] = add.delay(1, 2)
    total: int = r.get(timeout=1) + 1
    s: str = greet.delay("x", shout=True).get(timeout=1)
    b: bytes = fetch.delay("http://x").get(timeout=1)
    direct: int = add(1, 2)
    raw_any = app.send("anything", args=(1, "x", None))  # by name: untyped, anything goes
    print(total, s, b, direct, raw_any)
    on_done = add.s(1)  # a partial signature (the other argument comes later)
    print(on_done)


async def use_async() -> None:
    value: int = await add.delay(1, 2)
    again: int = await add.delay(3, 4).aget(timeout=5)
    fetched: bytes = await fetch.delay("u")
    coro_result: bytes = await fetch("u")  # calling an async task here gives its coroutine
    print(value, again, fetched, coro_result)
