"""Worker-side guards (issue 17, item 6): an oversized envelope is stalled without being decoded,
the lease-renewal log line says only what is known, and outcomes lost to an evicting
``maxmemory-policy`` are reported when a finish finds its job gone.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from polling import wait_for
from redis_server import RedisServer
from worker_helpers import burst, worker_running

import taskpipe.worker.runner as runner
from taskpipe import TaskPipe, Worker
from taskpipe.serialization import decode_envelope, encode_envelope
from taskpipe.thoonk.job import JobChannel

pytestmark = pytest.mark.timeout(60)


def test_an_envelope_over_max_payload_is_stalled_undecoded(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    @app.task(name="record")
    def record(tag: str) -> str:
        runs.append(tag)
        return tag

    app.max_payload = 16_384
    huge = encode_envelope(
        "record", ("x" * 200_000,), {}, {}, serializer=app.serializer, max_size=None
    )
    app.channel(app.default_channel).put(huge, id="huge")
    neighbours = [record.delay(f"n{i}") for i in range(4)]
    decoded: list[int] = []
    real_decode = decode_envelope

    def spy(data: bytes) -> Any:
        decoded.append(len(data))
        return real_decode(data)

    monkeypatch.setattr(runner, "decode_envelope", spy)
    stats = burst(app)
    assert [r.get(timeout=10) for r in neighbours] == [f"n{i}" for i in range(4)]
    ch = app.channel(app.default_channel)
    assert ch.stalled_ids() == ["huge"]
    assert ch.stall_reason("huge").startswith("payload_too_large: ")
    assert "max_payload=16384" in ch.stall_reason("huge")
    assert len(huge) not in decoded and sorted(runs) == [f"n{i}" for i in range(4)]
    assert stats["stalled"] == 1 and stats["finished"] == 4


def _held_claim(app: TaskPipe, worker: Worker) -> Any:
    ch = app.channel(app.default_channel)
    ch.put(encode_envelope("t", (), {}, {}, serializer=app.serializer), id="j1")
    claim = ch.claim(1, 60_000, worker.name)[0]
    worker._running[(claim.channel, claim.id)] = claim
    return claim


def test_lease_renewal_failure_is_logged_as_what_is_known(
    app: TaskPipe, caplog: pytest.LogCaptureFixture
) -> None:
    w = Worker(app, heartbeat_interval=60.0)
    claim = _held_claim(app, w)
    app.channel(app.default_channel).retract(claim.id)  # gone while this worker still holds it
    with caplog.at_level(logging.WARNING, logger="taskpipe.worker"):
        w._renew(60_000)
        w._renew(60_000)  # once per claim, not per renewal
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "lease renewal of job default/j1 failed" in lines[0], lines
    assert "refused" not in lines[0]


def test_no_lease_warning_for_a_job_this_worker_just_finished(
    app: TaskPipe, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finisher wrote the outcome between the keeper's snapshot and its renewal."""
    w = Worker(app, heartbeat_interval=60.0)
    claim = _held_claim(app, w)
    real_extend = JobChannel.extend

    def finished_meanwhile(self: JobChannel, claims: Any, lease_ms: int = 0) -> list[str]:
        self.finish(claim.id, b"done", 60_000, token=claim.token)
        del w._running[(claim.channel, claim.id)]
        return real_extend(self, claims, lease_ms)

    monkeypatch.setattr(JobChannel, "extend", finished_meanwhile)
    with caplog.at_level(logging.WARNING, logger="taskpipe.worker"):
        w._renew(60_000)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


