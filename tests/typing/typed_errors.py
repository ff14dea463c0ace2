"""Each line marked ``# E: <code>`` must be reported by mypy with that error code (and nothing
else may be). tests/test_typing.py checks both ways."""

from __future__ import annotations

from taskpipe import TaskPipe

app = TaskPipe(broker="memory://typing")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(channel="high")
def greet(name: str, *, shout: bool = False) -> str:
    return name


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


add.delay(1, "x")  # E: arg-type
add.delay(1)  # E: call-arg
add.delay(1, 2, 3)  # E: call-arg
greet.delay("x", loud=True)  # E: call-arg
greet.delay(name=3)  # E: arg-type
fetch.delay(b"u")  # E: arg-type
wrong: str = add.delay(1, 2).get()  # E: assignment
also_wrong: int = greet.delay("x").get(timeout=1)  # E: assignment
add("1", 2)  # E: arg-type


async def awaited() -> None:
    bad: str = await add.delay(1, 2)  # E: assignment
    print(bad)
