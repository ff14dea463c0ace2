"""Claiming on wake-up: the claim sent behind the ``BLPOP`` on the wake-up lists.

On one Redis (or Sentinel) a waiting worker sends ``BLPOP wake...`` and the claim script in one
write; Redis holds the claim in the blocked client's buffer and runs it the moment the
``BLPOP`` returns. Checked here on a real redis-server: the queued commands run only after the
wait ends (by a marker or by the timeout), a refused command comes back as its error with the
connection still in step, a job put while a waiter is blocked is claimed (leased) by that same
call, a missing script falls back to the ordinary claim, and a process killed while blocked
never claims. Then the worker: an idle thread-pool worker runs the job on the pool thread that
claimed it, and goes on claiming for its other threads while that job runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from polling import wait_for
from redis_server import RedisServer
from worker_helpers import worker_running

from taskpipe import TaskPipe, Worker
from taskpipe.connection import Connection
from taskpipe.thoonk.claiming import claim_from, wait_then_claim
from taskpipe.thoonk.thoonk import Thoonk

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plain(redis_server: RedisServer) -> Iterator[Connection]:
    c = Connection(redis_server.url)
    yield c
    c.close()


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        box["value"] = fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _blocked_clients(client: Any) -> int:
    return int(client.info("clients")["blocked_clients"])


def test_commands_behind_the_blpop_run_only_when_it_returns(plain: Connection, prefix: str) -> None:
    r = plain.client
    wake, log = prefix + "wake", prefix + "log"
    waiter = plain.list_waiter([wake])
    assert waiter.pipelines
    t, box = _in_thread(lambda: waiter.wait_then(5.0, ("RPUSH", log, "ran")))
    wait_for(lambda: _blocked_clients(r) >= 1, what="the BLPOP to block")
    time.sleep(0.1)
    assert r.llen(log) == 0  # held in the blocked client's buffer
    r.lpush(wake, "1")
    t.join(5)
    assert box["value"] == (True, [1])
    assert r.lrange(log, 0, -1) == [b"ran"] and r.llen(wake) == 0


def test_commands_run_after_a_timeout_too(plain: Connection, prefix: str) -> None:
    waiter = plain.list_waiter([prefix + "wake"])
    assert waiter.wait_then(0.05, ("INCR", prefix + "n")) == (False, [1])


def test_a_refused_command_is_returned_and_the_connection_stays_in_step(
    plain: Connection, prefix: str
) -> None:
    waiter = plain.list_waiter([prefix + "wake"])
    woke, replies = waiter.wait_then(0.01, ("EVALSHA", "0" * 40, 0), ("PING",))
    assert not woke
    assert isinstance(replies[0], redis.exceptions.NoScriptError)
    assert replies[1] in (b"PONG", True)
    assert waiter.wait_then(0.01, ("INCR", prefix + "n")) == (False, [1])


def test_a_wrong_type_wake_key_raises(plain: Connection, prefix: str) -> None:
    plain.client.set(prefix + "wake", "not a list")
    waiter = plain.list_waiter([prefix + "wake"])
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        waiter.wait_then(0.01, ("PING",))
    plain.client.delete(prefix + "wake")
    assert waiter.wait_then(0.01, ("INCR", prefix + "n")) == (False, [1])  # still in step


def test_memory_broker_has_no_pipelined_wait() -> None:
    c = Connection("memory://wake-claim")
    try:
        assert not c.list_waiter(["k"]).pipelines
    finally:
        c.close()


def test_a_job_put_while_blocked_is_claimed_by_the_same_call(
    plain: Connection, prefix: str
) -> None:
    th = Thoonk(connection=plain, prefix=prefix)
    job = th.job("wakeclaim")
    job.claim(1)  # loads the claim script
    waiter = plain.list_waiter([job.keys.wake])
    t, box = _in_thread(lambda: wait_then_claim(th, waiter, [job], 5.0, 4, 30_000, "w1"))
    wait_for(lambda: _blocked_clients(plain.client) >= 1, what="the BLPOP to block")
    jid = job.put(b"payload")
    t.join(5)
    claims, next_due, now = box["value"]
    assert [(c.id, c.item) for c in claims] == [(jid, b"payload")]
    assert next_due is None and now > 0
    assert job.info(jid).state == "claimed"
    assert job.info(jid).worker == "w1"
    assert job.claim(1) == []  # claimed once, not left in the queue


def test_a_missing_script_falls_back_to_the_ordinary_claim(plain: Connection, prefix: str) -> None:
    th = Thoonk(connection=plain, prefix=prefix)
    job = th.job("noscript")
    jid = job.put(b"x")
    plain.client.script_flush()
    waiter = plain.list_waiter([job.keys.wake])
    assert wait_then_claim(th, waiter, [job], 0.01, 1, 30_000, "w") is None
    assert job.info(jid).state == "available"  # nothing was taken
    claims, _, _ = claim_from(th, [job], 1, 30_000, "w")  # reloads the script
    assert [c.id for c in claims] == [jid]


def test_get_waits_and_claims_on_wake_up(plain: Connection, prefix: str) -> None:
    job = Thoonk(connection=plain, prefix=prefix).job("get")
    t, box = _in_thread(lambda: job.get(timeout=5))
    wait_for(lambda: _blocked_clients(plain.client) >= 1, what="get to block")
    jid = job.put(b"late")
    t.join(5)
    assert box["value"] is not None and box["value"][:2] == (jid, b"late")
    assert job.info(jid).state == "claimed"


_BLOCKER = """
import sys
from taskpipe.connection import Connection
from taskpipe.thoonk.claiming import wait_then_claim
from taskpipe.thoonk.thoonk import Thoonk
conn = Connection(sys.argv[1])
th = Thoonk(connection=conn, prefix=sys.argv[2])
job = th.job("killed")
job.claim(1)
waiter = conn.list_waiter([job.keys.wake])
print("blocking", flush=True)
wait_then_claim(th, waiter, [job], 60.0, 1, 30_000, "doomed")
print("returned", flush=True)
"""


def test_a_process_killed_while_blocked_never_claims(
    redis_server: RedisServer, prefix: str
) -> None:
    r = redis.Redis(port=redis_server.port)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKER, redis_server.url, prefix],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "blocking"
        wait_for(lambda: _blocked_clients(r) >= 1, what="the child's BLPOP to block")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: _blocked_clients(r) == 0, what="Redis to drop the killed client")
        conn = Connection(redis_server.url)
        try:
            job = Thoonk(connection=conn, prefix=prefix).job("killed")
            jid = job.put(b"survivor")
            assert job.info(jid).state == "available"  # the dead client's queued claim never ran
            assert [c.id for c in job.claim(1)] == [jid]
        finally:
            conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes its pipe


@pytest.fixture
def app(redis_server: RedisServer, prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=redis_server.url, prefix=prefix)
    yield a
    a.close()


def test_idle_worker_runs_the_job_on_the_pool_thread_that_claimed_it(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskpipe.worker.worker as worker_module

    claimed_on: list[tuple[str, int]] = []

    def noting_thread(*args: Any, **kwargs: Any) -> Any:
        got = wait_then_claim(*args, **kwargs)
        claimed_on.append((threading.current_thread().name, len(got[0]) if got else 0))
        return got

    monkeypatch.setattr(worker_module, "wait_then_claim", noting_thread)

    @app.task(channel="idle")
    def where() -> str:
        return threading.current_thread().name

    with worker_running(app, ["idle"], concurrency=2, max_block=1.0) as w:
        wait_for(lambda: _blocked_clients(app.connection.client) >= 1, what="the worker to go idle")
        name = where.delay().get(timeout=10)
        assert name.startswith("taskpipe-job-")
        assert (name, 1) in claimed_on  # claimed on the thread it ran on: no hand-over
        assert w.claimed_total == 1


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_job_published_while_another_runs(app: TaskPipe, concurrency: int) -> None:
    """Two threads: the other thread waits and takes the second job at once (the worker goes on
    claiming while the first job runs on the thread that claimed it). One thread: the second job
    waits for the slot (the main loop waits and claims itself)."""
    release = threading.Event()
    started: list[int] = []

    @app.task(channel="hold")
    def hold(i: int) -> int:
        started.append(i)
        if i == 0:
            assert release.wait(20)
        return i

    with worker_running(app, ["hold"], concurrency=concurrency, prefetch=0, max_block=1.0):
        first = hold.delay(0)
        wait_for(lambda: started == [0], what="the first job to start")
        second = hold.delay(1)
        if concurrency == 2:
            assert second.get(timeout=10) == 1  # while job 0 still runs
        else:
            time.sleep(0.2)
            assert started == [0]  # one slot, busy
        release.set()
        assert [first.get(timeout=10), second.get(timeout=10)] == [0, 1]


# interrupt: a stop (or a burst's last outcome) ends the claim loop's wait at once ------------
# Every wait below is 60 s and every watchdog 30 s: a wait that ran to its timeout fails the
# test (no timing is measured).
def test_interrupt_ends_a_wait_then_as_a_timeout(plain: Connection, prefix: str) -> None:
    r, n = plain.client, prefix + "n"
    waiter = plain.list_waiter([prefix + "wake"])

    def interrupted_wait() -> Any:
        t, box = _in_thread(lambda: _raised(lambda: waiter.wait_then(60.0, ("INCR", n))))
        wait_for(lambda: _blocked_clients(r) >= 1, what="the BLPOP to block")
        waiter.interrupt()
        t.join(30)
        assert not t.is_alive(), "the interrupt did not end the wait"
        return box["value"]

    assert interrupted_wait() == (False, [1])  # not woken by a marker; the command ran
    assert interrupted_wait() == (False, [2])  # the same connection: still in step
    waiter.interrupt()  # with no wait in progress: the next one does not block
    assert waiter.wait_then(60.0, ("INCR", n)) == (False, [3])
    # a connection that reconnects is a new client with a new id, which is learnt again
    t, box = _in_thread(lambda: _raised(lambda: waiter.wait_then(60.0, ("INCR", n))))
    wait_for(lambda: _blocked_clients(r) >= 1, what="the BLPOP to block")
    [blocked] = [c for c in r.client_list() if c["cmd"] == "blpop"]
    r.client_kill_filter(_id=blocked["id"])
    t.join(30)
    assert isinstance(box["value"], redis.exceptions.ConnectionError)
    assert interrupted_wait() == (False, [4])  # the killed wait's INCR never ran


def _raised(fn: Any) -> Any:
    """``fn()``, or the exception it raised (returned, not raised in a thread)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc


