"""Crash tests: real worker subprocesses, real signals, tiny leases (1 s; reaper every 0.5 s).

Each test kills or stops a worker at a chosen point of a job's life and checks that the job
still ends in exactly one terminal state, ran no more often than the guarantees allow
(``docs/guarantees.md``), and, where a second worker takes over, prints the recovery time
(kill -> the job finished by the other worker).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from polling import wait_for
from test_worker_process import Harness
from worker_helpers import burst, worker_running
from worker_proc import WorkerProcess

from taskpipe import TaskFailed

pytestmark = pytest.mark.timeout(90)


def _start_rescuer(h: Harness, name: str, *args: str) -> WorkerProcess:
    w = h.worker("-c", "2", "--name", name, *args)
    wait_for(lambda: name in h.registered(), what=f"worker {name} to register")
    return w


def _recovered(h: Harness, result: object, killed_at: float, what: str) -> float:
    value = result.get(timeout=30)  # type: ignore[attr-defined]
    elapsed = time.monotonic() - killed_at
    print(f"\nrecovery time ({what}): {elapsed:.2f} s (lease 1 s, reaper 0.5 s)")
    assert value is not None
    return elapsed


# SIGKILL after the claim but before the run, mid-task, and after the return but before the
# finish: tests/fault/test_fault_workers.py::test_sigkill_at_three_points (the same checks,
# plus the fault harness's TTL invariants). Here: the SIGKILL right after a claim, with the
# rescuer's start-up counted in the recovery time.
def test_sigkill_right_after_the_claim(harness: Harness) -> None:
    h = harness
    a = h.worker("-c", "1", "--name", "victim")
    wait_for(lambda: "victim" in h.registered(), what="the victim to register")
    job = h.send("slow", 30.0, max_runs=2)
    wait_for(lambda: job.info().state == "claimed", interval=0.001, what="the claim")
    a.send(signal.SIGKILL)
    killed_at = time.monotonic()
    rescuer = _start_rescuer(h, "rescuer")  # its start-up counts in the recovery time
    assert a.wait() == -signal.SIGKILL
    _recovered(h, job, killed_at, "SIGKILL right after claim")
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output()
    h.check_ledger()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sigterm_short_grace_sends_the_job_back(harness: Harness, pool: str) -> None:
    h = harness
    job = h.send("slow", 60.0, max_runs=2)
    a = h.worker("-c", "1", "--grace", "0.3s", "--pool", pool)
    runner = wait_for(lambda: h.flag("started", job.id), what="the job to start")
    assert (runner == a.pid) == (pool == "thread")
    a.send(signal.SIGTERM)
    assert a.wait() == 0, a.output()
    assert not _pid_alive(runner)  # a process-pool child is stopped with its worker
    info = job.info()
    # a job still running in a thread goes back with a not-before delay (the fence: no second
    # run while the old process may still run it); a killed process-pool child's job at once
    expected = "delayed" if pool == "thread" else "available"
    assert info.state == expected and info.cancel_count == 1, info
    assert h.runs(job.id) == 1
    with worker_running(h.app, ["default"], concurrency=1):  # the other worker: in-process
        assert job.get(timeout=20) == os.getpid()
    h.check_ledger()


def test_sigterm_long_grace_lets_the_job_finish(harness: Harness) -> None:
    h = harness
    job = h.send("slow", 1.0)
    queued = h.send("record", "queued")  # not started before the signal: stays queued
    a = h.worker("-c", "1", "--grace", "30s")
    wait_for(lambda: h.flag("started", job.id), what="the job to start")
    a.send(signal.SIGTERM)
    assert a.wait() == 0, a.output()
    assert job.get(timeout=1) == a.pid
    info = job.info()
    assert info.state == "finished" and info.cancel_count == 0
    assert h.runs(queued.id) == 0 and queued.info().state == "available"
    assert burst(h.app, ["default"])["finished"] == 1  # the other worker: in-process
    assert queued.get(timeout=5) == "queued"
    h.check_ledger()


def test_sigterm_to_the_process_group_lets_process_pool_jobs_finish(harness: Harness) -> None:
    """systemd's default stop signals every process of the unit: children must not die of it."""
    h = harness
    job = h.send("slow", 1.0)
    a = h.worker("--pool", "process", "-c", "1", "--grace", "30s", new_session=True)
    child = wait_for(lambda: h.flag("started", job.id), what="the job to start in a child")
    assert child != a.pid
    os.killpg(a.pid, signal.SIGTERM)
    assert a.wait() == 0, a.output()
    assert job.get(timeout=1) == child
    assert not _pid_alive(child)
    h.check_ledger()


