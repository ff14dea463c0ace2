"""Worker-side faults, each with real worker subprocesses and the invariant check at the end:
SIGKILL at three points of a job's life, SIGTERM with a short and a long grace, a poison job,
a lease lost while the task still runs, the connection killed at finish time, a worker whose
clock is 5 minutes off, and Redis down when a worker starts.

Leases are 1 s and the reaper runs every 0.5 s unless a test says otherwise.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fault.harness import Fault, RedisServer, free_port, stop_all
from polling import wait_for

pytestmark = pytest.mark.timeout(90)

Figure = Callable[[str, str], None]


# --- SIGKILL at three points ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "point", ["after_claim_before_run", "mid_task", "after_return_before_finish"]
)
def test_sigkill_at_three_points(fault: Fault, figure: Figure, point: str) -> None:
    """The killed worker's job is finished by a rescuer after lease + reaper: once if it had not
    started in the victim, exactly twice if it had (mid-task, or returned but not finished).
    (These were also in test_worker_crash.py; that file keeps the SIGKILL right after a claim.)"""
    h = fault
    others: list[Any] = []
    if point == "after_claim_before_run":
        job = h.send("slow", 0.2, max_runs=1)
        victim = h.worker("-c", "1", "--name", "victim", TP_FAULT_HOLD_RUN="1")
        wait_for(lambda: h.flag(f"claimed:{job.id}"), what="the claim to be held before the run")
        assert h.runs(job.id) == 0
    elif point == "mid_task":
        job = h.send("slow", 60.0, max_runs=2)
        others = [h.send("record", f"o{i}") for i in range(5)]  # queued behind it: they flow on
        victim = h.worker("-c", "1", "--name", "victim")
        wait_for(lambda: h.runs(job.id) == 1, what="the task to start in the victim")
    else:
        job = h.send("record", "dup", max_runs=2)
        victim = h.worker("-c", "1", "--name", "victim", TP_FAULT_HOLD_FINISH="1")
        wait_for(lambda: h.flag(f"returned:{job.id}"), what="the task to return")
        assert job.info().state == "claimed"
    rescuer = h.worker("-c", "2", "--name", "rescuer")
    h.wait_registered("rescuer")
    killed = time.monotonic()
    victim.send(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    value = job.get(timeout=30)
    recovery = time.monotonic() - killed
    assert value is not None
    runs = h.runs(job.id)
    pids = [pid for pid, _ in h.who_ran(job.id)]
    assert pids[-1] == rescuer.pid
    assert runs == (1 if point == "after_claim_before_run" else 2), runs
    assert [r.get(timeout=20) for r in others] == [f"o{i}" for i in range(len(others))]
    figure(
        f"SIGKILL {point.replace('_', ' ')}",
        f"recovered in {recovery:.2f} s (lease 1 s, reaper 0.5 s), runs {runs}",
    )
    assert rescuer.stop() == 0, rescuer.output()
    h.check_invariants(expect={job.id: "finished"})


# --- SIGTERM grace -------------------------------------------------------------------------------
@pytest.mark.parametrize("grace", ["short", "long"])
def test_sigterm_with_short_and_long_grace(fault: Fault, figure: Figure, grace: str) -> None:
    """Long grace: the running job finishes, queued ones stay queued. Short grace: the running
    job goes back to the queue at once (no lease wait) and another worker finishes it."""
    h = fault
    if grace == "long":
        job = h.send("slow", 1.0)
        queued = h.send("record", "queued")
        a = h.worker("-c", "1", "--grace", "30s")
        wait_for(lambda: h.runs(job.id) == 1, what="the job to start")
        signalled = time.monotonic()
        a.send(signal.SIGTERM)
        assert a.wait() == 0, a.output()
        figure(
            "SIGTERM long grace",
            f"worker exited {time.monotonic() - signalled:.2f} s after "
            "SIGTERM with its 1 s job finished",
        )
        assert job.get(timeout=1) == a.pid
        assert h.runs(queued.id) == 0 and queued.info().state == "available"
    else:
        job = h.send("slow", 60.0, max_runs=2)
        queued = None
        a = h.worker("-c", "1", "--grace", "0.3s")
        wait_for(lambda: h.runs(job.id) == 1, what="the job to start")
        signalled = time.monotonic()
        a.send(signal.SIGTERM)
        assert a.wait() == 0, a.output()
        released = time.monotonic() - signalled
        info = job.info()
        # still running in its thread: sent back behind the shutdown fence (docs/worker.md)
        assert info.state == "delayed" and info.cancel_count == 1, info
        figure(
            "SIGTERM short grace",
            f"60 s job sent back {released:.2f} s after SIGTERM "
            "(grace 0.3 s; available again after the 2 s fence; no lease wait)",
        )
    b = h.worker("--burst") if queued is not None else h.worker("-c", "1")
    if queued is not None:
        assert b.wait() == 0, b.output()
        assert queued.get(timeout=5) == "queued"
    else:
        assert job.get(timeout=20) == b.pid
        b.send(signal.SIGTERM)
        assert b.wait() == 0, b.output()
    h.check_invariants()


# --- poison job ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_poison_job_kills_its_worker_every_time(fault: Fault, figure: Figure) -> None:
    """Stalled with ``worker_lost`` after max_cancels + 1 deaths; the other jobs all run."""
    h = fault
    max_cancels = 2
    poison = h.send("poison", max_runs=max_cancels + 1)
    # an outcome may still be unwritten when the poison kills the worker (it is written after the
    # next claim may have started): such a job runs again, at least once, never lost
    others = [h.send("record", f"ok{i}", max_runs=2) for i in range(8)]
    deaths: list[int] = []
    stop = threading.Event()

    def supervisor() -> None:
        w = h.worker("-c", "1", TP_FAULT_MAX_CANCELS=str(max_cancels))
        while not stop.is_set():
            if not w.alive():
                deaths.append(w.wait())
                w = h.worker("-c", "1", TP_FAULT_MAX_CANCELS=str(max_cancels))
            time.sleep(0.05)
        w.stop()

    started = time.monotonic()
    sup = threading.Thread(target=supervisor, daemon=True)
    sup.start()
    try:
        assert [r.get(timeout=60) for r in others] == [f"ok{i}" for i in range(8)]
        wait_for(
            lambda: poison.info().state == "stalled", timeout=60, what="the poison job to stall"
        )
    finally:
        stop.set()
        sup.join(30)
    reason = h.app.channel().stall_reason(poison.id)
    assert reason.startswith("worker_lost"), reason
    assert h.runs(poison.id) == max_cancels + 1
    assert deaths == [-signal.SIGKILL] * (max_cancels + 1)
    figure(
        "poison job",
        f"{len(deaths)} worker deaths, stalled after "
        f"{time.monotonic() - started:.1f} s with {reason!r}",
    )
    h.check_invariants(expect={poison.id: "stalled"})


# --- a lease lost while the task still runs --------------------------------------------------------
def test_lease_lost_while_the_task_still_runs(fault: Fault, figure: Figure) -> None:
    """Worker A is frozen (SIGSTOP: a stop-the-world pause) past its lease; B's reaper requeues
    the job and B runs it. A wakes up while B still holds the job: A's finish is refused and
    logged, and B's outcome is the one that stands."""
    h = fault
    job = h.send("gated", max_runs=2)
    a = h.worker("-c", "1", "--name", "old-owner")
    wait_for(lambda: h.flag(f"started:{job.id}:1"), what="the first run to start in A")
    a.send(signal.SIGSTOP)
    frozen = time.monotonic()
    b = h.worker("-c", "1", "--name", "new-owner")
    wait_for(lambda: h.flag(f"started:{job.id}:2"), what="B to take the job over")
    taken_over = time.monotonic() - frozen
    assert h.flag(f"started:{job.id}:2") == b.pid
    first, second = h.who_ran(job.id)
    assert first[1] != second[1]  # a new fencing token
    a.send(signal.SIGCONT)
    wait_for(
        lambda: a.lines("lease renewal of job", job.id, "failed"),
        what="A to notice its lease is gone",
    )
    time.sleep(1.0)  # A's task still runs: about three more renewals
    assert len(a.lines("lease renewal of job", job.id, "failed")) == 1, (
        a.output()
    )  # logged once, no flood
    h.open_gate(f"{job.id}:1")  # A's task returns now, while B still runs the job
    wait_for(
        lambda: a.lines("finish of job", job.id, "refused"), what="A's refused finish in its log"
    )
    assert a.lines("claimed under another token")
    assert job.info().state == "claimed" and job.info().worker == "new-owner"
    h.open_gate(f"{job.id}:2")
    assert job.get(timeout=30) == b.pid  # the new owner's outcome stands
    figure(
        "lease lost while running",
        f"taken over {taken_over:.2f} s after the owner froze "
        "(lease 1 s); the old owner's finish was refused",
    )
    assert stop_all([a, b]) == [0, 0], (a.output(), b.output())
    h.check_invariants(expect={job.id: "finished"})


