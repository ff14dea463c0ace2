"""The task layer end to end: the app, ``@app.task``, publishing, custom ids, on_finish, async
tasks, Thoonk-native (raw) channels, bad input to the worker and the testing helpers.

Tests that touch the broker run on ``memory://``, those marked ``redis_smoke`` also on real
Redis (the ``broker_url`` fixture); tests that need a second process run on real Redis only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import burst

from taskpipe import (
    AsyncResult,
    BrokerURLError,
    ConfigError,
    SerializationError,
    Signature,
    Task,
    TaskFailed,
    TaskPipe,
    current_job,
)
from taskpipe.serialization import decode_envelope
from taskpipe.testing import memory_app, run_until_idle
from taskpipe.thoonk.thoonk import Thoonk

# the task layer on memory://; the redis_smoke tests also on real Redis (tests/conftest.py)
pytestmark = pytest.mark.task_layer

ROOT = Path(__file__).resolve().parent.parent


# helpers ---------------------------------------------------------------------------------------


def twin(app: TaskPipe, prefix: str) -> TaskPipe:
    """Another app on the same broker (memory:// brokers live in one Connection, so share it)."""
    if app.connection.is_memory:
        return TaskPipe(connection=app.connection, prefix=prefix)
    return TaskPipe(broker=app.broker_url, prefix=prefix)


# the app and its broker ------------------------------------------------------------------------
def test_broker_from_argument(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix)
    assert app.broker_url == broker_url
    assert app.connection.client.ping()
    app.close()


def test_broker_from_env_var(
    monkeypatch: pytest.MonkeyPatch, redis_server: Any, prefix: str
) -> None:
    monkeypatch.setenv("TASKPIPE_BROKER_URL", redis_server.url)
    app = TaskPipe(prefix=prefix)
    assert app.broker_url == redis_server.url
    assert app.connection.client.ping()
    # the argument wins over the environment
    other = TaskPipe(broker="memory://x", prefix=prefix)
    assert other.broker_url == "memory://x"
    app.close()
    other.close()


def test_broker_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKPIPE_BROKER_URL", raising=False)
    app = TaskPipe()  # connects lazily: no command is sent to port 6379 here
    assert app.broker_url == "redis://127.0.0.1:6379/0"
    assert (app.connection.info["host"], app.connection.info["port"]) == ("127.0.0.1", 6379)
    app.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "localhost:6379",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/db",
        "redis://:6379/0",
        "unix://",
    ],
)
def test_bad_broker_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrokerURLError):
        TaskPipe(broker=url)
    if url.strip():
        monkeypatch.setenv("TASKPIPE_BROKER_URL", url)
        with pytest.raises(BrokerURLError):
            TaskPipe()


@pytest.mark.redis_smoke
def test_prefix_isolation(app: TaskPipe, prefix: str) -> None:
    other = twin(app, prefix + "other:")
    ran: list[str] = []

    @app.task(name="iso.job")
    def job_a(x: int) -> int:
        ran.append("a")
        return x

    @other.task(name="iso.job")
    def job_b(x: int) -> int:
        ran.append("b")
        return x

    r = job_a.delay(1)
    assert other.channel().counts()["available"] == 0
    assert other.AsyncResult(r.id).state == "unknown"
    assert burst(other) == {}
    assert ran == []
    assert app.channel().counts()["available"] == 1
    burst(app)
    assert ran == ["a"] and r.get(timeout=5) == 1
    assert other.AsyncResult(r.id).state == "unknown"


# registering tasks -----------------------------------------------------------------------------
def test_task_decorator_bare_and_local_call(app: TaskPipe) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert isinstance(add, Task)
    assert add.name == f"{__name__}.test_task_decorator_bare_and_local_call.<locals>.add"
    assert add.__name__ == "add"  # type: ignore[attr-defined]  # set by functools.update_wrapper
    assert add.channel == "default" and add.options.priority is False
    assert app.get_task(add.name) is add
    assert add(2, 3) == 5  # runs here and now: nothing published
    assert app.channel().counts()["published_total"] == 0
    r = add.delay(2, 3)
    assert isinstance(r, AsyncResult) and r.channel == "default"
    envelope = decode_envelope(app.channel().get_item(r.id) or b"")
    assert (envelope.task, envelope.args, envelope.kwargs) == (add.name, (2, 3), {})
    burst(app)
    assert r.get(timeout=5) == 5


