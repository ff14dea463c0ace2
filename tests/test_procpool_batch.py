"""The process pool's batched hand-off: many claims per message to a child, outcomes back in
batches, and its shutdown rules (jobs a child holds but has not started go back to the head of
the queue with their cancel counts unchanged; a child still running when the grace ends is
killed before its job is sent back). Real Redis, real child processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from test_worker_process import Harness, run_worker_in_thread

from taskpipe import Worker
from taskpipe.thoonk.claiming import claim_from
from taskpipe.worker import prochandle
from taskpipe.worker.procpool import ProcessPool
from taskpipe.worker.runner import Outcome, prepare

pytestmark = pytest.mark.timeout(90)

#: One more task in the harness's task module: runs until the test opens its gate.
GATE_TASK = """

@app.task(name="gate")
def gate(tag="gate"):
    _mark(tag)
    r.blpop(PREFIX + "gate", 60)
    return os.getpid()


@app.task(name="nop")
def nop(i):
    return i
"""


@pytest.fixture
def harness(
    tmp_path: Path, redis_server: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    h = Harness(tmp_path, redis_server.url, prefix, monkeypatch)
    h.add_source(GATE_TASK)
    yield h
    h.close()


def _open_gate(h: Harness) -> None:
    h.r.rpush(f"{h.prefix}gate", 1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_many_short_jobs_are_handed_over_in_batches(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    original = prochandle.ChildHandle.hand

    def counting_hand(self: Any, claims: list[Any]) -> str:
        sizes.append(len(claims))
        return original(self, claims)

    monkeypatch.setattr(prochandle.ChildHandle, "hand", counting_hand)
    results = [harness.send("record", f"j{i}") for i in range(120)]
    w = harness.process_worker(2, burst=True)
    assert w.run() == 0
    assert [r.get(timeout=10) for r in results] == [f"j{i}" for i in range(120)]
    assert sum(sizes) == 120 and max(sizes) > 1, sizes  # each job sent once, many per message
    assert len(sizes) < 120
    pids = {harness.flag("started", r.id) for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert w.writer.stats["finished"] == 120
    harness.check_ledger()


def test_unstarted_jobs_held_by_a_child_are_released_without_a_cancel_count(
    harness: Harness,
) -> None:
    """Drive the pool directly: six claims reach the child in one message; the first runs
    (until the gate opens) while ``unstarted`` asks for the rest back: ``release`` outcomes."""
    first = harness.send("gate", "first")
    rest = [harness.send("record", f"r{i}") for i in range(5)]
    channel = harness.app.channel()
    claims, _, _ = claim_from(harness.app.thoonk, [channel], 6, 30_000, "pool-test")
    assert [c.id for c in claims] == [first.id] + [r.id for r in rest]
    outcomes: list[Outcome] = []
    got = threading.Condition()

    def done(outcome: Outcome) -> None:
        with got:
            outcomes.append(outcome)
            got.notify_all()

    pool = ProcessPool(harness.app, 1, harness.app_path)
    try:
        with pool._cond:  # (re-entrant) all six are queued before the slot takes any
            for c in claims:
                pool.submit(prepare(harness.app, c), done)
        wait_for(lambda: harness.flag("started", first.id), what="the gate job to start")
        assert pool.unstarted(grace=30.0) == []  # none left in the pool: all in the child
        _open_gate(harness)
        with got:
            assert got.wait_for(lambda: len(outcomes) == 6, timeout=30), outcomes
    finally:
        pool.shutdown()
    kinds = {o.claim.id: o.kind for o in outcomes}
    assert kinds[first.id] == "success"
    assert all(kinds[r.id] == "release" for r in rest), kinds
    assert all(harness.runs(r.id) == 0 for r in rest)
    from taskpipe.worker.outcomes import OutcomeWriter

    writer = OutcomeWriter(harness.app)
    writer.write(outcomes)
    assert writer.stats["released"] == 5 and writer.stats["finished"] == 1
    for r in rest:  # back at the head of the queue, in order, cancel count unchanged
        assert harness.where("default", r.id) == ["available"]
        assert r.info().cancel_count == 0
    assert channel.counts()["available"] == 5
    w = Worker(harness.app, ["default"], concurrency=2, burst=True, heartbeat_interval=60)
    assert w.run() == 0
    assert [r.get(timeout=5) for r in rest] == [f"r{i}" for i in range(5)]
    harness.check_ledger()


def test_sigterm_drain_gives_back_claimed_jobs_unstarted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's view: a process-pool worker stopped while a long job runs lets that job
    finish (within the grace) and gives every other job it claimed back, cancel count 0."""
    first = harness.send("gate", "first")
    rest = [harness.send("record", f"r{i}") for i in range(6)]
    original = ProcessPool.unstarted

    def unstarted_then_open(self: ProcessPool, grace: float) -> list[Any]:
        out = original(self, grace)  # children asked to stop: now let the running job end
        _open_gate(harness)
        return out

    monkeypatch.setattr(ProcessPool, "unstarted", unstarted_then_open)
    w = harness.process_worker(1, grace="30s")
    t = run_worker_in_thread(w)
    wait_for(lambda: harness.flag("started", first.id), what="the gate job to start")
    w.stop()
    t.join(30)
    assert not t.is_alive()
    assert first.get(timeout=5) == harness.flag("started", first.id)
    for r in rest:
        assert harness.runs(r.id) == 0 and r.info().cancel_count == 0
        assert harness.where("default", r.id) == ["available"]
    assert w.writer.stats["cancelled"] == 0
    w2 = Worker(harness.app, ["default"], concurrency=2, burst=True, heartbeat_interval=60)
    assert w2.run() == 0
    assert [r.get(timeout=5) for r in rest] == [f"r{i}" for i in range(6)]
    harness.check_ledger()