class _SeenWaiting(threading.Condition):
    """The worker's ``_slot`` (same lock), telling when someone waits on it."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_no_lease_warning_for_a_job_whose_outcome_is_being_settled(
    app: TaskPipe, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finisher wrote the outcome (the job is finished in Redis) but has not dropped the
    claim from ``_running`` yet when the renewal fails: the keeper waits for the finisher to
    settle what was handed to it, then finds the claim gone and says nothing."""
    w = Worker(app, heartbeat_interval=60.0)
    claim = _held_claim(app, w)
    slot = w._slot = _SeenWaiting(w._running_lock)
    real_extend = JobChannel.extend

    def written_not_settled(self: JobChannel, claims: Any, lease_ms: int = 0) -> list[str]:
        with w._running_lock:
            w._queued += 1  # handed to the finisher ...
        self.finish(claim.id, b"done", 60_000, token=claim.token)  # ... which wrote it
        return real_extend(self, claims, lease_ms)

    def finisher_tail() -> None:  # what the finisher does after its write, held back
        if slot.waiting.wait(30):  # until the keeper waits for it (the interleaving)
            with slot:
                del w._running[(claim.channel, claim.id)]
                w._settled += 1
                slot.notify_all()

    monkeypatch.setattr(JobChannel, "extend", written_not_settled)
    tail = threading.Thread(target=finisher_tail)
    tail.start()
    with caplog.at_level(logging.WARNING, logger="taskpipe.worker"):
        w._renew(60_000)
    tail.join(40)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert slot.waiting.is_set() and (claim.channel, claim.id) not in w._running


@pytest.fixture
def lru_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--maxmemory-policy", "allkeys-lru"]).start()
    yield server
    server.cleanup()