def test_second_sigterm_stops_at_once(harness: Harness) -> None:
    h = harness
    job = h.send("slow", 60.0, max_runs=2)
    a = h.worker("-c", "1", "--grace", "60s")
    wait_for(lambda: h.flag("started", job.id), what="the job to start")
    a.send(signal.SIGTERM)
    wait_for(lambda: "finishing running jobs" in a.output(), what="the first signal to land")
    assert a.alive()  # the first signal waits for the job (60 s grace)
    a.send(signal.SIGTERM)
    assert a.wait(timeout=30) == 0, a.output()  # long before the 60 s job or grace could end
    info = job.info()
    assert info.state == "delayed" and info.cancel_count == 1, info  # behind the fence
    with worker_running(h.app, ["default"], concurrency=1):  # the other worker: in-process
        assert job.get(timeout=20) == os.getpid()
    h.check_ledger()


# The poison job (a job that kills its worker every time) is tested once, in
# tests/fault/test_fault_workers.py::test_poison_job_kills_its_worker_every_time (stricter: exact
# deaths, every other job exactly once, TTL invariants); this file had a weaker copy.


def test_sigkill_of_a_process_pool_worker_takes_its_children(harness: Harness) -> None:
    h = harness
    job = h.send("slow", 30.0, max_runs=2)
    a = h.worker("--pool", "process", "-c", "1", "--name", "victim")
    child = wait_for(lambda: h.flag("started", job.id), what="the job to start in a child")
    assert child != a.pid
    # the rescuer runs in this process (what is tested is the victim and its children)
    with worker_running(h.app, ["default"], concurrency=2, name="rescuer"):
        wait_for(lambda: "rescuer" in h.registered(), what="the rescuer to register")
        killed_at = time.monotonic()
        a.send(signal.SIGKILL)
        assert a.wait() == -signal.SIGKILL
        wait_for(lambda: not _pid_alive(child), timeout=10, what="the orphaned child to die")
        _recovered(h, job, killed_at, "SIGKILL of a process-pool worker")
        assert job.get(timeout=1) == os.getpid()  # rerun by the rescuer
    h.check_ledger()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by init) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_cpu_bound_job_past_hard_timeout_in_process_pool(harness: Harness) -> None:
    h = harness
    spin = h.send("spin")
    after = h.send("record", "after")
    a = h.worker("--pool", "process", "-c", "1")
    with pytest.raises(TaskFailed) as err:
        spin.get(timeout=30)
    assert err.value.exc_type == "JobTimeout"
    assert after.get(timeout=30) == "after"  # the pool replaced its child and goes on
    assert a.alive()
    later = h.send("record", "later")
    assert later.get(timeout=30) == "later"
    a.send(signal.SIGTERM)
    assert a.wait() == 0, a.output()
    assert "hard time limit" in a.output()
    h.check_ledger()


def test_async_job_past_its_timeout(harness: Harness) -> None:
    h = harness
    stuck = h.send("async_stuck")
    after = h.send("async_record", "after")
    a = h.worker("--pool", "async", "-c", "4")
    with pytest.raises(TaskFailed) as err:
        stuck.get(timeout=30)
    assert err.value.exc_type == "JobTimeout"
    assert after.get(timeout=30) == "after"
    assert a.alive()
    a.send(signal.SIGTERM)
    assert a.wait() == 0, a.output()
    h.check_ledger()