def test_child_still_running_when_the_grace_ends_is_killed_before_the_job_goes_back(
    harness: Harness,
) -> None:
    job = harness.send("slow", 60.0, "long", max_runs=2)
    w = harness.process_worker(1, grace="0.5s")
    t = run_worker_in_thread(w)
    child = wait_for(lambda: harness.flag("started", job.id), what="the long job to start")
    w.stop()
    t.join(30)
    assert not t.is_alive()
    assert not _pid_alive(child)  # killed, not left running while the job is queued again
    info = job.info()
    # sent back once (by the pool's kill, or by the worker's leftover cancel right after it)
    assert info.cancel_count == 1 and harness.where("default", job.id) == ["available"]
    w2 = Worker(harness.app, ["default"], concurrency=1, burst=True, heartbeat_interval=60)
    assert w2.run() == 0
    assert job.get(timeout=5) == os.getpid()  # the rerun finishes at once (cancel count 1)
    harness.check_ledger()


def _pool_run(harness: Harness, jobs: list[Any], until: Any) -> tuple[ProcessPool, list[Outcome]]:
    """Claim ``jobs`` and hand them to a one-child pool in one message; wait for ``until``."""
    channel = harness.app.channel()
    claims, _, _ = claim_from(harness.app.thoonk, [channel], len(jobs), 30_000, "pool-test")
    assert [c.id for c in claims] == [j.id for j in jobs]
    outcomes: list[Outcome] = []
    got = threading.Condition()

    def done(outcome: Outcome) -> None:
        with got:
            outcomes.append(outcome)
            got.notify_all()

    pool = ProcessPool(harness.app, 1, harness.app_path)
    with pool._cond:  # (re-entrant) all are queued before the slot takes any
        for c in claims:
            pool.submit(prepare(harness.app, c), done)
    with got:
        assert got.wait_for(lambda: until(outcomes), timeout=30), outcomes
    return pool, outcomes


def test_an_outcome_does_not_wait_behind_a_long_job_in_the_same_child(harness: Harness) -> None:
    fast = [harness.send("nop", i) for i in range(4)]  # well under 2 ms in all: sent together
    gate = harness.send("gate", "gate")
    pool, outcomes = _pool_run(harness, [*fast, gate], lambda out: len(out) == 4)
    try:
        # the gate job is still running (its gate is closed): the fast jobs' outcomes came anyway
        assert [(o.claim.id, o.kind, o.value) for o in outcomes] == [
            (f.id, "success", i) for i, f in enumerate(fast)
        ]
        wait_for(lambda: harness.flag("started", gate.id), what="the gate job to start")
        assert len(outcomes) == 4  # its gate is still closed
        _open_gate(harness)
        wait_for(lambda: len(outcomes) == 5, what="the gate job's outcome")
    finally:
        pool.shutdown()
    assert outcomes[4].claim.id == gate.id and outcomes[4].kind == "success"
    assert harness.runs(gate.id) == 1


def test_a_hard_time_limit_counts_for_the_job_running_from_its_own_start(harness: Harness) -> None:
    fast = [harness.send("record", f"f{i}") for i in range(3)]
    spin = harness.send("spin")  # hard_timeout 0.5 s, CPU-bound: the child is killed
    after = harness.send("record", "after")
    pool, outcomes = _pool_run(harness, [*fast, spin, after], lambda out: len(out) == 5)
    pool.shutdown()
    by_id = {o.claim.id: o for o in outcomes}
    assert [by_id[f.id].kind for f in fast] == ["success"] * 3  # not blamed, not run again
    assert by_id[spin.id].kind == "failure" and by_id[spin.id].exc_type == "JobTimeout"
    assert by_id[after.id].kind == "success" and by_id[after.id].value == "after"  # new child
    assert pool.restarts == 1
    assert all(harness.runs(j.id) == 1 for j in [*fast, spin, after])


def test_claims_cross_to_the_child_whole() -> None:
    """A claim goes to a child as ``claim_fields`` (a tuple, much cheaper to pickle than the
    dataclass) and comes back as the same claim: every field, in ``Claim``'s own order, so a
    field added to ``Claim`` cannot be dropped on the way."""
    import dataclasses
    import pickle

    from taskpipe.thoonk.job import Claim
    from taskpipe.worker.procchild import claim_fields

    claim = Claim("ch", "id1", b"TP\x01\x01item", 2, "tok", 3, 1_700_000_000_123, 1_700_000_000_001)
    fields = claim_fields(claim)
    assert fields == tuple(getattr(claim, f.name) for f in dataclasses.fields(Claim))
    assert Claim(*pickle.loads(pickle.dumps(fields))) == claim
