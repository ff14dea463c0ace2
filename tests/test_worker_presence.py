"""Fast recovery from process death, with real worker processes and real signals.

The leases here are long (60 s), so a job that comes back at all before the test's bound came
back through presence (the dead worker's connections closed), not through its lease; the
rescuer's log says which path it took. A SIGSTOPped worker still holds its connections: its job
is only reaped when its (short, 3 s here) lease runs out.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from polling import wait_for
from test_worker_process import Harness

pytestmark = pytest.mark.timeout(90)


def _alive_subscribers(h: Harness, name: str) -> int:
    return int(h.r.pubsub_numsub(h.app.thoonk.keys.ch_alive(name))[0][1])


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sigkill_mid_task_is_recovered_through_presence(harness: Harness, pool: str) -> None:
    h = harness
    job = h.send("slow", 30.0, max_runs=2)
    victim = h.worker("-c", "1", "--name", "victim", "--pool", pool, TP_TEST_LEASE="60s")
    wait_for(lambda: h.flag("started", job.id), what="the job to start in the victim")
    assert _alive_subscribers(h, "victim") == 1
    rescuer = h.worker("-c", "1", "--name", "rescuer", TP_TEST_LEASE="60s")
    wait_for(lambda: "rescuer" in h.registered(), what="the rescuer to register")
    killed_at = time.monotonic()
    victim.send(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    # a rerun returns at once (the rescuer's pid): it is back long before the 60 s lease
    assert job.get(timeout=45) == rescuer.pid
    print(
        f"\nSIGKILL -> finished elsewhere ({pool} pool, lease 60 s): "
        f"{time.monotonic() - killed_at:.2f} s"
    )
    assert h.runs(job.id) == 2
    # the keeper logs the reap after its script returned: the rerun may finish first
    wait_for(
        lambda: (
            "worker victim is gone" in rescuer.output()
            and f"job default/{job.id} of a dead worker" in rescuer.output()
        ),
        what="the rescuer to log the reap",
    )
    out = rescuer.output()
    assert "expired" not in out
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output()
    h.check_ledger()


def test_sigstop_is_reaped_only_after_the_lease(harness: Harness) -> None:
    h = harness
    job = h.send("slow", 30.0, max_runs=2)
    victim = h.worker("-c", "1", "--name", "frozen", TP_TEST_LEASE="3s")
    wait_for(lambda: h.flag("started", job.id), what="the job to start in the victim")
    rescuer = h.worker("-c", "1", "--name", "rescuer2", TP_TEST_LEASE="60s")
    wait_for(lambda: "rescuer2" in h.registered(), what="the rescuer to register")
    victim.send(signal.SIGSTOP)
    try:
        assert job.get(timeout=45) == rescuer.pid
        # the frozen process still holds its subscription: presence never judged it dead
        assert _alive_subscribers(h, "frozen") == 1
        out = rescuer.output()
        assert f"lease of job default/{job.id} expired" in out, out
        assert "worker frozen is gone" not in out
    finally:
        victim.send(signal.SIGKILL)
        victim.wait()
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output()
    h.check_ledger()


def test_a_redis_restart_is_not_taken_for_a_death(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarts (AOF): every subscription is gone at once, the presence set is not. The
    running worker subscribes again within the grace, so the other worker's reaper never takes
    its job: it finishes once, in the worker that had it, with no cancel."""
    from redis_server import RedisServer

    server = RedisServer(appendonly=True).start()
    h = Harness(tmp_path, server.url, prefix, monkeypatch)
    try:
        job = h.send("slow", 4.0)
        runner = h.worker("-c", "1", "--name", "runner", TP_TEST_LEASE="60s")
        wait_for(lambda: h.flag("started", job.id), what="the job to start")
        other = h.worker("-c", "1", "--name", "other", TP_TEST_LEASE="60s")
        wait_for(lambda: "other" in h.registered(), what="the other worker to register")
        server.restart()
        wait_for(
            lambda: "presence subscription re-made" in runner.output(),
            what="the runner to subscribe again",
        )
        # two heartbeats of the other worker after that: its reaper (every 0.5 s) ran since
        key = h.app.thoonk.keys.worker_info("other")
        beat0 = int(h.r.hget(key, "heartbeat") or 0)
        wait_for(
            lambda: int(h.r.hget(key, "heartbeat") or 0) >= beat0 + 3,
            timeout=30,
            what="the other worker's keeper to run on",
        )
        assert job.get(timeout=30) == runner.pid
        assert h.runs(job.id) == 1
        assert "is gone" not in other.output() and "expired" not in other.output(), other.output()
        for w in (runner, other):
            assert w.stop() == 0, w.output()
        h.check_ledger()
    finally:
        h.close()
        server.cleanup()
