"""Flow control across real worker processes (docs/flow-control.md): a global rate limit held
by 3 workers, and a per-key concurrency cap that holds and survives a SIGKILL.

The rate is checked on server-side timestamps (Redis ``TIME`` read inside each task) as an upper
bound only, which is what the feature promises: no window holds more starts than the limit
allows. How many ran in a window is never asserted (that measures the machine's load).
"""

from __future__ import annotations

import bisect
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from redis_server import RedisServer
from worker_proc import AppProcesses

pytestmark = pytest.mark.timeout(120)

MODULE_SOURCE = """
import os
import time

import redis

from taskpipe import TaskPipe, current_job

BROKER = os.environ["TP_TEST_BROKER"]
PREFIX = os.environ["TP_TEST_PREFIX"]
app = TaskPipe("flowtest", broker=BROKER, prefix=PREFIX, lease="3s")
r = redis.Redis.from_url(BROKER)


@app.task(name="rated", rate_limit="50/s")
def rated(i):
    sec, usec = r.time()
    r.rpush(PREFIX + "rated", sec * 1000 + usec // 1000)


@app.task(name="capped", concurrency=2, concurrency_key=lambda user, i, pause=0.05: user)
def capped(user, i, pause=0.05):
    job = current_job()
    r.set(PREFIX + "user:" + job.id, user)
    n = r.incr(PREFIX + "running:" + user)
    r.rpush(PREFIX + "seen:" + user, n)
    if n > 2:
        r.incr(PREFIX + "violations")
    time.sleep(pause if job.cancel_count == 0 else 0.05)  # a rerun after a crash is quick
    r.decr(PREFIX + "running:" + user)
    r.sadd(PREFIX + "done", job.id)
"""


class Flow(AppProcesses):
    """The module above, loaded here and run by real worker processes."""

    def __init__(self, tmp: Path, url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(
            MODULE_SOURCE,
            tmp,
            url,
            prefix,
            monkeypatch,
            tag="tpflow",
            worker_args=("--dead-after", "5s"),
        )


@pytest.fixture
def flow(
    tmp_path: Path, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flow]:
    f = Flow(tmp_path, redis_server.url, prefix, monkeypatch)
    yield f
    f.close()


def test_rate_limit_holds_across_three_workers(flow: Flow) -> None:
    """The limit is an upper bound: checked on every job's own start time, never on how many
    ran (a loaded machine runs fewer, which the limit allows)."""
    jobs, per_second, burst = 640, 50, 5  # rate_limit="50/s": a burst of max(1, 50 // 10)
    task = flow.app.tasks["rated"]
    task.map(range(jobs))
    for _ in range(3):
        flow.worker("-c", "4")
    key = flow.prefix + "rated"
    wait_for(lambda: flow.r.llen(key) >= jobs, timeout=100, what="every rated job to start")
    stamps = sorted(int(x) for x in flow.r.lrange(key, 0, -1))
    assert len(stamps) == jobs
    # no 10 s window (one at every start) holds more than the limit allows, +10 % for the
    # spread between a claim (what the limit counts) and the task's own TIME read
    window_ms = 10_000
    allowed = int((burst + window_ms * per_second / 1000) * 1.1)
    most = max(bisect.bisect_left(stamps, t + window_ms) - i for i, t in enumerate(stamps))
    assert most <= allowed, f"{most} jobs started within 10 s at a 50/s limit"
    # and all of them together took at least as long as the limit's spacing requires
    least_ms = (jobs - burst - 1) * 1000 / per_second * 0.9
    assert stamps[-1] - stamps[0] >= least_ms, (stamps[0], stamps[-1])
    for w in flow.workers:
        assert w.stop() == 0, w.output()


def _running_on(flow: Flow, worker: str) -> list[str]:
    k = flow.app.channel().keys
    return [_text(j) for j, w in flow.r.hgetall(k.workers).items() if _text(w) == worker]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_per_key_cap_holds_and_survives_sigkill(flow: Flow) -> None:
    task = flow.app.tasks["capped"]
    users = ["ann", "bob", "cid"]
    # two long "ann" jobs first: the victim claims them, so ann's 2 slots are its own when it dies
    long_jobs = [task.delay("ann", 99, pause=30.0), task.delay("ann", 98, pause=30.0)]
    jobs: list[Any] = long_jobs + [task.delay(u, i) for i in range(20) for u in users]
    victim = flow.worker("-c", "6", "--name", "victim")
    started = [flow.prefix + "user:" + j.id for j in long_jobs]
    wait_for(
        lambda: all(flow.r.exists(k) for k in started),
        timeout=60,
        what="the victim to start both long ann jobs",
    )
    helpers = [flow.worker("-c", "6") for _ in range(2)]
    done_key = flow.prefix + "done"
    wait_for(lambda: flow.r.scard(done_key) >= 12, timeout=60, what="the workers to share the work")
    held = _running_on(flow, "victim")
    assert {j.id for j in long_jobs} <= set(held)
    victim.send(signal.SIGKILL)
    victim.wait()
    # the killed runs never decrement their counter: do it for them (their slots stay held
    # until their leases are reaped, so nothing else of that user started in between)
    for job_id in held:
        user = flow.r.get(flow.prefix + "user:" + job_id)
        if user is not None and not flow.r.sismember(flow.prefix + "done", job_id):
            flow.r.decr(flow.prefix + "running:" + _text(user))
    flow.worker("-c", "6")
    # the killed long jobs run again (quickly) once the reaper frees their slots: all finish
    wait_for(lambda: flow.r.scard(done_key) == len(jobs), timeout=90, what="every job to run")
    # a task adds itself to "done" before its worker writes the finish: wait for the finishes
    # too, or the last job can still read "claimed" on a loaded machine
    wait_for(
        lambda: flow.app.channel().counts()["finished"] == len(jobs),
        timeout=60,
        what="every job's finish to be written",
    )
    assert int(flow.r.get(flow.prefix + "violations") or 0) == 0
    for u in users:
        seen = [int(x) for x in flow.r.lrange(flow.prefix + "seen:" + u, 0, -1)]
        assert seen and max(seen) <= 2, (u, seen)
        assert max(seen) == 2  # the cap is reached, not just never approached
    # nothing lost, nothing doubled: every job finished once (the killed ones on a rerun)
    for j in jobs:
        assert j.info().state == "finished", j.id
    # no slot is left over: the claim counts only live claims (the killed ones were reaped)
    from taskpipe.thoonk.flow import flow_state

    assert flow_state(flow.app.channel(), 0)["running_by_group"] == {}
    for w in helpers:
        w.send(signal.SIGKILL)
