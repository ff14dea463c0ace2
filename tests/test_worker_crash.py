"""Crash tests: real worker subprocesses, real signals, tiny leases (1 s; reaper every 0.5 s).

Each test kills or stops a worker at a chosen point of a job's life and checks that the job
still ends in exactly one terminal state, ran no more often than the guarantees allow
(``docs/guarantees.md``), and, where a second worker takes over, prints the recovery time
(kill -> the job finished by the other worker).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from test_worker_process import Harness, WorkerProcess

from taskpipe import TaskFailed

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def harness(tmp_path: Path, redis_server: Any, prefix: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    h = Harness(tmp_path, redis_server.url, prefix, monkeypatch)
    yield h
    h.close()


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


@pytest.mark.parametrize("when", ["held_before_run", "right_after_claim"])
def test_sigkill_before_the_task_starts(harness: Harness, when: str) -> None:
    h = harness
    if when == "held_before_run":
        # a test hook in the task module holds the claimed job before the function is called
        job = h.send("slow", 0.5, max_runs=2)
        a = h.worker("-c", "1", "--name", "victim", TP_TEST_HOLD_RUN="30")
        wait_for(lambda: h.flag("claimed", job.id), what="the job to be claimed and held")
        assert h.runs(job.id) == 0  # claimed, but the function has not started
        rescuer = _start_rescuer(h, "rescuer")
        killed_at = time.monotonic()
        a.send(signal.SIGKILL)
    else:
        a = h.worker("-c", "1", "--name", "victim")
        wait_for(lambda: "victim" in h.registered(), what="the victim to register")
        job = h.send("slow", 30.0, max_runs=2)
        wait_for(lambda: job.info().state == "claimed", interval=0.001, what="the claim")
        a.send(signal.SIGKILL)
        killed_at = time.monotonic()
        rescuer = _start_rescuer(h, "rescuer")  # its start-up counts in the recovery time
    assert a.wait() == -signal.SIGKILL
    _recovered(h, job, killed_at, f"SIGKILL {when.replace('_', ' ')}")
    if when == "held_before_run":
        assert h.runs(job.id) == 1  # it never ran in the killed worker
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output()
    h.check_ledger()


def test_sigkill_mid_task(harness: Harness) -> None:
    h = harness
    job = h.send("slow", 30.0, max_runs=2)
    others = [h.send("record", f"o{i}") for i in range(5)]
    a = h.worker("-c", "1", "--name", "victim")
    wait_for(lambda: h.flag("started", job.id) == a.pid, what="the job to start in the victim")
    rescuer = _start_rescuer(h, "rescuer")
    killed_at = time.monotonic()
    a.send(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    _recovered(h, job, killed_at, "SIGKILL mid-task")
    assert [r.get(timeout=20) for r in others] == [f"o{i}" for i in range(5)]
    assert h.runs(job.id) == 2  # started in the victim, finished by the rescuer
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output()
    h.check_ledger()


def test_sigkill_after_return_before_finish(harness: Harness) -> None:
    """The duplicate window: the task returned but its finish was never written."""
    h = harness
    job = h.send("record", "dup", max_runs=2)
    a = h.worker("-c", "1", "--name", "victim", TP_TEST_HOLD_FINISH="30")
    wait_for(lambda: h.flag("returned", job.id), what="the task to return")
    assert h.runs(job.id) == 1 and job.info().state == "claimed"
    rescuer = _start_rescuer(h, "rescuer")
    killed_at = time.monotonic()
    a.send(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    _recovered(h, job, killed_at, "SIGKILL after return, before finish")
    assert h.runs(job.id) == 2  # at-least-once: it ran again
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
    b = h.worker("-c", "1")
    assert job.get(timeout=20) == b.pid
    b.send(signal.SIGTERM)
    assert b.wait() == 0, b.output()
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
    b = h.worker("--burst")
    assert b.wait() == 0, b.output()
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
    b = h.worker("-c", "1")
    assert job.get(timeout=20) == b.pid
    b.send(signal.SIGTERM)
    assert b.wait() == 0, b.output()
    h.check_ledger()


@pytest.mark.slow
def test_poison_job_is_stalled_while_others_flow(harness: Harness) -> None:
    """A job that kills its worker every time: stalled after max_cancels, the rest run."""
    h = harness
    max_cancels = 2
    env = h.env(TP_TEST_MAX_CANCELS=str(max_cancels))
    poison = h.send("poison", max_runs=max_cancels + 1)
    # an outcome may still be unwritten when the poison kills the worker: at least once
    others = [h.send("record", f"ok{i}", max_runs=2) for i in range(8)]
    deaths: list[int] = []
    stop = threading.Event()

    def supervisor() -> None:
        w = h.worker("-c", "1", env=env)
        while not stop.is_set():
            if not w.alive():
                deaths.append(w.wait())
                w = h.worker("-c", "1", env=env)
            time.sleep(0.05)
        w.send(signal.SIGTERM)
        w.wait()

    sup = threading.Thread(target=supervisor, daemon=True)
    sup.start()
    try:
        assert [r.get(timeout=60) for r in others] == [f"ok{i}" for i in range(8)]
        wait_for(lambda: poison.info().state == "stalled", timeout=60, what="the poison stall")
    finally:
        stop.set()
        sup.join(30)
    reason = h.app.channel().stall_reason(poison.id)
    assert reason.startswith("worker_lost"), reason
    assert h.runs(poison.id) == max_cancels + 1
    assert len(deaths) == max_cancels + 1 and all(code == -signal.SIGKILL for code in deaths)
    print(f"\npoison job: {len(deaths)} worker deaths, stalled with {reason!r}")
    h.check_ledger(expect={poison.id: "stalled"})


def test_sigkill_of_a_process_pool_worker_takes_its_children(harness: Harness) -> None:
    h = harness
    job = h.send("slow", 30.0, max_runs=2)
    a = h.worker("--pool", "process", "-c", "1", "--name", "victim")
    child = wait_for(lambda: h.flag("started", job.id), what="the job to start in a child")
    assert child != a.pid
    rescuer = _start_rescuer(h, "rescuer")
    killed_at = time.monotonic()
    a.send(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    wait_for(lambda: not _pid_alive(child), timeout=10, what="the orphaned child to die")
    _recovered(h, job, killed_at, "SIGKILL of a process-pool worker")
    rescuer.send(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output()
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