# --- the connection killed at finish time ----------------------------------------------------------
def _worker_client_ids(server: RedisServer, pid: int) -> list[int]:
    return [
        int(c["id"]) for c in server.client().client_list() if c.get("name") == f"tp-worker-{pid}"
    ]


@pytest.mark.parametrize("when", ["before_the_finish", "finish_in_flight"])
def test_connection_killed_at_finish_time(
    own_redis: Callable[..., RedisServer],
    make_fault: Callable[..., Fault],
    figure: Figure,
    when: str,
) -> None:
    """CLIENT KILL of every connection of the worker just as it writes a finish: the job ends
    finished exactly once (or is re-run once), never lost, and the worker goes on."""
    server = own_redis()
    h = make_fault(server.url)
    job = h.send("record", "kept", max_runs=2)
    w = h.worker("-c", "1", TP_FAULT_NAMED="1", TP_FAULT_HOLD_FINISH="1")
    wait_for(lambda: h.flag(f"returned:{job.id}"), what="the task to return")
    admin: Any = server.client()
    killed = 0
    if when == "before_the_finish":
        for cid in _worker_client_ids(server, w.pid):
            killed += admin.client_kill_filter(_id=cid)
        h.open_gate("finish")
    else:
        admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")  # the test unpauses
        try:
            h.open_gate("finish")

            def kill_the_held_finish() -> bool:
                """Kill the worker's scripts held by the pause until one was the finish (the
                keeper's lease renewals are held too, and may be the first ones seen)."""
                nonlocal killed
                for c in admin.client_list():
                    if (
                        c.get("name") == f"tp-worker-{w.pid}"
                        and c.get("cmd") == "evalsha"
                        and "b" in c.get("flags", "")
                    ):
                        killed += admin.client_kill_filter(_id=int(c["id"]))
                return bool(w.lines("writing outcomes failed"))

            wait_for(kill_the_held_finish, what="the finish to be sent, held and killed")
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
    assert killed >= 1
    assert job.get(timeout=30) == "kept"
    runs = h.runs(job.id)
    if when == "finish_in_flight":
        assert w.lines("writing outcomes failed"), w.output()  # the finish was retried
    later = h.send("record", "later")
    h.open_gate("finish")
    assert later.get(timeout=30) == "later"  # the worker goes on
    assert w.alive()
    figure(
        f"CLIENT KILL {when.replace('_', ' ')}",
        f"{killed} connection(s) killed; job finished, "
        f"runs {runs}; worker log: {len(w.lines('WARNING')) + len(w.lines('ERROR'))} warning/error lines",
    )
    assert w.stop() == 0, w.output()
    h.check_invariants(expect={job.id: "finished", later.id: "finished"})