def test_a_stop_ends_the_idle_worker_wait_at_once(app: TaskPipe) -> None:
    w = Worker(app, ["idle"], concurrency=1, max_block=60.0, heartbeat_interval=60.0)
    t, box = _in_thread(w.run)
    wait_for(lambda: _blocked_clients(app.connection.client) >= 1, what="the worker to block")
    w.stop()
    t.join(30)
    assert not t.is_alive() and box["value"] == 0, "the stop waited for the 60 s block"


def test_a_burst_worker_exits_once_its_last_job_finished(app: TaskPipe) -> None:
    """The loop blocks on the wake keys while the last job runs (burst mode exits only once it
    is written); its outcome ends the block, not the block timeout."""
    release = threading.Event()

    @app.task(channel="last")
    def last() -> str:
        assert release.wait(20)
        return "done"

    job = last.delay()
    w = Worker(app, ["last"], concurrency=1, burst=True, max_block=60.0, heartbeat_interval=60.0)
    t, box = _in_thread(w.run)
    wait_for(lambda: job.info().state == "claimed", what="the job to start")
    wait_for(lambda: _blocked_clients(app.connection.client) >= 1, what="the loop to block")
    release.set()
    t.join(30)
    assert not t.is_alive() and box["value"] == 0, "the burst waited for the 60 s block"
    assert job.get(timeout=5) == "done"


