"""Abort a running job (issue 15 item 3), with real worker processes on real Redis: in each pool
type the task's code actually stops, the job ends ``aborted`` at once (lease released), and it
never runs again. Bad input (a finished, pending or unknown job) gets a typed error.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from polling import wait_for
from redis_server import RedisServer
from worker_helpers import burst, worker_running
from worker_proc import AppProcesses, WorkerProcess

import taskpipe.cli.admin  # noqa: F401 - registers the jobs commands
from taskpipe import ConfigError, JobNotFound, TaskFailed, TaskPipe, WrongJobState
from taskpipe.cli import cli

pytestmark = pytest.mark.timeout(90)

APP_SOURCE = """
import asyncio
import os
import time

import redis

from taskpipe import JobAborted, TaskPipe, current_job

BROKER = os.environ["TP_TEST_BROKER"]
PREFIX = os.environ["TP_TEST_PREFIX"]
app = TaskPipe("aborttest", broker=BROKER, prefix=PREFIX, lease="2s")
r = redis.Redis.from_url(BROKER)


def _start():
    job = current_job()
    r.incr(PREFIX + "runs:" + job.id)
    r.set(PREFIX + "pid:" + job.id, os.getpid())
    return job


@app.task(name="coop")
def coop():
    job = _start()
    try:
        for _ in range(6000):
            job.check_abort()
            time.sleep(0.01)
    except JobAborted:
        r.set(PREFIX + "stopped:" + job.id, 1)
        raise
    r.set(PREFIX + "after:" + job.id, 1)


@app.task(name="stubborn")
def stubborn():
    job = _start()
    time.sleep(60)  # never checks: the process pool terminates its child
    r.set(PREFIX + "after:" + job.id, 1)


@app.task(name="coro")
async def coro():
    job = _start()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        r.set(PREFIX + "stopped:" + job.id, 1)
        raise
    r.set(PREFIX + "after:" + job.id, 1)
