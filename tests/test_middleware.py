"""Middleware hooks (issue 16 item 5): each fires once per event, a raising hook loses nothing.

The run-side hooks are checked with real ``taskpipe worker`` processes (thread and process
pools): the app module's middleware counts every hook call in Redis, per job and hook, and a
second middleware raises in every hook.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from worker_proc import AppProcesses

from taskpipe import Middleware, TaskFailed, TaskPipe
from taskpipe.errors import ConfigError
from taskpipe.middleware import MiddlewareChain
from taskpipe.testing import run_until_idle, running_worker

APP_SOURCE = '''
import os, time
import redis
from taskpipe import TaskPipe, Middleware, current_job

app = TaskPipe(broker=os.environ["TP_TEST_BROKER"], prefix=os.environ["TP_TEST_PREFIX"], lease="10s")
r = redis.Redis.from_url(os.environ["TP_TEST_BROKER"])
P = os.environ["TP_TEST_PREFIX"]


class Count(Middleware):
    def _hit(self, hook, key):
        r.hincrby(P + "hooks:" + hook, key, 1)

    def before_publish(self, message):
        message.headers["origin"] = "test"

    def before_run(self, job):
        self._hit("before_run", job.id)
        if job.headers.get("origin") == "test":
            self._hit("headers", job.id)

    def after_run(self, job, outcome):
        self._hit("after_run", job.id)
        self._hit("after_run:" + outcome.kind, job.id)

    def on_failure(self, job, exc):
        self._hit("on_failure", job.id)

    def on_retry(self, job, exc, delay):
        self._hit("on_retry", job.id)

    def on_timeout(self, job, exc):
        self._hit("on_timeout", job.id)

    def worker_start(self, worker):
        self._hit("worker_start", str(os.getpid()))

    def worker_stop(self, worker):
        self._hit("worker_stop", str(os.getpid()))


class Broken(Middleware):
    """Every hook raises: the jobs must come out exactly as without it."""

    def _boom(self, *args):
        raise RuntimeError("broken middleware")

    before_publish = after_publish = before_run = after_run = _boom
    on_failure = on_retry = on_timeout = worker_start = worker_stop = _boom


app.use(Broken())
app.use(Count())
app.use(Broken())


@app.task
def ok(x):
    return x * 2


@app.task(retries=1, retry_backoff=0)
def flaky():
    if current_job().attempts == 0:
        raise ValueError("first run fails")
    return "ok"


@app.task
def bad():
    raise ValueError("always")


@app.task(timeout="0.3s")
def slow():
    for _ in range(400):
        time.sleep(0.05)
'''

RUN_HOOKS = (
    "before_run",
    "after_run",
    "on_failure",
    "on_retry",
    "on_timeout",
    "headers",
    "after_run:success",
    "after_run:retry",
    "after_run:failure",
)


class HookApp(AppProcesses):
    """The module above, loaded here (to publish) and by real worker processes."""

    def __init__(self, tmp_path: Path, url: str, prefix: str, monkeypatch: pytest.MonkeyPatch):
        super().__init__(
            APP_SOURCE,
            tmp_path,
            url,
            prefix,
            monkeypatch,
            tag="tpmw",
            worker_args=("--dead-after", "0"),
        )

    def hooks(self, hook: str) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(f"{self.prefix}hooks:{hook}")  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}


@pytest.fixture
def hook_app(
    tmp_path: Path, redis_server: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HookApp]:
    h = HookApp(tmp_path, redis_server.url, prefix, monkeypatch)
    yield h
    h.close()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_every_run_hook_fires_once_per_event_in_real_workers(hook_app: HookApp, pool: str) -> None:
    app = hook_app.app
    w1 = hook_app.worker("--pool", pool, "-c", "2")
    w2 = hook_app.worker("--pool", pool, "-c", "2")
    oks = [app.tasks[f"{hook_app.app_path.split(':')[0]}.ok"].delay(i) for i in range(10)]
    mod = hook_app.app_path.split(":")[0]
    flaky = app.send(f"{mod}.flaky")
    bad = app.send(f"{mod}.bad")
    slow = app.send(f"{mod}.slow")
    assert [r.get(timeout=60) for r in oks] == [i * 2 for i in range(10)]
    assert flaky.get(timeout=60) == "ok"
    with pytest.raises(TaskFailed, match="always"):
        bad.get(timeout=60)
    with pytest.raises(TaskFailed, match="JobTimeout"):
        slow.get(timeout=60)
    # the hooks of the last run may land just after its outcome: wait for after_run of all
    wait_for(lambda: len(hook_app.hooks("after_run")) == 13, 30, "after_run of every job")
    counts = {hook: hook_app.hooks(hook) for hook in RUN_HOOKS}
    for r in oks:
        assert {h: c.get(r.id, 0) for h, c in counts.items()} == {
            "before_run": 1,
            "after_run": 1,
            "headers": 1,
            "after_run:success": 1,
            "on_failure": 0,
            "on_retry": 0,
            "on_timeout": 0,
            "after_run:retry": 0,
            "after_run:failure": 0,
        }
    assert {h: c.get(flaky.id, 0) for h, c in counts.items()} == {
        "before_run": 2,
        "after_run": 2,
        "headers": 2,
        "after_run:success": 1,
        "on_retry": 1,
        "after_run:retry": 1,
        "on_failure": 0,
        "on_timeout": 0,
        "after_run:failure": 0,
    }
    assert {h: c.get(bad.id, 0) for h, c in counts.items()} == {
        "before_run": 1,
        "after_run": 1,
        "headers": 1,
        "on_failure": 1,
        "after_run:failure": 1,
        "on_retry": 0,
        "on_timeout": 0,
        "after_run:success": 0,
        "after_run:retry": 0,
    }
    assert {h: c.get(slow.id, 0) for h, c in counts.items()} == {
        "before_run": 1,
        "after_run": 1,
        "headers": 1,
        "on_timeout": 1,
        "on_failure": 1,
        "after_run:failure": 1,
        "on_retry": 0,
        "after_run:success": 0,
        "after_run:retry": 0,
    }
    # nothing left behind: every job finished once, none stalled or pending
    counts_now = app.channel().counts()
    assert counts_now["available"] == counts_now["claimed"] == counts_now["stalled"] == 0
    assert hook_app.hooks("worker_stop") == {}
    for w in (w1, w2):
        assert w.stop() == 0
    pids = {str(w1.pid), str(w2.pid)}
    assert hook_app.hooks("worker_start") == {p: 1 for p in pids}
    assert hook_app.hooks("worker_stop") == {p: 1 for p in pids}
    assert "broken middleware" in w1.output() + w2.output()  # logged, not swallowed silently


def test_a_raising_before_publish_still_publishes_once(app: TaskPipe) -> None:
    calls: list[str] = []

    class Boom(Middleware):
        def before_publish(self, message: Any) -> None:
            calls.append("before")
            raise RuntimeError("no")

        def after_publish(self, message: Any, result: Any) -> None:
            calls.append("after")
            raise RuntimeError("no")

    app.use(Boom())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    r = add.delay(2, 3)
    assert calls == ["before", "after"]
    assert app.channel().counts()["available"] == 1
    run_until_idle(app)
    assert r.get(timeout=5) == 5


def test_publish_hooks_fire_once_per_message_and_headers_reach_the_run(app: TaskPipe) -> None:
    published: list[tuple[str, str | None, str | None]] = []
    ran: list[tuple[str, dict[str, str]]] = []

    class Tag(Middleware):
        def before_publish(self, message: Any) -> None:
            message.headers["who"] = f"pub-{message.args}"
            message.state["seen"] = True

        def after_publish(self, message: Any, result: Any) -> None:
            assert message.state["seen"] and message.id == result.id
            published.append((message.task, message.id, message.channel))

        def before_run(self, job: Any) -> None:
            ran.append((job.id, dict(job.headers)))

    app.use(Tag())

    @app.task(channel="mw")
    def echo(x: int) -> int:
        return x

    single = echo.delay(1)
    mapped = echo.map([2, 3, 4])
    many = app.publish_many([echo.s(5), echo.s(6).set(delay=0)])
    sent = app.send(echo.name, (7,), id="fixed-7")
    ids = [r.id for r in [single, *mapped, *many, sent]]
    assert [p[1] for p in published] == ids
    assert all(p == (echo.name, p[1], "mw") for p in published)
    run_until_idle(app, ["mw"])
    assert sorted(ran) == sorted((i, {"who": f"pub-({x},)"}) for i, x in zip(ids, range(1, 8)))
    assert [app.AsyncResult(i, "mw").get(timeout=5) for i in ids] == list(range(1, 8))


def test_headers_set_by_hand_reach_the_run(app: TaskPipe) -> None:
    # docs/extending.md: apply_async(headers={...}) sets them by hand; the Celery-alias table
    # refused headers= as "a Celery option taskpipe does not take"
    ran: list[dict[str, str]] = []

    class Read(Middleware):
        def before_run(self, job: Any) -> None:
            ran.append(dict(job.headers))

    app.use(Read())

    @app.task(channel="mw")
    def echo(x: int) -> int:
        return x

    by_hand = echo.apply_async((1,), headers={"traceparent": "00-abc-def-01"})
    via_send = app.send(echo.name, (2,), headers={"tenant": "t1"})
    run_until_idle(app, ["mw"])
    assert sorted(ran, key=str) == [{"tenant": "t1"}, {"traceparent": "00-abc-def-01"}]
    assert by_hand.get(timeout=5) == 1 and via_send.get(timeout=5) == 2


def test_async_pool_fires_the_same_hooks(app: TaskPipe) -> None:
    seen: list[str] = []

    class Rec(Middleware):
        def before_run(self, job: Any) -> None:
            seen.append(f"before:{job.name}")

        def after_run(self, job: Any, outcome: Any) -> None:
            seen.append(f"after:{outcome.kind}")

        def on_failure(self, job: Any, exc: BaseException) -> None:
            seen.append(f"failure:{type(exc).__name__}")

    app.use(Rec())

    @app.task(name="co")
    async def co(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    with running_worker(app, pool="async"):
        assert co.delay(3).get(timeout=10) == 3
        with pytest.raises(TaskFailed):
            co.delay(-1).get(timeout=10)
    assert seen == [
        "before:co",
        "after:success",
        "before:co",
        "failure:ValueError",
        "after:failure",
    ]


def test_chain_rules(caplog: pytest.LogCaptureFixture) -> None:
    chain = MiddlewareChain()
    with pytest.raises(ConfigError, match="instance"):
        chain.add(Middleware)
    with pytest.raises(ConfigError, match="none of the middleware hooks"):
        chain.add(object())

    class Partial:  # a plain object with a subset of the hooks
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def on_retry(self, job: Any, exc: Any, delay: float) -> None:
            self.calls.append(delay)

    class Raises:
        def on_retry(self, job: Any, exc: Any, delay: float) -> None:
            raise KeyError("x")

    p = Partial()
    chain.add(Raises())
    chain.add(p)
    assert chain.has("on_retry") and not chain.has("before_run")
    with caplog.at_level(logging.ERROR, logger="taskpipe.middleware"):
        chain.call("on_retry", None, None, 1.5)
        chain.call("before_run", None)  # nobody has it: nothing happens
    assert p.calls == [1.5]
    assert "failed in on_retry" in caplog.text
    chain.remove(p)
    chain.call("on_retry", None, None, 2.0)
    assert p.calls == [1.5] and len(chain) == 1
    base = Middleware()  # every hook of the base class is a no-op
    for hook in ("worker_start", "worker_stop"):
        assert getattr(base, hook)(None) is None


def test_use_takes_middleware_or_a_plugin_function(app: TaskPipe) -> None:
    got: list[Any] = []
    assert app.use(lambda a: got.append(a)) is not None
    assert got == [app]

    class Plugin:  # Kinetik's plugin object: handle(app)
        def handle(self, a: TaskPipe) -> None:
            got.append(("handled", a))

    plugin = Plugin()
    assert app.use(plugin) is plugin and got[-1] == ("handled", app)
    mw = Middleware()
    assert app.use(mw) is mw and list(app.middleware) == [mw]
    with pytest.raises(ConfigError):
        app.use(42)
    with pytest.raises(ConfigError, match="headers"):
        app.send("anything", (), headers=["not", "a", "dict"])