# --- a worker whose clock is 5 minutes off ---------------------------------------------------------
def test_worker_clock_five_minutes_off(fault: Fault, figure: Figure) -> None:
    """Workers at +300 s and -300 s: a delayed job runs neither early nor 5 minutes late, and a
    job outliving its lease on the slow-clock worker is never reaped by the fast-clock one (due
    times and leases use Redis TIME). Both still show in the worker registry."""
    h = fault
    slow_clock = h.worker("-c", "2", "--name", "behind", skew=-300)
    long_job = h.send("nap", 3.0, "long")
    wait_for(lambda: long_job.info().worker == "behind", what="the long job on the -300 s worker")
    fast_clock = h.worker("-c", "2", "--name", "ahead", skew=300)
    wait_for(
        lambda: b"ahead" in h.r.zrange(h.app.thoonk.keys.workers_registry(), 0, -1),
        what="the +300 s worker to start",
    )
    delayed = h.send("stamp", delay=2)
    info = delayed.info()
    assert info.state == "delayed" and info.due_ms is not None and info.published_ms is not None
    assert delayed.get(timeout=30) in (slow_clock.pid, fast_clock.pid)
    assert long_job.get(timeout=30) == "long"
    started = int(h.ledger.get(f"{h.prefix}stamp:{delayed.id}") or 0)
    late = started - info.due_ms
    assert started >= info.published_ms + 2000, "the delayed job ran early"
    assert late < 300_000, "the delayed job ran 5 minutes late"
    assert h.runs(long_job.id) == 1 and long_job.info().cancel_count == 0
    # no reap ("lease of job ... expired"); a renewal racing the job's own finish may warn that
    # the job is "no longer claimed", which the two lines above show it was not reaped
    for w in (slow_clock, fast_clock):
        assert not w.lines("lease of job", "expired"), w.output()
    h.wait_registered("ahead")
    h.wait_registered("behind")
    figure(
        "worker clock +-300 s",
        f"delayed job (2 s) started {late} ms after its due time; "
        "a 3 s job under a 1 s lease was never reaped",
    )
    assert stop_all([slow_clock, fast_clock]) == [0, 0], (slow_clock.output(), fast_clock.output())
    h.check_invariants()


# --- Redis down when a worker starts ----------------------------------------------------------------
def test_redis_down_when_the_worker_starts(
    make_fault: Callable[..., Fault], figure: Figure, own_redis: Callable[..., RedisServer]
) -> None:
    """The worker keeps retrying with a capped backoff, logs a few lines (not one per try), and
    drains as soon as Redis is up."""
    port = free_port()
    h = make_fault(f"redis://127.0.0.1:{port}/0")
    w = h.worker("-c", "2")
    time.sleep(5)  # the outage being measured
    assert w.alive(), w.output()
    outage_lines = len(w.output().splitlines())
    own_redis(port=port)
    up = time.monotonic()
    job = h.send("record", "after the outage")
    assert job.get(timeout=30) == "after the outage"
    figure(
        "Redis down at worker start",
        f"{outage_lines} log lines in 5 s of outage; first job "
        f"done {time.monotonic() - up:.2f} s after Redis came up (backoff cap 5 s)",
    )
    assert outage_lines <= 5, w.output()
    assert w.stop() == 0, w.output()
    h.check_invariants()