"""


class Env(AppProcesses):
    """The module above, loaded here and run by real worker processes."""

    def __init__(self, tmp: Path, url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(APP_SOURCE, tmp, url, prefix, monkeypatch, tag="tpab")


@pytest.fixture
def env(
    tmp_path: Path, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    e = Env(tmp_path, redis_server.url, prefix, monkeypatch)
    yield e
    e.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _abort_and_check(env: Env, task: str, *worker_args: str) -> tuple[Any, int, WorkerProcess]:
    job = env.app.send(task)
    w = env.worker("-c", "2", *worker_args)
    wait_for(lambda: env.get("pid", job.id) is not None, what="the task to start")
    assert job.state == "claimed"
    job.abort(by="the test")
    # ended at once, lease released: no longer claimed, never queued again
    assert job.state == "aborted"
    counts = env.app.channel().counts()
    assert counts["claimed"] == counts["available"] == counts["delayed"] == 0, counts
    with pytest.raises(TaskFailed, match="aborted by the test") as info:
        job.get(timeout=5)
    assert info.value.exc_type == "JobAborted"
    who, when = job.aborted_by() or ("", 0.0)
    assert who == "the test" and when > 0
    return job, int(env.get("pid", job.id) or 0), w


def _stop(env: Env, w: WorkerProcess, job: Any) -> None:
    w.send(signal.SIGTERM)
    assert w.wait(30) == 0, w.output()
    assert env.get("after", job.id) is None  # the code after the abort point never ran
    assert env.get("runs", job.id) == 1  # never run again
    assert "lease" not in "".join(w.lines(job.id, "refused")), w.output()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_abort_cooperative_task(env: Env, pool: str) -> None:
    job, _, w = _abort_and_check(env, "coop", "--pool", pool)
    wait_for(lambda: env.get("stopped", job.id) == 1, what="the task to see the abort")
    _stop(env, w, job)


def test_abort_async_task_is_cancelled(env: Env) -> None:
    job, _, w = _abort_and_check(env, "coro", "--pool", "async")
    wait_for(lambda: env.get("stopped", job.id) == 1, what="the coroutine to be cancelled")
    _stop(env, w, job)


def test_abort_process_pool_terminates_a_stubborn_child(env: Env) -> None:
    job, pid, w = _abort_and_check(env, "stubborn", "--pool", "process")
    wait_for(lambda: not _pid_alive(pid), what="the child to be terminated")
    wait_for(lambda: "terminated" in w.output(), what="the worker to log it")
    _stop(env, w, job)


def test_cli_abort_and_bad_input(env: Env) -> None:
    job = env.app.send("coop")
    # the CLI is what is tested: the job runs in a worker in this process (the real worker
    # processes are the tests above)
    with worker_running(env.app, concurrency=1):
        wait_for(lambda: env.get("pid", job.id) is not None, what="the task to start")
        run = CliRunner().invoke(
            cli,
            ["jobs", "abort", job.id, "--json", "--by", "ops"],
            env={"TASKPIPE_BROKER_URL": env.url, "TASKPIPE_PREFIX": env.prefix},
            catch_exceptions=False,
        )
        assert run.exit_code == 0, run.output
        assert json.loads(run.stdout)["state"] == "aborted"
        assert job.aborted_by()[0] == "ops"  # type: ignore[index]
        wait_for(lambda: env.get("stopped", job.id) == 1, what="the task to stop")
        with pytest.raises(WrongJobState, match="aborted"):
            job.abort()  # finished (aborted) already
        again = CliRunner().invoke(
            cli,
            ["jobs", "abort", job.id],
            env={"TASKPIPE_BROKER_URL": env.url, "TASKPIPE_PREFIX": env.prefix},
        )
        assert again.exit_code != 0
    assert env.get("after", job.id) is None and env.get("runs", job.id) == 1


@pytest.mark.parametrize("broker_url", ["redis", "memory"], indirect=True)
def test_abort_bad_input_is_typed_and_changes_nothing(app: TaskPipe) -> None:
    @app.task(name="add")
    def add(a: int) -> int:
        return a

    done = add.delay(1)
    burst(app)
    pending = add.delay(2)
    before = app.channel().counts()
    with pytest.raises(WrongJobState, match="finished"):
        done.abort()
    with pytest.raises(WrongJobState, match="available"):
        pending.abort()
    with pytest.raises(JobNotFound):
        app.AsyncResult("no-such-job").abort()
    assert app.channel().counts() == before
    assert done.get(timeout=5) == 1 and pending.state == "available"


@pytest.mark.parametrize("broker_url", ["redis", "memory"], indirect=True)
def test_abort_by_must_be_a_str_without_nul(app: TaskPipe) -> None:
    # by="a\0b" aborted the job, then aborted_by() raised a bare ValueError (who and when are
    # stored NUL-separated); by=<not a str> was a BrokerError wrapping redis-py's DataError
    @app.task(name="add")
    def add(a: int) -> int:
        return a

    job = add.delay(1)
    claimed = app.channel().get(timeout=5)  # claimed as a worker would, never finished
    assert claimed is not None and claimed[0] == job.id and job.state == "claimed"
    for bad in ("ops\0team", 5, b"ops"):
        with pytest.raises(ConfigError, match="by"):
            job.abort(by=bad)  # type: ignore[arg-type]
    assert job.state == "claimed" and job.aborted_by() is None  # nothing changed
    job.abort(by="ops")
    assert job.aborted_by()[0] == "ops"  # type: ignore[index]


@pytest.mark.parametrize("broker_url", ["redis", "memory"], indirect=True)
def test_abort_in_thread_worker_releases_dependants(app: TaskPipe) -> None:
    """An aborted parent counts as failed for its dependants (released in the same step)."""
    import threading

    from worker_helpers import worker_running

    from taskpipe import current_job

    started = threading.Event()

    @app.task(name="loop")
    def loop() -> None:
        job = current_job()
        assert job is not None
        started.set()
        for _ in range(3000):
            job.check_abort()
            threading.Event().wait(0.01)

    @app.task(name="after")
    def after(*args: Any) -> str:
        return "ran"

    parent = loop.delay()
    kid = after.apply_async(depends_on=[parent])
    tolerant = after.apply_async(depends_on=[parent], allow_failure=True)
    with worker_running(app) as w:
        assert started.wait(10)
        parent.abort()
        with pytest.raises(TaskFailed, match="JobAborted"):
            kid.get(timeout=10)
        assert tolerant.get(timeout=10) == "ran"
        wait_for(lambda: w.writer.stats.get("aborted") == 1, what="the worker to count it")
    assert parent.state == "aborted"


@pytest.mark.parametrize("broker_url", ["redis", "memory"], indirect=True)
def test_aborted_prefetched_job_never_starts(app: TaskPipe) -> None:
    import threading

    from worker_helpers import worker_running

    from taskpipe import current_job

    started: list[str] = []
    first_running = threading.Event()

    @app.task(name="loop2")
    def loop2(tag: str) -> None:
        job = current_job()
        assert job is not None
        started.append(tag)
        first_running.set()
        for _ in range(3000):
            job.check_abort()
            threading.Event().wait(0.01)

    a = loop2.delay("a")
    b = loop2.delay("b")
    with worker_running(app, concurrency=1, prefetch=2) as w:
        assert first_running.wait(10)
        wait_for(lambda: b.state == "claimed", what="b to be prefetched")
        b.abort()
        # the keeper (every 0.25 s) marks the buffered job; only then let the slot free up
        wait_for(
            lambda: any(p.early is not None for p in list(w._buffer)),
            what="the keeper to see the abort of the buffered job",
        )
        a.abort()
        wait_for(lambda: w.writer.stats.get("aborted") == 2, what="both counted aborted")
    assert started == ["a"]  # b was aborted while buffered: it never started
    assert a.state == b.state == "aborted"