def test_task_decorator_options(app: TaskPipe) -> None:
    @app.task(
        name="opts.send_mail",
        channel="mail",
        priority=True,
        timeout="30s",
        retries=3,
        retry_backoff="2s",
        result_ttl="1h",
    )
    def send_mail(to: str) -> str:
        return f"sent to {to}"

    assert send_mail.name == "opts.send_mail" and app.tasks["opts.send_mail"] is send_mail
    o = send_mail.options
    assert (o.channel, o.priority, o.timeout, o.retries, o.retry_backoff, o.result_ttl) == (
        "mail",
        True,
        "30s",
        3,
        "2s",
        "1h",
    )
    assert send_mail.channel == "mail"
    r = send_mail.delay("ann@example.org")
    assert r.channel == "mail"
    assert app.channel("mail").counts()["available"] == 1
    assert app.channel().counts()["published_total"] == 0
    burst(app, ["mail"])
    assert r.get(timeout=5) == "sent to ann@example.org"
    assert 3_500_000 < (r.info().result_ttl_ms or 0) <= 3_600_000


def test_task_registration_errors(app: TaskPipe) -> None:
    @app.task(name="dup")
    def one() -> None: ...

    def two() -> None: ...

    with pytest.raises(ConfigError, match="already registered"):
        app.task(name="dup")(two)
    assert app.task(name="dup")(one.fn).fn is one.fn  # the same function again is fine
    with pytest.raises(ConfigError, match="bad task option"):
        app.task(colour="red")(two)
    with pytest.raises(ConfigError, match="channel="):
        app.task(raw=True)(two)
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(ConfigError, match="retries must be a non-negative int"):
            app.task(retries=bad)(two)
    with pytest.raises(ConfigError):
        TaskPipe(broker="memory://", retries=-1)
    with pytest.raises(ConfigError):
        TaskPipe(broker="memory://", serializer="pickle")


# publishing ------------------------------------------------------------------------------------
def test_apply_async_args_kwargs_and_channel(app: TaskPipe) -> None:
    @app.task
    def greet(name: str, *, punct: str = ".") -> str:
        return f"hello {name}{punct}"

    r1 = greet.apply_async(args=["ann"], kwargs={"punct": "!"})
    r2 = greet.apply_async(["bob"], channel="other")
    r3 = greet.apply_async(("cy",), {"punct": "?"}, id="greet-cy")
    assert r2.channel == "other" and r3.id == "greet-cy"
    assert app.channel("other").get_ids() == [r2.id]
    env = decode_envelope(app.channel().get_item(r1.id) or b"")
    assert env.args == ("ann",) and env.kwargs == {"punct": "!"}
    burst(app, ["default", "other"])
    assert [r.get(timeout=5) for r in (r1, r2, r3)] == ["hello ann!", "hello bob.", "hello cy?"]


