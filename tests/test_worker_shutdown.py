"""Shutdown (issue 17, item 3): a stopping worker claims nothing more, gives back at once (no
cancel count) what it claimed after the signal, and never lets a job it sends back start
elsewhere while its own process may still run it. Real worker processes and signals.
"""

from __future__ import annotations

import os
import signal

import pytest
from polling import wait_for
from test_worker_process import Harness
from worker_helpers import worker_running

from taskpipe import TaskPipe

pytestmark = pytest.mark.timeout(90)


POOLS = [("thread", "guarded"), ("process", "guarded"), ("async", "aguarded")]


@pytest.mark.parametrize("pool, task", POOLS)
def test_a_job_published_after_the_signal_runs_elsewhere_at_once(
    harness: Harness, pool: str, task: str
) -> None:
    h = harness
    long = h.send(task, 60.0, max_runs=2)
    # -c 2: one slot runs the long job, the other waits for work (the wait-then-claim path)
    a = h.worker("-c", "2", "--grace", "60s", "--pool", pool, "--name", "stopping")
    wait_for(lambda: h.flag("started", long.id), what="the long job to start")
    a.send(signal.SIGTERM)
    wait_for(lambda: "claiming no more" in a.output(), what="the signal to be handled")
    late = h.send("guarded", 0.0)  # the stopping worker may claim it: it must give it back
    # the fresh worker runs in this process (what is tested is the stopping one)
    with worker_running(h.app, ["default"], concurrency=2, name="fresh"):
        assert late.get(timeout=20) == os.getpid()
        assert a.alive()  # still in its 60 s grace: the job did not wait for it
        assert h.flag("cancels", late.id) == 0 and h.runs(late.id) == 1
        a.send(signal.SIGTERM)  # second signal: stop at once, the long job is sent back
        assert a.wait() == 0, a.output()
        assert long.get(timeout=20) == os.getpid()
    assert not h.flag("overlap", long.id), "the two runs of the long job overlapped"
    h.check_ledger()


@pytest.mark.parametrize("pool, task", POOLS)
def test_a_job_sent_back_after_a_short_grace_never_runs_twice_at_once(
    harness: Harness, pool: str, task: str
) -> None:
    h = harness
    job = h.send(task, 60.0, max_runs=2)
    a = h.worker("-c", "1", "--grace", "0.3s", "--pool", pool, "--name", "old")
    first = wait_for(lambda: h.flag("started", job.id), what="the job to start")
    assert h.runs(job.id) == 1 and (first == a.pid) == (pool != "process")
    # the rescuer runs in this process (what is tested is the old worker)
    with worker_running(h.app, ["default"], concurrency=2, name="rescuer"):
        wait_for(lambda: "rescuer" in h.registered(), what="the rescuer to register")
        a.send(signal.SIGTERM)
        assert job.get(timeout=30) == os.getpid()
        assert a.wait() == 0, a.output()
    assert not h.flag("overlap", job.id), "the job started again while the old process ran"
    assert h.flag("cancels", job.id) == 1 and h.runs(job.id) == 2
    h.check_ledger()


def test_cancel_with_a_not_before_delay(app: TaskPipe) -> None:
    """The fence's wire op (real Redis and memory://): the job goes back to the delayed set,
    cancel count +1, and is not claimable before its time; without a delay it is available."""
    ch = app.channel(app.default_channel)
    ch.put(b"a", id="fenced")
    ch.put(b"b", id="plain")
    first, second = ch.claim(2, 60_000, "w")
    assert ch.cancel(first.id, token=first.token, not_before_ms=3_600_000) == 1
    assert ch.cancel(second.id, token=second.token) == 1
    fenced, plain = ch.info("fenced"), ch.info("plain")
    assert (fenced.state, fenced.cancel_count) == ("delayed", 1), fenced
    assert (plain.state, plain.cancel_count) == ("available", 1), plain
    assert [c.id for c in ch.claim(5, 60_000, "w")] == ["plain"]
