"""Worker prefetch: jobs claimed ahead of free slots wait in a local buffer.

A pool thread that finishes a job starts the next buffered one at once; never more than
``concurrency`` tasks run at a time; at shutdown the buffered (never started) jobs go back to the
head of their queue in claim order with their cancel counts unchanged; ``prefetch=0`` claims
only for free slots. Runs on real Redis and ``memory://``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from polling import wait_for
from worker_helpers import burst, worker_running

from taskpipe import ConfigError, TaskPipe, Worker
from taskpipe.worker.worker import HELD_BUFFERS, SHORT_PREFETCH


def test_prefetch_never_runs_more_than_concurrency_at_once(app: TaskPipe) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    @app.task(channel="pf")
    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.002)
        with lock:
            state["now"] -= 1
        return i

    results = work.map(range(200))
    stats = burst(app, ["pf"], concurrency=3, prefetch=9)
    assert stats["finished"] == 200
    assert state["max"] <= 3
    assert [r.get(timeout=5) for r in results[:5]] == [0, 1, 2, 3, 4]


def test_claims_run_in_claim_order_with_one_thread(app: TaskPipe) -> None:
    seen: list[int] = []

    @app.task(channel="order")
    def rec(i: int) -> None:
        seen.append(i)

    rec.map(range(50))
    burst(app, ["order"], concurrency=1, prefetch=7)
    assert seen == list(range(50))


def test_shutdown_gives_prefetched_jobs_back_to_the_head_unstarted(app: TaskPipe) -> None:
    gate = threading.Event()
    started: list[int] = []

    @app.task(channel="held")
    def hold(i: int) -> int:
        started.append(i)
        gate.wait(10)
        return i

    results = hold.map(range(6))
    w = Worker(app, ["held"], concurrency=1, prefetch=3, heartbeat_interval=60, max_block=0.1)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    ch = app.channel("held")
    wait_for(
        lambda: started == [0] and len(w.running) == 4, what="one running job and 3 prefetched"
    )
    assert ch.counts()["claimed"] == 4 and ch.counts()["available"] == 2
    w.stop()
    wait_for(lambda: ch.counts()["available"] == 5, what="the prefetched jobs to be given back")
    gate.set()
    t.join(10)
    assert not t.is_alive()
    assert started == [0] and results[0].get(timeout=5) == 0
    for r in results[1:4]:
        info = r.info()
        assert info.state == "available" and info.cancel_count == 0 and info.worker == ""
    # back at the head, in their claim order, ahead of the two never claimed
    assert [c.id for c in ch.claim(5)] == [r.id for r in results[1:]]


def test_prefetch_zero_claims_only_for_free_slots(app: TaskPipe) -> None:
    gate = threading.Event()

    @app.task(channel="fair")
    def hold(i: int) -> int:
        gate.wait(10)
        return i

    hold.map(range(4))
    ch = app.channel("fair")
    try:
        with worker_running(app, ["fair"], concurrency=1, prefetch=0, max_block=0.1):
            wait_for(lambda: ch.counts()["claimed"] == 1, what="one claim")
            time.sleep(0.3)  # the loop has had time to claim more if it were going to
            assert ch.counts()["claimed"] == 1 and ch.counts()["available"] == 3
            gate.set()
    finally:
        gate.set()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_prefetch_is_a_config_error(app: TaskPipe, bad: Any) -> None:
    with pytest.raises(ConfigError, match="prefetch"):
        Worker(app, ["x"], prefetch=bad)
    assert Worker(app, ["x"], concurrency=3).prefetch == 6


def test_a_job_with_a_cancel_count_waits_for_a_free_slot(app: TaskPipe) -> None:
    gate = threading.Event()
    ran: list[str] = []

    @app.task(channel="cc")
    def step(tag: str) -> str:
        ran.append(tag)
        if tag == "slow":
            gate.wait(10)
        return tag

    ch = app.channel("cc")
    again = step.delay("again")
    claim = ch.claim(1)[0]
    ch.cancel(claim.id, token=claim.token)  # "again" now has cancel count 1
    slow = step.apply_async(args=("slow",), priority=True)  # runs first
    try:
        with worker_running(app, ["cc"], concurrency=1, prefetch=4, max_block=1.0) as w:
            wait_for(lambda: ran == ["slow"], what="the slow job to start")
            time.sleep(0.3)
            # not prefetched (a worker crash now would not count against it): still available
            assert again.info().state == "available" and len(w.running) == 1
            gate.set()
            assert again.get(timeout=10) == "again" and slow.get(timeout=10) == "slow"
            assert again.info().cancel_count == 0  # finished: its bookkeeping is gone
    finally:
        gate.set()


def test_claims_held_while_outcomes_are_written_are_capped(app: TaskPipe) -> None:
    """Finished jobs whose outcomes are not written yet stay held; the worker claims on while they
    are written (the next claim overlaps the write), up to two rounds of the pool plus
    ``HELD_BUFFERS`` short-job buffers, and no further until outcomes land."""

    @app.task(channel="cap")
    def noop(i: int) -> int:
        return i

    results = noop.map(range(400))
    gate = threading.Event()
    w = Worker(app, ["cap"], concurrency=1, heartbeat_interval=60, max_block=0.1)
    real_write = w.writer.write

    def write_when_let(outcomes: Any) -> None:
        gate.wait(30)
        real_write(outcomes)

    w.writer.write = write_when_let  # type: ignore[method-assign]
    cap = 2 * 1 + HELD_BUFFERS * SHORT_PREFETCH
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        wait_for(
            lambda: w.claimed_total >= cap and w.executing_count == 0 and w.prefetched_count == 0,
            what=f"{cap} jobs claimed and run, none written",
        )
        assert w.claimed_total == cap == len(w.running)
        assert app.channel("cap").counts()["claimed"] == cap
    finally:
        gate.set()
    assert [r.get(timeout=30) for r in results] == list(range(400))
    w.stop()
    t.join(10)
    assert not t.is_alive()