def test_a_stopped_worker_ends_its_threads_with_it(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finisher and the keeper are told when ``run`` ends: it returns with both threads
    ended, not after their polls (60 s here; ``run`` joins each for at most 5 s)."""
    import taskpipe.worker.finisher as finisher_module
    import taskpipe.worker.keeper as keeper_module

    monkeypatch.setattr(finisher_module, "FINISHER_POLL", 60.0)
    monkeypatch.setattr(keeper_module, "KEEPER_TICK", 60.0)

    @app.task(channel="ends")
    def one() -> int:
        return 1

    job = one.delay()
    w = Worker(
        app,
        ["ends"],
        concurrency=1,
        burst=True,
        max_block=0.1,
        heartbeat_interval=60.0,
        lease="180s",
        reaper_interval="60s",
    )
    assert w.run() == 0
    assert job.get(timeout=5) == 1
    assert [t.name for t in w._threads if t.is_alive()] == []


# memory:// (and a cluster's wake-up threads): the same interrupt, without CLIENT UNBLOCK ------
def test_interrupt_ends_a_memory_wait_at_once() -> None:
    """A plain ``wait`` on ``memory://`` ends on ``interrupt`` as if it timed out; with no wait
    in progress, the next one does not block; a marker still wakes it."""
    conn = Connection(f"memory://{os.urandom(4).hex()}")
    waiter = conn.list_waiter(["wake"], interruptible=True)  # as a worker's claim loop asks
    try:
        t, box = _in_thread(lambda: waiter.wait(60.0))
        wait_for(waiter._wanted.is_set, what="the wait to start")
        waiter.interrupt()
        t.join(30)
        assert not t.is_alive() and box["value"] is False, "the interrupt did not end the wait"
        waiter.interrupt()  # with no wait in progress: the next one does not block
        assert waiter.wait(60.0) is False
        conn.client.rpush("wake", "1")
        assert waiter.wait(60.0) is True  # a marker: woken, not interrupted
    finally:
        waiter.close()
        conn.close()


@pytest.fixture
def memory_app(prefix: str) -> Iterator[TaskPipe]:
    a = TaskPipe(broker=f"memory://{os.urandom(4).hex()}", prefix=prefix)
    yield a
    a.close()


def test_a_memory_burst_worker_exits_once_its_last_job_finished(memory_app: TaskPipe) -> None:
    """``run_until_idle`` on ``memory://``: the last outcome ends the loop's wait (60 s here)."""
    app, release = memory_app, threading.Event()

    @app.task(channel="last")
    def last() -> str:
        assert release.wait(20)
        return "done"

    job = last.delay()
    w = Worker(app, ["last"], concurrency=1, burst=True, max_block=60.0, heartbeat_interval=60.0)
    t, box = _in_thread(w.run)
    wait_for(lambda: job.info().state == "claimed", what="the job to start")
    release.set()
    t.join(30)
    assert not t.is_alive() and box["value"] == 0, "the burst waited for the 60 s block"
    assert job.get(timeout=5) == "done"


def test_a_stop_ends_the_idle_memory_worker_wait_at_once(memory_app: TaskPipe) -> None:
    app = memory_app

    @app.task(channel="idle")
    def one() -> int:
        return 1

    w = Worker(app, ["idle"], concurrency=1, max_block=60.0, heartbeat_interval=60.0)
    t, box = _in_thread(w.run)
    assert one.delay().get(timeout=10) == 1  # the worker ran it: now it waits for the next
    w.stop()
    t.join(30)
    assert not t.is_alive() and box["value"] == 0, "the stop waited for the 60 s block"