def test_a_channel_name_must_be_a_str_without_nul(app: TaskPipe) -> None:
    # a NUL in a channel name was accepted, and the dependants' index (which separates channel
    # and id with NUL) then never released a dependant on it; a non-str name was a TypeError
    @app.task
    def one() -> int:
        return 1

    for bad in ("a\0b", 5, b"bytes"):
        with pytest.raises(ConfigError, match="channel"):
            one.apply_async(channel=bad)
        with pytest.raises(ConfigError, match="channel"):
            app.channel(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="channel"):
        app.jobs(channel=5)  # type: ignore[arg-type]
    assert one.apply_async(channel="é☃").channel == "é☃"  # unicode is fine
    # an empty default channel was a bare ValueError at the first publish, a non-str prefix a
    # TypeError
    for bad in ("", "a\0b", 5):
        with pytest.raises(ConfigError, match="channel"):
            TaskPipe(broker="memory://", default_channel=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prefix"):
        TaskPipe(broker="memory://", prefix=5)  # type: ignore[arg-type]


def test_a_task_name_with_nul_is_refused(app: TaskPipe) -> None:
    # it was registered and published; the per-task counters (``<task>\0<outcome>``) then
    # split it wrongly in task_breakdown / `taskpipe jobs tasks`
    def f() -> int:
        return 1

    with pytest.raises(ConfigError, match="task name"):
        app.task(name="a\0b")(f)
    with pytest.raises(ConfigError, match="channel"):
        app.task(name="t.f", channel="a\0b")(f)  # at registration, not at the first publish
    with pytest.raises(SerializationError, match="NUL"):
        app.send("a\0b")
    with pytest.raises(SerializationError, match="NUL"):
        app.send("a\0b", (1,), delay=1)
    assert app.channel().counts()["available"] + app.channel().counts()["delayed"] == 0


def test_apply_async_option_errors_write_nothing(app: TaskPipe) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(ConfigError, match="unknown publishing option"):
        noop.apply_async(bogus=3)  # (countdown= is Celery's alias of delay= since issue 15)
    with pytest.raises(ConfigError, match="job id"):
        noop.apply_async(id="a\0b")
    with pytest.raises(ConfigError, match="retries"):
        noop.apply_async(retries=-1)
    with pytest.raises(ConfigError, match="on_finish"):
        noop.apply_async(on_finish="not callable")
    assert app.channel().counts()["published_total"] == 0


def test_signatures(app: TaskPipe) -> None:
    @app.task(name="sig.join")
    def join(*parts: str, sep: str = "-") -> str:
        return sep.join(parts)

    sig = join.s("a", "b", sep="+")
    assert isinstance(sig, Signature)
    assert (sig.task, sig.args, sig.kwargs) == ("sig.join", ("a", "b"), {"sep": "+"})
    assert Signature.from_dict(sig.to_dict()) == sig
    r1 = sig.delay("c")  # extra args are appended
    r2 = sig.set(channel="side").apply_async(["z"], {"sep": "/"})
    r3 = app.signature("sig.join", "x", "y").delay()
    assert r2.channel == "side"
    burst(app, ["default", "side"])
    assert (r1.get(timeout=5), r2.get(timeout=5), r3.get(timeout=5)) == ("a+b+c", "a/b/z", "x-y")
    with pytest.raises(RuntimeError):
        Signature("sig.join").delay()


def test_send_from_producer_without_the_tasks(app: TaskPipe, prefix: str) -> None:
    @app.task(name="billing.charge")
    def charge(customer: str, cents: int) -> dict[str, Any]:
        return {"customer": customer, "cents": cents}

    producer = twin(app, prefix)  # same broker and prefix, no tasks registered
    assert producer.tasks == {}
    r = producer.send("billing.charge", ["c-1"], {"cents": 250})
    r2 = producer.send("billing.charge", ("c-2", 10), channel="billing")
    assert r2.channel == "billing"
    burst(app, ["default", "billing"])
    assert r.get(timeout=5) == {"customer": "c-1", "cents": 250}
    assert producer.AsyncResult(r2.id, channel="billing").get(timeout=5) == {
        "customer": "c-2",
        "cents": 10,
    }


@pytest.mark.timeout(60)
def test_send_to_a_worker_process(redis_server: Any, prefix: str, tmp_path: Path) -> None:
    """The producer has none of the worker's code; the worker is another process; the
    on_finish callable runs here, in the publishing process."""
    (tmp_path / "remote_tasks.py").write_text(
        textwrap.dedent("""
        import os
        from taskpipe import TaskPipe

        app = TaskPipe(broker=os.environ["TASKPIPE_BROKER_URL"], prefix=os.environ["TP_PREFIX"])

        @app.task(name="remote.mul")
        def mul(a, b):
            return {"product": a * b, "pid": os.getpid()}

        @app.task(name="remote.boom")
        def boom():
            raise KeyError("nope")
    """)
    )
    producer = TaskPipe(broker=redis_server.url, prefix=prefix)
    done = threading.Event()
    got: list[Any] = []

    def on_finish(value: Any, result: AsyncResult) -> None:
        got.append((value, result.id, os.getpid(), threading.current_thread().name))
        if len(got) == 2:
            done.set()

    r = producer.send("remote.mul", (6, 7), on_finish=on_finish)
    bad = producer.send("remote.boom", on_finish=on_finish)
    env = {
        **os.environ,
        "TASKPIPE_BROKER_URL": redis_server.url,
        "TP_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskpipe",
            "worker",
            "-A",
            "remote_tasks:app",
            "--burst",
            "-c",
            "2",
            "-l",
            "WARNING",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert proc.returncode == 0, proc.stderr
    value = r.get(timeout=10)
    assert value["product"] == 42 and value["pid"] != os.getpid()
    with pytest.raises(TaskFailed) as info:
        bad.get(timeout=10)
    assert info.value.exc_type == "KeyError"
    assert done.wait(10)
    by_id = {job_id: (v, pid, thread) for v, job_id, pid, thread in got}
    assert by_id[r.id][0] == value
    assert isinstance(by_id[bad.id][0], TaskFailed)
    assert {pid for _, pid, _ in by_id.values()} == {os.getpid()}
    producer.close()


# custom ids ------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.redis_smoke
def test_custom_id_is_idempotent_under_50_publishers(app: TaskPipe) -> None:
    @app.task(name="ids.once")
    def once(n: int) -> int:
        return n

    barrier = threading.Barrier(50)
    handles: list[AsyncResult] = []
    lock = threading.Lock()

    def publish(n: int) -> None:
        barrier.wait(10)
        h = once.apply_async([n], id="order-42")
        with lock:
            handles.append(h)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(handles) == 50 and {h.id for h in handles} == {"order-42"}
    counts = app.channel().counts()
    assert counts["published_total"] == 1 and counts["available"] == 1
    assert app.channel().get_ids() == ["order-42"]
    stats = burst(app)
    assert stats == {"finished": 1}
    assert len({h.get(timeout=5) for h in handles}) == 1  # every handle sees the one result


@pytest.mark.redis_smoke
def test_custom_id_after_finish_runs_again(app: TaskPipe) -> None:
    runs: list[int] = []

    @app.task(name="ids.again")
    def again(n: int) -> int:
        runs.append(n)
        return n * 10

    first = again.apply_async([1], id="nightly")
    assert again.apply_async([2], id="nightly").id == "nightly"  # pending: nothing added
    burst(app)
    assert runs == [1] and first.get(timeout=5) == 10
    second = again.apply_async([3], id="nightly")  # finished: the id is free again
    assert second.state == "available"
    with pytest.raises(TimeoutError):  # the earlier run's result is not mistaken for this one's
        second.get(timeout=0.05)
    assert app.channel().counts()["published_total"] == 2
    burst(app)
    assert runs == [1, 3]
    assert second.get(timeout=5) == 30
    assert app.AsyncResult("nightly").get(timeout=5) == 30  # the new result replaced the old


# on_finish -------------------------------------------------------------------------------------
def test_on_finish_callable(app: TaskPipe) -> None:
    @app.task(name="cb.div")
    def div(a: int, b: int) -> float:
        return a / b

    got: dict[str, tuple[Any, str]] = {}
    both = threading.Event()

    def callback(value: Any, result: AsyncResult) -> None:
        got[result.id] = (value, threading.current_thread().name)
        if len(got) == 2:
            both.set()

    ok = div.apply_async([6, 3], on_finish=callback)
    bad = div.apply_async([1, 0], on_finish=callback)
    assert app.finish_watcher.pending() == 2
    burst(app)
    assert both.wait(10)
    assert got[ok.id] == (2.0, "taskpipe-on-finish")
    err, thread = got[bad.id]
    assert isinstance(err, TaskFailed) and err.exc_type == "ZeroDivisionError"
    assert thread == "taskpipe-on-finish"
    assert app.finish_watcher.pending() == 0


def test_on_finish_callable_gets_an_unstored_result(app: TaskPipe) -> None:
    """With result_ttl=0 nothing is stored, but the finish message carries the value."""

    @app.task(name="cb.unstored", result_ttl=0)
    def unstored(x: int) -> int:
        return x + 1

    got: list[Any] = []
    fired = threading.Event()

    def callback(value: Any, result: AsyncResult) -> None:
        got.append(value)
        fired.set()

    r = unstored.apply_async([41], on_finish=callback)
    burst(app)
    assert fired.wait(10)
    assert got == [42]
    assert app.AsyncResult(r.id).state == "finished"


@pytest.mark.redis_smoke
def test_on_finish_signature(app: TaskPipe) -> None:
    @app.task(name="cb.size")
    def size(text: str) -> int:
        if not text:
            raise ValueError("empty")
        return len(text)

    @app.task(name="cb.store")
    def store(n: int, where: str) -> str:
        return f"{n}@{where}"

    r = size.apply_async(["hello"], on_finish=store.s("bucket"))
    r_side = size.apply_async(["hi"], on_finish=store.s("b2").set(channel="side"))
    r_bad = size.apply_async([""], on_finish=store.s("never"))
    burst(app, ["default"])  # runs the jobs, and the follow-up put on "default"
    assert (r.get(timeout=5), r_side.get(timeout=5)) == (5, 2)
    assert app.AsyncResult(f"{r.id}.on_finish").get(timeout=5) == "5@bucket"
    # enqueued by the finish step itself, with the result prepended to the signature's args
    side = app.AsyncResult(f"{r_side.id}.on_finish", channel="side")
    assert side.state == "available"
    env = decode_envelope(app.channel("side").get_item(side.id) or b"")
    assert (env.task, env.args, env.kwargs) == ("cb.store", (2, "b2"), {})
    burst(app, ["side"])
    assert side.get(timeout=5) == "2@b2"
    # a failed job enqueues no follow-up
    with pytest.raises(TaskFailed):
        r_bad.get(timeout=5)
    assert app.AsyncResult(f"{r_bad.id}.on_finish").state == "unknown"


# async tasks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["thread", "async"])
def test_async_tasks(app: TaskPipe, pool: str) -> None:
    @app.task(name="aio.fetch")
    async def fetch(n: int) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        job = current_job()
        return {"n": n, "job": job.id if job else None}

    @app.task(name="aio.slow", timeout="100ms")
    async def slow() -> None:
        await asyncio.sleep(30)

    @app.task(name="aio.sync")
    def plain(n: int) -> int:
        return -n

    assert fetch.is_async and not plain.is_async
    assert asyncio.run(fetch(1)) == {"n": 1, "job": None}  # calling it runs it here
    rs = [fetch.delay(i) for i in range(5)]
    timed_out = slow.delay()
    sync = plain.delay(4)
    burst(app, pool=pool)
    assert [r.get(timeout=5) for r in rs] == [{"n": i, "job": r.id} for i, r in enumerate(rs)]
    assert sync.get(timeout=5) == -4
    with pytest.raises(TaskFailed) as info:
        timed_out.get(timeout=5)
    assert info.value.exc_type == "JobTimeout"


# raw (Thoonk-native) channels ------------------------------------------------------------------
@pytest.mark.redis_smoke
def test_raw_channel_interoperates_with_plain_thoonk(app: TaskPipe, prefix: str) -> None:
    seen: list[bytes] = []

    @app.task(raw=True, channel="legacy")
    def legacy(item: bytes) -> bytes:
        seen.append(item)
        return item.upper() + b"\0tail"

    assert app.raw_channels["legacy"] is legacy
    # a producer that knows nothing of taskpipe's envelope, as thoonk.py would write
    plain = Thoonk(connection=app.connection, prefix=prefix).job("legacy")
    job_id = plain.put(b"resize:cat.png")
    sub = app.connection.new_client().pubsub(ignore_subscribe_messages=True)
    sub.subscribe(f"{prefix}job.finish:legacy")
    try:
        assert burst(app, ["legacy"]) == {"finished": 1}
        message = None
        for _ in range(50):
            message = sub.get_message(timeout=0.1)
            if message is not None:
                break
        assert message is not None
        assert message["data"] == job_id.encode() + b"\0RESIZE:CAT.PNG\0tail"
    finally:
        sub.close()
    assert seen == [b"resize:cat.png"]
    assert plain.get_result(job_id) == (b"resize:cat.png", b"RESIZE:CAT.PNG\0tail")
    assert app.AsyncResult(job_id, channel="legacy").get(timeout=1) == b"RESIZE:CAT.PNG\0tail"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (5, None),  # was a bare TypeError: 'int' object is not iterable
        ("abc", None),  # was published as three arguments 'a', 'b', 'c'
        (b"ab", None),
        ({"a": 1}, None),  # a dict's keys became the arguments
        ((), 5),  # was a bare TypeError from dict(5)
        ((), [("a", 1)]),
    ],
)
def test_send_refuses_args_and_kwargs_of_the_wrong_shape(
    app: TaskPipe, args: Any, kwargs: Any
) -> None:
    @app.task(name="shape.t")
    def t(*a: Any, **k: Any) -> None:
        return None

    for publish in (lambda: app.send("shape.t", args, kwargs), lambda: t.apply_async(args, kwargs)):
        with pytest.raises(SerializationError, match="must be a"):
            publish()
    assert app.thoonk.client.hlen(app.channel().keys.items) == 0  # nothing was published
    assert app.send("shape.t", iter([1, 2]), {"k": 3}).id  # other iterables still work
    assert t.apply_async([1, 2]).id
    app.eager = True  # test mode checks the same way
    try:
        with pytest.raises(SerializationError, match="must be a"):
            t.apply_async(args, kwargs)
        assert t.apply_async(iter([1])).get(timeout=1) is None
    finally:
        app.eager = False


