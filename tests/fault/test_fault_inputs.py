"""Bad input and producer-side faults, with real worker (and scheduler) subprocesses: oversized
and unserializable arguments and results, malformed entries written straight into a channel,
unknown task names during a rolling deploy, one id published by 50 threads, result expiry,
and several schedulers at once.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable

import msgpack
import pytest
from fault.harness import Fault, stop_all
from polling import wait_for

from taskpipe.errors import (
    PayloadTooLarge,
    ResultExpired,
    ResultTimeout,
    ResultUnknown,
    SerializationError,
    TaskFailed,
)

pytestmark = pytest.mark.timeout(90)

Figure = Callable[[str, str], None]


def _key_count(h: Fault) -> int:
    return sum(1 for _ in h.r.scan_iter(match=h.prefix + "*", count=1000))


# --- oversized and unserializable arguments ---------------------------------------------------------
def test_oversized_and_unserializable_arguments_write_nothing(fault: Fault, figure: Figure) -> None:
    """PayloadTooLarge / SerializationError are raised before anything is written."""
    h = fault
    h.app.channel()  # the channel itself exists already; no job data may be written
    before = _key_count(h)
    ch_before = h.app.channel().counts()
    with pytest.raises(PayloadTooLarge) as big:
        h.send("record", "x" * (10 * 1024 * 1024))
    sock = socket.socket()
    try:
        for bad in (object(), sock, {1, object()}, lambda: None):
            with pytest.raises(SerializationError):
                h.send("record", bad)
    finally:
        sock.close()
    assert _key_count(h) == before
    assert h.app.channel().counts() == ch_before
    assert not h.jobs
    figure("oversized payload", str(big.value))


# --- oversized and unserializable results --------------------------------------------------------------
def test_oversized_and_unserializable_results_fail_the_job(fault: Fault, figure: Figure) -> None:
    """The job is finished as failed with a PayloadTooLarge / SerializationError record (not left
    claimed), and the worker goes on."""
    h = fault
    big = h.send("big_result", 10 * 1024 * 1024)
    bad = h.send("bad_result")
    after = h.send("record", "after")
    w = h.worker("--burst", "-c", "1")
    assert w.wait() == 0, w.output()
    with pytest.raises(TaskFailed) as e_big:
        big.get(timeout=5)
    assert e_big.value.exc_type == "PayloadTooLarge"
    with pytest.raises(TaskFailed) as e_bad:
        bad.get(timeout=5)
    assert e_bad.value.exc_type == "SerializationError"
    assert after.get(timeout=5) == "after"
    assert h.r.zcard(h.app.channel().keys.leases) == 0
    figure("oversized result", f"{e_big.value.exc_type}: {e_big.value.exc_message[:90]}")
    h.check_invariants(expect={big.id: "failed", bad.id: "failed", after.id: "finished"})


# --- malformed entries written straight into a channel ------------------------------------------------
def test_malformed_entries_written_into_a_channel(fault: Fault, figure: Figure) -> None:
    """Each bad entry is stalled with ``bad_payload`` and its raw bytes kept; an id without a
    payload is dropped; the valid jobs around them all run and the worker keeps going."""
    h = fault
    ch = h.app.channel()
    k = ch.keys
    bad = {
        "garbage": b"\x00\xff\xfe garbage \x80",
        "plain-json": json.dumps({"task": "record", "args": ["x"]}).encode(),
        "missing-fields": b"TP\x01\x02" + json.dumps({"t": "record"}).encode(),
        "wrong-version": b"TP\x09\x01" + msgpack.packb({"t": "record", "a": [], "k": {}, "o": {}}),
        "not-a-map": b"TP\x01\x01" + msgpack.packb([1, 2, 3]),
        "a-result-record": b"TR\x01\x01" + msgpack.packb({"ok": True}),
        "empty": b"",
    }
    good = [h.send("record", "ok0")]
    for job_id, raw in bad.items():
        # what a legacy (thoonk.py v1) producer does: MULTI LPUSH ids, INCR, HSET items, ZADD
        pipe = h.r.pipeline(transaction=True)
        pipe.lpush(k.ids, job_id).incr(k.publishes).hset(k.items, job_id, raw)
        pipe.zadd(k.published, {job_id: int(time.time() * 1000)})
        pipe.execute()
        h.jobs[job_id] = ("default", 0, 0)
        good.append(h.send("record", f"ok{len(good)}"))
    h.r.lpush(k.ids, "ghost")  # an id whose payload is missing
    good.append(h.send("record", f"ok{len(good)}"))
    w = h.worker("--burst", "-c", "1")
    assert w.wait() == 0, w.output()
    assert [r.get(timeout=5) for r in good] == [f"ok{i}" for i in range(len(good))]
    for job_id, raw in bad.items():
        assert ch.info(job_id).state == "stalled"
        assert ch.stall_reason(job_id).startswith("bad_payload"), ch.stall_reason(job_id)
        assert ch.get_item(job_id) == raw  # kept for inspection
    assert ch.info("ghost").state == "unknown" and h.r.llen(k.ids) == 0
    errors = w.lines("stalled: bad_payload")
    assert len(errors) == len(bad), w.output()  # one line per bad entry, no error loop
    figure(
        "malformed entries",
        f"{len(bad)} bad entries stalled with bad_payload (raw bytes kept), "
        f"1 id without payload dropped, {len(good)} valid jobs run; e.g. {errors[0].split(': ', 2)[-1][:100]}",
    )
    h.check_invariants(expect={j: "stalled" for j in bad})


# --- unknown task names during a rolling deploy -------------------------------------------------------
def test_unknown_task_during_a_rolling_deploy(fault: Fault, figure: Figure) -> None:
    """A job for a task only the new release has is stalled ``unknown_task`` by an old worker
    (never dropped, never counted a success); ``retry`` once a new worker runs: it finishes."""
    h = fault
    old = h.worker("-c", "1")
    job = h.send("fault.v2", 21)
    payload = h.app.channel().get_item(job.id)
    wait_for(lambda: job.info().state == "stalled", what="the old worker to stall the job")
    reason = h.app.channel().stall_reason(job.id)
    assert reason == "unknown_task: fault.v2"
    assert h.app.channel().get_item(job.id) == payload and h.runs(job.id) == 0
    assert old.stop() == 0, old.output()
    new = h.worker("-c", "1", TP_FAULT_V2="1")
    h.app.channel().retry(job.id)
    assert job.get(timeout=30) == 42
    assert new.stop() == 0, new.output()
    figure("unknown task (rolling deploy)", f"stalled with {reason!r}, then retried: finished once")
    h.check_invariants(expect={job.id: "finished"})


# --- one id published by 50 threads -----------------------------------------------------------------
def test_one_id_published_by_50_threads(fault: Fault, figure: Figure) -> None:
    """Exactly one job: one payload, one queue entry, one execution."""
    h = fault
    start = threading.Barrier(50)
    handles: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            start.wait()
            handles.append(h.app.send("record", ("once",), id="the-one").id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and handles == ["the-one"] * 50
    k = h.app.channel().keys
    assert h.r.llen(k.ids) == 1 and h.r.hlen(k.items) == 1 and int(h.r.get(k.publishes) or 0) == 1
    h.jobs["the-one"] = ("default", 1, 1)
    w = h.worker("--burst")
    assert w.wait() == 0, w.output()
    assert h.app.AsyncResult("the-one").get(timeout=5) == "once"
    figure("one id published by 50 threads", f"1 job, 1 queue entry, {h.runs('the-one')} execution")
    h.check_invariants()


# --- result expiry ----------------------------------------------------------------------------------
def test_result_expiry(fault: Fault, figure: Figure) -> None:
    """A result kept 2 s: readable, then gone (ResultExpired, the job still reads finished);
    an unknown id is ResultUnknown; waiting on a job nobody runs times out as asked."""
    h = fault
    job = h.send("record", "short-lived", result_ttl=2)
    w = h.worker("--burst")
    assert job.get(timeout=30) == "short-lived"
    key = h.app.channel().keys.result(job.id)
    assert 0 < h.r.pttl(key) <= 2000
    stored = time.monotonic()
    wait_for(lambda: not h.r.exists(key), timeout=10, what="the result to expire")
    gone = time.monotonic() - stored
    assert w.wait() == 0, w.output()
    fresh = h.app.AsyncResult(job.id)
    with pytest.raises(ResultExpired):
        fresh.get(timeout=0)
    assert fresh.state == "finished" and fresh.info().finished_ms is not None
    with pytest.raises(ResultUnknown):
        h.app.AsyncResult("never-published").get(timeout=0)
    idle = h.app.send("record", ("nobody runs me",), channel="idle")
    t0 = time.monotonic()
    with pytest.raises(ResultTimeout):
        idle.get(timeout=0.5)
    waited = time.monotonic() - t0
    idle.retract()
    assert not [k for k in h.r.scan_iter(match=h.prefix + "feed.result:*")]
    figure(
        "result expiry",
        f"result_ttl 2 s: gone {gone:.2f} s after it was read; "
        f"get(timeout=0.5) on an idle job raised after {waited:.2f} s",
    )
    h.check_invariants(expect={job.id: "finished"})


# --- several schedulers at once ---------------------------------------------------------------------
@pytest.mark.slow
def test_several_schedulers_at_once(fault: Fault, figure: Figure) -> None:
    """Three schedulers fire an every-second entry (misfire="all"); the one that fired last is
    SIGKILLed midway. Every fire is enqueued and run exactly once, with no gap."""
    h = fault
    worker = h.worker("-c", "4", TP_FAULT_CRON="1")
    scheds = [
        h.worker("--takeover", "1s", command="scheduler", TP_FAULT_CRON="1") for _ in range(3)
    ]
    state_key = h.app.thoonk.keys.cron_state("tick")
    ch = h.app.channel()
    # three fires with all three schedulers up, then SIGKILL the one that fired last, then two
    # seconds of fires from the survivors (waits on the fires themselves, no fixed sleeps)
    wait_for(lambda: int(h.r.get(ch.keys.publishes) or 0) >= 3, what="three fires")
    leader = h.r.hget(state_key, "last_by").decode()
    victim = next(s for s in scheds if f".{s.pid}." in leader)
    victim.send(signal.SIGKILL)
    killed_ms = h.server_ms()
    wait_for(
        lambda: int(h.r.hget(state_key, "last_fire") or 0) >= killed_ms + 2000,
        what="the survivors' fires two seconds after the SIGKILL",
    )
    survivors = [s for s in scheds if s is not victim]
    for s, code in zip(survivors, stop_all(survivors)):
        assert code == 0, s.output()
    victim.wait()
    wait_for(
        lambda: ch.counts()["available"] == ch.counts()["claimed"] == 0, what="the fires to run"
    )
    assert worker.stop() == 0, worker.output()
    ids = sorted({*(x.decode() for x in h.r.zrange(ch.keys.finished, 0, -1)), *ch.get_ids()})
    fires = sorted(int(i.rsplit(":", 1)[1]) for i in ids if i.startswith("cron:tick:"))
    assert len(fires) >= 5, ids
    gaps = [b - a for a, b in zip(fires, fires[1:])]
    assert all(g == 1 for g in gaps), f"fires missing or doubled: {fires}"
    assert int(h.r.get(ch.keys.publishes) or 0) == len(fires)  # each fire enqueued once
    for i in ids:
        h.jobs[i] = ("default", 1, 1)
    after_kill = [f for f in fires if f * 1000 > killed_ms]
    late = [int(h.ledger.get(f"{h.prefix}stamp:cron:tick:{f}")) - f * 1000 for f in fires]
    figure(
        "three schedulers, leader SIGKILLed",
        f"{len(fires)} consecutive fires, each run once; "
        f"{len(after_kill)} fired after the kill, no gap; fire-to-run delay max {max(late)} ms "
        "(takeover 1 s)",
    )
    h.check_invariants()
