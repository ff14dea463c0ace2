"""A 1,000-member chord over two real worker processes, one SIGKILLed mid-way: the callback
runs exactly once, with every member's result (issue 15, "Done when").

The members are near no-ops (a 2 ms sleep, so that both workers hold some when the kill comes);
the victim's claimed members are reaped after their 1 s lease and run by the survivor.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from redis_server import RedisServer
from worker_proc import AppProcesses

from taskpipe import chain, chord, group

pytestmark = pytest.mark.timeout(120)

APP_SOURCE = """
import os
import time

import redis

from taskpipe import TaskPipe

BROKER = os.environ["TP_TEST_BROKER"]
PREFIX = os.environ["TP_TEST_PREFIX"]
app = TaskPipe("wfcrash", broker=BROKER, prefix=PREFIX, lease="1s", max_cancels=5)
r = redis.Redis.from_url(BROKER)


@app.task(name="member")
def member(i):
    time.sleep(0.002)
    return i


@app.task(name="callback")
def callback(values):
    r.incr(PREFIX + "callback_runs")
    return [len(values), sum(values)]


@app.task(name="step")
def step(x):
    r.incr(PREFIX + "steps")
    return x + 1
"""


class Procs(AppProcesses):
    """The module above, loaded here and run by real worker processes."""

    def __init__(self, tmp: Path, url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(APP_SOURCE, tmp, url, prefix, monkeypatch, tag="tpwf")


@pytest.fixture
def procs(
    tmp_path: Path, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Procs]:
    p = Procs(tmp_path, redis_server.url, prefix, monkeypatch)
    yield p
    p.close()


def test_chord_of_1000_callback_once_with_a_worker_killed(procs: Procs) -> None:
    app = procs.app
    member, callback = app.tasks["member"], app.tasks["callback"]
    result = chord(group(member.s(i) for i in range(1000)), callback.s()).apply_async()
    assert result.state == "waiting"
    victim = procs.worker("-c", "4", "--name", "victim")
    survivor = procs.worker("-c", "4", "--name", "survivor")

    def finished() -> int:
        return app.channel().counts()["finished_total"]

    wait_for(lambda: finished() >= 200, timeout=60, interval=0.005, what="200 members to finish")
    victim.send(signal.SIGKILL)
    killed_at, at_kill = time.monotonic(), finished()
    assert victim.wait() == -signal.SIGKILL
    assert result.get(timeout=90) == [1000, sum(range(1000))]
    print(
        f"\nchord of 1000 over 2 workers, one SIGKILLed after {at_kill} finishes: callback "
        f"{time.monotonic() - killed_at:.2f} s after the kill"
    )
    survivor.send(signal.SIGTERM)
    assert survivor.wait() == 0, survivor.output()
    assert int(procs.r.get(procs.prefix + "callback_runs") or 0) == 1
    counts = app.channel().counts()
    assert counts["waiting"] == counts["available"] == counts["claimed"] == 0, counts
    assert counts["finished"] == 1001


def test_ten_step_chain_over_worker_processes(procs: Procs) -> None:
    app = procs.app
    step: Any = app.tasks["step"]
    result = chain(*(step.s(0) if i == 0 else step.s() for i in range(10))).apply_async()
    # one child in the process pool: the steps run one at a time (a second child was one more
    # interpreter to start, and idle)
    w1, w2 = procs.worker("-c", "2"), procs.worker("-c", "1", "--pool", "process")
    assert result.get(timeout=60) == 10
    assert int(procs.r.get(procs.prefix + "steps") or 0) == 10
    for w in (w1, w2):  # stop(): a worker that got no step may still be starting
        assert w.stop() == 0, w.output()


def test_expiry_at_claim_time_with_a_worker_process(procs: Procs) -> None:
    """Published with a deadline while no worker runs; the worker that claims it later does
    not run it: it ends ``expired``."""
    app = procs.app
    step: Any = app.tasks["step"]
    late = step.apply_async((1,), expires=0.2)
    fresh_deadline = time.time() + 0.2
    wait_for(lambda: time.time() > fresh_deadline + 0.05, what="the deadline to pass")
    on_time = step.apply_async((2,), expires="1h")
    w = procs.worker("-c", "1")
    assert on_time.get(timeout=30) == 3
    wait_for(lambda: late.ready(), what="the late job to end")
    assert late.state == "expired"
    assert int(procs.r.get(procs.prefix + "steps") or 0) == 1  # only the job on time ran
    w.send(signal.SIGTERM)
    assert w.wait() == 0, w.output()