def test_a_finish_that_finds_its_job_evicted_is_a_warning(
    lru_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis evicts whole keys; deleting the channel's ``claimed`` set stands in for that."""
    app = TaskPipe(broker=lru_redis.url, prefix=prefix)
    release = threading.Event()

    @app.task(name="hold")
    def hold() -> str:
        release.wait(30)
        return "done"

    try:
        job = hold.delay()
        with (
            caplog.at_level(logging.WARNING, logger="taskpipe.worker"),
            worker_running(app, concurrency=1) as w,
        ):
            ch = app.channel(app.default_channel)
            wait_for(lambda: ch.info(job.id).state == "claimed", what="the claim")
            lru_redis.client().delete(ch.keys.claimed)  # evicted under memory pressure
            release.set()
            wait_for(lambda: w.writer.stats.get("evicted"), what="the finish to find it gone")
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "maxmemory-policy is 'allkeys-lru'" in text  # at start-up
        assert "these outcomes are lost" in text and job.id in text
        assert w.writer.stats.get("lease_lost", 0) == 0
    finally:
        app.close()


def test_a_job_sent_back_before_starts_only_once_held_outcomes_are_written(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job with a cancel count may be what killed a worker: before it starts, the worker
    writes the outcomes it holds, so a crash it causes cannot take a finished job's outcome
    with it (the innocent job would run again, and be stalled after ``max_cancels``)."""
    seen: dict[str, str] = {}

    @app.task(name="first")
    def first() -> str:
        return "done"

    @app.task(name="suspect")
    def suspect(first_id: str) -> str:
        seen["first"] = app.AsyncResult(first_id).state
        return "ok"

    ch = app.channel(app.default_channel)
    s = suspect.delay("first-job")
    claim = ch.get_claim(timeout=5)
    assert claim is not None and claim.id == s.id
    ch.cancel(claim.id, token=claim.token)  # sent back once: cancel count 1
    first.apply_async(id="first-job", priority=True)  # at the head: runs before the suspect

    from taskpipe.worker.outcomes import OutcomeWriter

    real_write = OutcomeWriter.write
    never = threading.Event()

    def slow_write(self: OutcomeWriter, outcomes: list[Any]) -> Any:
        if any(o.claim.id == "first-job" for o in outcomes):
            # the held outcome written late: a finisher that is behind (a loaded machine)
            # widens the window (the suspect's own outcome need not wait)
            never.wait(0.5)
        return real_write(self, outcomes)

    monkeypatch.setattr(OutcomeWriter, "write", slow_write)
    burst(app, concurrency=1)
    assert s.get(timeout=5) == "ok"
    assert seen["first"] == "finished"


def test_a_renewal_waits_for_the_finisher_once_per_pass(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewal finds several claims lost while the finisher has not settled what it was handed
    (after an outage it sleeps in its retry backoff): the keeper waits for it once per pass,
    a sixth of a lease in all, not a sixth of a lease per lost claim (six lost claims held the
    keeper a whole lease: no renewal, no presence check meanwhile). Clock: a fake one that
    moves only when the keeper waits."""
    w = Worker(app, heartbeat_interval=60.0, lease="6s")
    ch = app.channel(app.default_channel)
    for i in range(6):
        ch.put(encode_envelope("t", (), {}, {}, serializer=app.serializer), id=f"j{i}")
    for claim in ch.claim(6, 60_000, w.name):
        w._running[(claim.channel, claim.id)] = claim
        ch.retract(claim.id)  # lost while this worker still holds it
    w._queued += 1  # handed to the finisher, which never settles it here
    clock = [1000.0]
    waited: list[float] = []

    class Waits(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waited.append(timeout or 0.0)
            clock[0] += timeout or 0.0  # the wait runs out
            return False

    w._slot = Waits(w._running_lock)
    monkeypatch.setattr(
        "taskpipe.worker.keeper.time", types.SimpleNamespace(monotonic=lambda: clock[0])
    )
    w._renew(6_000)
    assert sum(waited) == pytest.approx(1.0), waited  # lease / 6, once


def test_the_keeper_holds_its_presence_before_it_renews(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keeper tick re-makes the worker's presence subscription before renewing leases: after
    a broker restart every subscription is gone, and a renewal can wait (for the finisher, for
    a slow Redis); a live worker not subscribed again within ``dead_after`` is judged dead by
    its peers and its claims are sent back (they run twice)."""
    w = Worker(app, heartbeat_interval=60.0)
    renewing, release = threading.Event(), threading.Event()
    held_before_renewal: list[bool] = []

    def stuck_renew(lease_ms: int) -> None:
        renewing.set()
        release.wait(30)

    monkeypatch.setattr(w, "_renew", stuck_renew)
    monkeypatch.setattr(
        w, "_hold_presence", lambda rejoin=False: held_before_renewal.append(not renewing.is_set())
    )
    monkeypatch.setattr(w, "_reap", lambda: None)
    keeper = threading.Thread(target=w._keeper)
    keeper.start()
    try:
        assert renewing.wait(30)
        assert held_before_renewal[:1] == [True], held_before_renewal
    finally:
        w._stopping.set()
        release.set()
        keeper.join(30)
    assert not keeper.is_alive()


class _WokenEvent(threading.Event):
    """An Event recording each wait: its timeout, and whether a ``set()`` cut it short."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[float, bool]] = []

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.waits.append((timeout or 0.0, woken))
        return woken


def test_a_claim_backoff_ends_when_the_keeper_reaches_the_broker(app: TaskPipe) -> None:
    """After failed claims the claim loop backs off (up to 5 s); the keeper, which tries Redis
    every tick, cuts the backoff short once Redis answers it: the worker claims again within a
    reaper tick of Redis coming back, not up to 5 s later."""
    w = Worker(app, heartbeat_interval=60.0, reaper_interval=0.05)
    w._broker_back = back = _WokenEvent()
    w._broker_failures = 9  # the claim loop has failed for a while: its next backoff is 5 s
    keeper = threading.Thread(target=w._keeper)
    keeper.start()
    try:
        w._broker_down(redis.exceptions.ConnectionError("refused"))  # the last failed claim
    finally:
        w._stopping.set()
        keeper.join(30)
    assert back.waits == [(5.0, True)]


def test_a_write_backoff_ends_when_the_keeper_reaches_the_broker(
    app: TaskPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finisher retries a write with a backoff (up to 2 s); the keeper cuts each long one
    short when Redis answers it, so outcomes are written a reaper tick after Redis is back."""
    w = Worker(app, heartbeat_interval=60.0, reaper_interval=0.05)
    w._broker_back = back = _WokenEvent()
    failures = [6]  # waits of 0.05, 0.1, 0.2, 0.4, 0.8 and 1.6 s, then the write goes through

    def write(outcomes: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise redis.exceptions.ConnectionError("refused")

    monkeypatch.setattr(w.writer, "write", write)
    keeper = threading.Thread(target=w._keeper)
    keeper.start()
    try:
        w._write_with_retry([])
    finally:
        w._stopping.set()
        keeper.join(30)
    assert failures == [0] and not w._writes_failing
    long_waits = [woken for timeout, woken in back.waits if timeout >= 0.4]
    assert long_waits and all(long_waits), back.waits