# bad input to the worker -----------------------------------------------------------------------
@pytest.mark.redis_smoke
def test_bad_payload_and_unknown_task_are_stalled(app: TaskPipe) -> None:
    @app.task(name="good.one")
    def good() -> str:
        return "ok"

    ch = app.channel("default")
    garbage = ch.put(b"garbage")
    unknown = app.send("missing.task", (1, 2))
    after = good.delay()
    stats = burst(app, concurrency=1)
    assert stats == {"stalled": 2, "finished": 1}
    assert after.get(timeout=5) == "ok"  # the worker went on with the next job
    assert sorted(ch.stalled_ids()) == sorted([garbage, unknown.id])
    assert ch.stall_reason(garbage).startswith("bad_payload: ")
    assert ch.stall_reason(unknown.id) == "unknown_task: missing.task"
    assert ch.get_item(garbage) == b"garbage"  # raw bytes kept for inspection
    assert decode_envelope(ch.get_item(unknown.id) or b"").args == (1, 2)
    assert unknown.state == "stalled"

    # after the fix (the task is deployed) the stalled job is retried and runs
    @app.task(name="missing.task")
    def now_present(a: int, b: int) -> int:
        return a + b

    ch.retry(unknown.id)
    burst(app)
    assert unknown.get(timeout=5) == 3


# testing helpers -------------------------------------------------------------------------------
def test_memory_app_and_run_until_idle() -> None:
    app = memory_app(retry_backoff="10ms")
    other = memory_app()
    assert app.broker_url.startswith("memory://") and app.broker_url != other.broker_url
    tries: list[int] = []

    @app.task(retries=2)
    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise RuntimeError("not yet")
        return "done"

    @app.task(channel="high")
    def add(a: int, b: int) -> int:
        return a + b

    r, s = flaky.delay(), add.delay(2, 3)
    assert other.channel().counts()["available"] == 0  # a broker of its own
    stats = run_until_idle(app)  # channels of every task; due retries included
    assert stats == {"retried": 2, "finished": 2}
    assert (r.get(timeout=1), s.get(timeout=1)) == ("done", 5)
    assert run_until_idle(app) == {}
    app.close()
    other.close()
