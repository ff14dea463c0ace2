"""Job channels: behaviour every broker must show (runs on real Redis and on memory://).

Covers put / claim / finish / cancel / stall / retry / retract / defer / extend / reap / promote,
ordering (FIFO, priority head, strict channel order, paused channels), delayed jobs, the
no-duplicate guarantee for custom ids, typed errors for wrong-state calls (with Redis left
untouched), lease fencing, results with a TTL and the finished index, progress and logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from taskpipe.connection import Connection
from taskpipe.errors import JobNotFound, LeaseLost, WrongJobState
from taskpipe.thoonk.claiming import HELD_BACK
from taskpipe.thoonk.job import Claim, FinishRequest, JobChannel, PutRequest, claim_from
from taskpipe.thoonk.thoonk import Thoonk

T = TypeVar("T")
LONG = 30_000  # a lease that never expires during a test


class _AnyInt:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int)


ANY_INT = _AnyInt()


# helpers ---------------------------------------------------------------------------------------
@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def job(thoonk: Thoonk) -> JobChannel:
    return thoonk.job_channel("jobs")


def snapshot(client: Any, prefix: str) -> dict[bytes, tuple[str, Any, bool]]:
    """Every key under the prefix with its type, full value and whether it has a TTL."""
    out: dict[bytes, tuple[str, Any, bool]] = {}
    for key in client.keys(prefix + "*"):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:  # pragma: no cover - the job layer writes no other types
            value = kind
        out[key] = (kind, value, client.pttl(key) > 0)
    return out


def server_ms(client: Any) -> int:
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def eventually(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.02) -> T:
    """Call ``fn`` until it returns something truthy (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_server_past(client: Any, ms: int) -> None:
    eventually(lambda: server_ms(client) >= ms)


def claim_one(ch: JobChannel, lease_ms: int = LONG, worker: str = "w1") -> Claim:
    claims = ch.claim(1, lease_ms=lease_ms, worker=worker)
    assert len(claims) == 1
    return claims[0]


def claimed_ids(ch: JobChannel, n: int) -> list[str]:
    out = []
    for _ in range(n):
        out.append(claim_one(ch).id)
    return out


# the basic life cycle ------------------------------------------------------------------------
def test_put_claim_finish_round_trip(thoonk: Thoonk, job: JobChannel) -> None:
    jid = job.put(b"payload")
    assert isinstance(jid, str) and len(jid) == 32
    info = job.info(jid)
    assert info.state == "available"
    assert info.published_ms is not None
    assert job.get_ids() == [jid]
    assert job.get_item(jid) == b"payload"
    assert job.counts()["available"] == 1

    c = job.claim(1, lease_ms=LONG, worker="alice")[0]
    assert (c.channel, c.id, c.item, c.cancel_count, c.attempts) == ("jobs", jid, b"payload", 0, 0)
    assert c.token
    info = job.info(jid)
    assert info.state == "claimed"
    assert info.worker == "alice"
    assert info.lease_deadline_ms is not None and info.lease_deadline_ms >= server_ms(thoonk.client)
    assert job.counts()["claimed"] == 1 and job.counts()["available"] == 0
    assert job.claim(1) == []  # nothing else to take

    job.finish(jid, b"the result", result_ttl_ms=60_000, token=c.token)
    info = job.info(jid)
    assert info.state == "finished"
    assert info.finished_ms is not None
    assert info.result_ttl_ms is not None and 0 < info.result_ttl_ms <= 60_000
    assert job.get_result(jid) == b"the result"
    assert job.get_item(jid) is None
    assert job.get_ids() == []
    counts = job.counts()
    assert counts == {
        "available": 0,
        "delayed": 0,
        "waiting": 0,
        "claimed": 0,
        "stalled": 0,
        "finished": 1,
        "published_total": 1,
        "finished_total": 1,
        "failed_total": 0,
    }


def test_get_returns_the_thoonk_triple(job: JobChannel) -> None:
    assert job.get(timeout=None) is None  # None = do not wait
    jid = job.put(b"x")
    got = job.get(timeout=2)
    assert got == (jid, b"x", 0)
    assert job.info(jid).state == "claimed"
    claim = job.get_claim(timeout=None)
    assert claim is None


def test_get_waits_for_a_put_from_another_thread(job: JobChannel) -> None:
    ids: list[str] = []

    def producer() -> None:
        time.sleep(0.2)
        ids.append(job.put(b"late"))

    t = threading.Thread(target=producer)
    t.start()
    got = job.get(timeout=10)
    t.join()
    assert got is not None and got[0] == ids[0] and got[1] == b"late"


def test_get_times_out_empty(job: JobChannel) -> None:
    assert job.get(timeout=0.2) is None


def test_failed_finish_counts_failures(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    job.finish(jid, b"boom", result_ttl_ms=60_000, token=c.token, failed=True)
    counts = job.counts()
    assert counts["failed_total"] == 1 and counts["finished_total"] == 1
    assert job.info(jid).state == "finished"


def test_str_items_are_stored_as_utf8(job: JobChannel) -> None:
    jid = job.put("héllo")
    assert job.get_item(jid) == "héllo".encode()
    assert claim_one(job).item == "héllo".encode()


# ordering ------------------------------------------------------------------------------------
def test_fifo_order(job: JobChannel) -> None:
    ids = [job.put(f"j{i}".encode()) for i in range(5)]
    assert claimed_ids(job, 5) == ids


def test_priority_jobs_go_to_the_head(job: JobChannel) -> None:
    a = job.put(b"a")
    b = job.put(b"b")
    p1 = job.put(b"p1", priority=True)
    p2 = job.put(b"p2", priority=True)
    # RPUSH puts each priority job at the head (the popping end): the latest one is first.
    assert claimed_ids(job, 4) == [p2, p1, a, b]


def test_batch_claim_keeps_order(job: JobChannel) -> None:
    ids = [job.put(b"x") for _ in range(7)]
    claims = job.claim(5, lease_ms=LONG)
    assert [c.id for c in claims] == ids[:5]
    assert len({c.token for c in claims}) == 5
    assert [c.id for c in job.claim(5)] == ids[5:]


def test_put_many(job: JobChannel) -> None:
    out = job.put_many(
        [
            PutRequest(b"a", id="a"),
            PutRequest(b"b", id="b"),
            PutRequest(b"dup", id="a"),
            PutRequest(b"p", id="p", priority=True),
            PutRequest(b"d", id="d", delay_ms=60_000),
        ],
        batch=2,
    )
    assert out == [("a", True), ("b", True), ("a", False), ("p", True), ("d", True)]
    assert job.get_item("a") == b"a"
    assert job.info("d").state == "delayed"
    assert claimed_ids(job, 3) == ["p", "a", "b"]
    assert job.claim(1) == []
    assert job.put_many([]) == []
    generated = job.put_many([PutRequest(b"g")])
    assert len(generated) == 1 and generated[0][1] is True and len(generated[0][0]) == 32


def test_put_many_fresh_batches_keep_order_and_priority(thoonk: Thoonk, job: JobChannel) -> None:
    # runs of fresh ids go through job_put_fresh, the rest through job_put: order is kept across
    reqs = [
        PutRequest(b"f1"),
        PutRequest(b"f2"),
        PutRequest(b"c1", id="c1"),
        PutRequest(b"f3", fresh=True, id="0" * 32),
        PutRequest(b"h1", priority=True),
        PutRequest(b"h2", priority=True),
        PutRequest(b"late", delay_ms=60_000),
    ]
    out = job.put_many(reqs, batch=2)
    assert all(created for _, created in out) and out[2][0] == "c1" and out[3][0] == "0" * 32
    ids = [i for i, _ in out]
    assert claimed_ids(job, 6) == [ids[5], ids[4], ids[0], ids[1], "c1", "0" * 32]
    assert job.claim(1) == []
    assert job.info(ids[6]).state == "delayed"
    k = job.keys
    assert int(thoonk.client.get(k.publishes)) == 7
    assert thoonk.client.zcard(k.published) == 7
    assert 1 <= thoonk.client.llen(k.wake) <= 64


def test_fresh_put_never_overwrites_an_existing_item(thoonk: Thoonk, job: JobChannel) -> None:
    job.put(b"orig", id="taken")
    req = PutRequest(b"other", id="taken", fresh=True)
    assert job.put_request(req) is False
    assert job.put_many([req, PutRequest(b"new", id="n1", fresh=True)]) == [
        ("taken", False),
        ("n1", True),
    ]
    assert job.get_item("taken") == b"orig"
    assert claimed_ids(job, 2) == ["taken", "n1"]
    assert job.claim(1) == []


def test_fresh_put_wake_list_stays_bounded(thoonk: Thoonk, job: JobChannel) -> None:
    for _ in range(3):
        job.put_many([PutRequest(b"x")] * 1000, batch=1000)
    for _ in range(80):
        job.put(b"y")
    assert thoonk.client.llen(job.keys.wake) == 64
    counts = job.counts()
    assert counts["available"] == 3080 and counts["published_total"] == 3080


# custom ids are never doubled ------------------------------------------------------------------
def _into_state(job: JobChannel, state: str, jid: str) -> None:
    if state == "delayed":
        job.put(b"orig", id=jid, delay_ms=60_000)
        return
    job.put(b"orig", id=jid)
    if state in ("claimed", "stalled"):
        c = claim_one(job)
        assert c.id == jid
        if state == "stalled":
            job.stall(jid, "parked", token=c.token)


@pytest.mark.parametrize("state", ["available", "delayed", "claimed", "stalled"])
def test_custom_id_is_not_doubled(thoonk: Thoonk, job: JobChannel, prefix: str, state: str) -> None:
    _into_state(job, state, "order-42")
    assert job.info("order-42").state == state
    before = snapshot(thoonk.client, prefix)
    assert job.put_new(b"other", id="order-42") == ("order-42", False)
    assert job.put_new(b"other", id="order-42", priority=True) == ("order-42", False)
    assert job.put_new(b"other", id="order-42", delay_ms=10) == ("order-42", False)
    assert job.put("other", id="order-42") == "order-42"
    assert job.put_many([PutRequest(b"other", id="order-42")]) == [("order-42", False)]
    assert snapshot(thoonk.client, prefix) == before
    assert job.get_item("order-42") == b"orig"
    assert job.counts()["published_total"] == 1


def test_custom_id_can_be_reused_once_finished(job: JobChannel) -> None:
    job.put(b"one", id="x")
    c = claim_one(job)
    job.finish("x", token=c.token)
    assert job.put_new(b"two", id="x") == ("x", True)
    assert job.info("x").state == "available"
    assert claim_one(job).item == b"two"


# delayed jobs --------------------------------------------------------------------------------
def test_delayed_job_is_claimable_only_when_due(thoonk: Thoonk, job: JobChannel) -> None:
    jid = job.put(b"later", delay_ms=200)
    info = job.info(jid)
    assert info.state == "delayed"
    assert info.due_ms is not None
    assert job.counts()["delayed"] == 1
    assert job.get_ids() == [jid]
    due = info.due_ms

    claims, next_due, now = claim_from(thoonk, [job], 1, LONG, "w")
    if now < due:  # decided by the server's clock, so no timing assumption is needed
        assert claims == []
        assert next_due == due
        assert job.info(jid).state == "delayed"

    seen: list[tuple[list[Claim], int]] = []

    def attempt() -> bool:
        got, _, at = claim_from(thoonk, [job], 1, LONG, "w")
        seen.append((got, at))
        return bool(got)

    eventually(attempt)
    got, at = seen[-1]
    assert [c.id for c in got] == [jid]
    assert at >= due  # it became claimable only once the server clock reached the due time
    assert all(not g for g, _ in seen[:-1])
    assert job.counts()["delayed"] == 0


def test_delayed_priority_job_goes_to_the_head_when_due(thoonk: Thoonk, job: JobChannel) -> None:
    a = job.put(b"a")
    d = job.put(b"d", priority=True, delay_ms=200)
    due = job.info(d).due_ms
    assert due is not None
    wait_server_past(thoonk.client, due)
    assert [c.id for c in job.claim(2)] == [d, a]


def test_eta_is_an_absolute_due_time(thoonk: Thoonk, job: JobChannel) -> None:
    now = server_ms(thoonk.client)
    past = job.put(b"past", eta_ms=now - 1000)
    assert job.info(past).state == "available"
    future = job.put(b"future", eta_ms=now + 60_000)
    info = job.info(future)
    assert info.state == "delayed" and info.due_ms == now + 60_000
    assert [c.id for c in job.claim(5)] == [past]


def test_promote(thoonk: Thoonk, job: JobChannel) -> None:
    assert job.promote() == (0, None)
    jid = job.put(b"x", delay_ms=200)
    due = job.info(jid).due_ms
    assert due is not None
    moved, nxt = job.promote()
    if moved == 0:
        assert nxt == due
    wait_server_past(thoonk.client, due)
    moved2, nxt2 = job.promote()
    assert moved + moved2 == 1
    assert nxt2 is None
    assert job.info(jid).state == "available"
    assert job.counts()["available"] == 1


def test_blocking_get_picks_up_a_delayed_job_when_due(job: JobChannel) -> None:
    jid = job.put(b"later", delay_ms=200)
    got = job.get(timeout=10)
    assert got is not None and got[0] == jid
    info = job.info(jid)
    assert info.state == "claimed" and info.due_ms is None


def test_promote_moves_due_jobs_in_due_order_up_to_the_limit(
    thoonk: Thoonk, job: JobChannel
) -> None:
    now = server_ms(thoonk.client)
    third = job.put(b"3", eta_ms=now + 300)
    first = job.put(b"1", eta_ms=now + 100)
    second = job.put(b"2", eta_ms=now + 200)
    later = job.put(b"later", eta_ms=now + 60_000)
    wait_server_past(thoonk.client, now + 300)
    assert job.promote(limit=2) == (2, now + 300)
    assert job.promote(limit=2) == (1, now + 60_000)
    assert [c.id for c in job.claim(5)] == [first, second, third]
    assert job.info(later).state == "delayed"


def test_claim_caps_its_promote_limit_at_1000_like_promote(thoonk: Thoonk, job: JobChannel) -> None:
    now = server_ms(thoonk.client)
    ids = [i for i, _ in job.put_many([PutRequest(b"x", eta_ms=now + 60_000) for _ in range(1005)])]
    thoonk.client.zadd(job.keys.delayed, dict.fromkeys(ids, now - 1), xx=True)  # all due now
    # a huge promote limit moves at most 1000 due jobs per claim call, as job_promote does
    assert len(job.claim(1, promote_limit=1_000_000)) == 1
    assert thoonk.client.zcard(job.keys.delayed) == 5
    assert job.promote(limit=1_000_000) == (5, None)


# strict channel order and pause -----------------------------------------------------------------
def test_strict_channel_order(thoonk: Thoonk) -> None:
    high, low = thoonk.job_channel("high"), thoonk.job_channel("low")
    l1 = low.put(b"l1")
    h1 = high.put(b"h1")
    l2 = low.put(b"l2")
    h2 = high.put(b"h2")
    h3 = high.put(b"h3")
    claims, _, _ = claim_from(thoonk, [high, low], 2, LONG, "w")
    assert [(c.channel, c.id) for c in claims] == [("high", h1), ("high", h2)]
    claims, _, _ = claim_from(thoonk, [high, low], 2, LONG, "w")
    # high still had h3: it comes first, then the batch is filled from low
    assert [(c.channel, c.id) for c in claims] == [("high", h3), ("low", l1)]
    h4 = high.put(b"h4")
    claims, _, _ = claim_from(thoonk, [high, low], 1, LONG, "w")
    assert [(c.channel, c.id) for c in claims] == [("high", h4)]
    claims, _, _ = claim_from(thoonk, [high, low], 5, LONG, "w")
    assert [(c.channel, c.id) for c in claims] == [("low", l2)]


def test_strict_order_promotes_due_jobs_of_the_first_channel(thoonk: Thoonk) -> None:
    high, low = thoonk.job_channel("high"), thoonk.job_channel("low")
    low.put(b"l1")
    h = high.put(b"h", delay_ms=200)
    due = high.info(h).due_ms
    assert due is not None
    wait_server_past(thoonk.client, due)
    claims, _, _ = claim_from(thoonk, [high, low], 1, LONG, "w")
    assert [(c.channel, c.id) for c in claims] == [("high", h)]


def test_paused_channel_is_skipped(thoonk: Thoonk) -> None:
    high, low = thoonk.job_channel("high"), thoonk.job_channel("low")
    h = high.put(b"h")
    lo = low.put(b"l")
    assert high.paused is False
    high.pause()
    assert high.paused is True
    assert thoonk.get_config("high")["paused"] == "1"
    assert high.claim(1) == []
    claims, _, _ = claim_from(thoonk, [high, low], 5, LONG, "w")
    assert [(c.channel, c.id) for c in claims] == [("low", lo)]
    assert high.info(h).state == "available"
    # another Thoonk instance on the same Redis sees the pause (it lives in Redis)
    other = Thoonk(connection=thoonk.connection, prefix=thoonk.keys.prefix).job_channel("high")
    assert other.paused is True and other.claim(1) == []
    high.resume()
    assert high.paused is False
    assert "paused" not in thoonk.get_config("high")
    assert claim_one(high).id == h


# cancel, stall, retry, defer -------------------------------------------------------------------
def test_cancel_sends_the_job_to_the_back(job: JobChannel) -> None:
    a = job.put(b"a")
    b = job.put(b"b")
    c = claim_one(job)
    assert c.id == a
    assert job.cancel(a, token=c.token) == 1
    info = job.info(a)
    assert info.state == "available" and info.cancel_count == 1 and info.worker == ""
    assert job.get_failure_count(a) == 1
    assert claimed_ids(job, 1) == [b]
    again = claim_one(job)
    assert again.id == a and again.cancel_count == 1
    assert job.cancel(a) == 2  # no token: no fencing check
    assert job.get_failure_count(a) == 2


def test_batched_claim_drops_stale_and_doubled_ids(thoonk: Thoonk, job: JobChannel) -> None:
    a, b, c = job.put(b"a"), job.put(b"b"), job.put(b"c")
    k = job.keys
    thoonk.client.lpush(k.ids, a)  # a second copy of a waiting id (a legacy requeue)
    thoonk.client.lpush(k.ids, "ghost")  # an id with no item (retracted by a legacy client)
    claims = job.claim(10, lease_ms=LONG)
    assert [x.id for x in claims] == [a, b, c]
    tokens = [x.token for x in claims]
    counters = sorted(int(t.split(":")[0]) for t in tokens)
    assert counters == list(range(counters[0], counters[0] + 3))  # one fence number each
    assert thoonk.client.llen(k.ids) == 0 and job.claim(1) == []
    thoonk.client.lpush(k.ids, b)  # an id that is claimed already is not claimed twice
    assert job.claim(5) == [] and job.info(b).state == "claimed"


def test_a_job_with_cancels_is_never_prefetched(thoonk: Thoonk, job: JobChannel) -> None:
    a, b, c, d = (job.put(x) for x in (b"a", b"b", b"c", b"d"))
    first = claim_one(job)
    job.cancel(first.id, token=first.token)  # a: cancel count 1, now at the back
    # 1 free slot: b runs now, c and d are prefetched; a (count 1) at a prefetch position is
    # held back at the head and the claim stops there
    claims, nxt, _ = claim_from(thoonk, [job], 10, LONG, "w", run_now=1)
    assert [x.id for x in claims] == [b, c, d] and nxt == HELD_BACK
    e = job.put(b"e")
    assert claim_from(thoonk, [job], 5, LONG, "w", run_now=0) == ([], HELD_BACK, ANY_INT)
    assert job.info(a).state == "available" and job.info(e).state == "available"
    claims, nxt, _ = claim_from(thoonk, [job], 5, LONG, "w", run_now=1)  # a free slot: a runs
    assert [x.id for x in claims] == [a, e] and claims[0].cancel_count == 1


def test_finish_many_takes_an_id_once(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    req = FinishRequest(jid, c.token, b"r", 60_000)
    assert job.finish_many([req, req]) == [1, 0]
    assert job.counts()["finished_total"] == 1 and job.get_result(jid, timeout=0) == b"r"


def test_release_gives_unstarted_claims_back_to_the_head_in_order(job: JobChannel) -> None:
    ids = [job.put(x) for x in (b"a", b"b", b"c", b"d")]
    first = job.claim(3, lease_ms=LONG)
    assert [c.id for c in first] == ids[:3]
    other = job.put(b"e")
    assert job.release(
        [(c.id, c.token) for c in first[:2]] + [(first[2].id, "9:9"), ("nope", "")]
    ) == [1, 1, -1, 0]
    info = job.info(ids[0])
    assert info.state == "available" and info.cancel_count == 0 and info.worker == ""
    assert job.info(ids[2]).state == "claimed"  # wrong token: left alone
    assert claimed_ids(job, 4) == [ids[0], ids[1], ids[3], other]
    assert job.release([]) == []


def test_stall_and_retry(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    job.stall(jid, reason="bad payload", token=c.token)
    info = job.info(jid)
    assert info.state == "stalled" and info.reason == "bad payload"
    assert job.stalled_ids() == [jid]
    assert job.stall_reason(jid) == "bad payload"
    assert job.counts()["stalled"] == 1
    assert job.get_ids() == [jid]
    assert job.claim(1) == []  # never dispatched while stalled
    job.retry(jid)
    info = job.info(jid)
    assert info.state == "available" and info.reason == ""
    assert job.stalled_ids() == []
    assert claim_one(job).id == jid


def test_stall_keeps_the_cancel_count_and_retry_resets_it(job: JobChannel) -> None:
    jid = job.put(b"x")
    job.cancel(jid, token=claim_one(job).token)
    c = claim_one(job)
    job.defer(jid, token=c.token)  # one attempt
    c = claim_one(job)
    assert (c.cancel_count, c.attempts) == (1, 1)
    job.stall(jid, token=c.token)
    assert job.get_failure_count(jid) == 1  # unlike the original clients, stall keeps history
    assert job.info(jid).attempts == 1
    job.retry(jid)  # default: a fresh budget
    assert job.get_failure_count(jid) == 0
    assert job.info(jid).attempts == 0


def test_retry_can_keep_the_counters(job: JobChannel) -> None:
    jid = job.put(b"x")
    job.cancel(jid, token=claim_one(job).token)
    job.stall(jid, token=claim_one(job).token)
    job.retry(jid, reset_counts=False)
    assert job.get_failure_count(jid) == 1
    assert claim_one(job).cancel_count == 1


def test_retried_job_goes_to_the_back(job: JobChannel) -> None:
    s = job.put(b"s")
    job.stall(s, token=claim_one(job).token)
    a = job.put(b"a")
    job.retry(s)
    assert claimed_ids(job, 2) == [a, s]


def test_defer(thoonk: Thoonk, job: JobChannel) -> None:
    jid = job.put(b"v1")
    c = claim_one(job)
    assert job.defer(jid, token=c.token) == 1
    assert job.info(jid).state == "available"
    c = claim_one(job)
    assert c.attempts == 1 and c.item == b"v1"
    assert job.defer(jid, token=c.token, delay_ms=200, count_attempt=False, item=b"v2") == 1
    info = job.info(jid)
    assert info.state == "delayed" and info.due_ms is not None and info.attempts == 1
    assert job.get_item(jid) == b"v2"
    wait_server_past(thoonk.client, info.due_ms)
    c = claim_one(job)
    assert (c.id, c.item, c.attempts) == (jid, b"v2", 1)


def test_retract_from_every_state(job: JobChannel) -> None:
    for state in ("available", "delayed", "claimed", "stalled"):
        jid = f"r-{state}"
        _into_state(job, state, jid)
        assert job.info(jid).state == state
        job.retract(jid)
        assert job.info(jid).state == "unknown"
        assert job.get_item(jid) is None
    jid = job.put(b"f")
    c = claim_one(job)
    job.finish(jid, b"res", result_ttl_ms=60_000, token=c.token)
    job.log(jid, ["line"])
    job.retract(jid)
    assert job.info(jid).state == "unknown"
    assert job.get_result(jid) is None
    assert job.logs(jid) == []
    assert job.get_ids() == []
    assert job.claim(5) == []
    assert job.counts()["delayed"] == 0 and job.counts()["stalled"] == 0
    assert job.counts()["finished"] == 0


def test_retracted_claim_cannot_be_finished(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    job.retract(jid)
    with pytest.raises(JobNotFound):
        job.finish(jid, b"r", token=c.token)


# wrong-state calls -----------------------------------------------------------------------------
def _all_states(job: JobChannel) -> dict[str, str]:
    """One job in each state (the available one was cancelled once), plus an id never seen."""
    ids = {s: f"s-{s}" for s in ("stalled", "claimed", "finished", "available", "delayed")}
    _into_state(job, "stalled", ids["stalled"])
    _into_state(job, "claimed", ids["claimed"])
    job.put(b"done", id=ids["finished"])
    c = claim_one(job)
    job.finish(ids["finished"], b"r", result_ttl_ms=60_000, token=c.token)
    job.put(b"avail", id=ids["available"])
    job.cancel(ids["available"], token=claim_one(job).token)
    _into_state(job, "delayed", ids["delayed"])
    ids["unknown"] = "never-seen"
    for state, jid in ids.items():
        assert job.info(jid).state == state
    return ids


CLAIMED_OPS: dict[str, Callable[[JobChannel, str], Any]] = {
    "finish": lambda j, i: j.finish(i, b"res", result_ttl_ms=1000),
    "cancel": lambda j, i: j.cancel(i),
    "stall": lambda j, i: j.stall(i, "why"),
    "defer": lambda j, i: j.defer(i, delay_ms=10),
    "set_progress": lambda j, i: j.set_progress(i, "1/2"),
}


@pytest.mark.parametrize("op", sorted(CLAIMED_OPS))
def test_claimed_only_ops_refuse_other_states(
    thoonk: Thoonk, job: JobChannel, prefix: str, op: str
) -> None:
    ids = _all_states(job)
    fn = CLAIMED_OPS[op]
    for state in ("available", "delayed", "stalled", "finished", "unknown"):
        before = snapshot(thoonk.client, prefix)
        if state == "unknown":
            with pytest.raises(JobNotFound):
                fn(job, ids[state])
        else:
            with pytest.raises(WrongJobState) as err:
                fn(job, ids[state])
            assert type(err.value) is WrongJobState
            assert err.value.expected == "claimed"
            assert err.value.actual == state
            assert err.value.job_id == ids[state]
        assert snapshot(thoonk.client, prefix) == before, (op, state)


def test_retry_refuses_jobs_that_are_not_stalled(
    thoonk: Thoonk, job: JobChannel, prefix: str
) -> None:
    ids = _all_states(job)
    for state in ("available", "delayed", "claimed", "finished", "unknown"):
        before = snapshot(thoonk.client, prefix)
        if state == "unknown":
            with pytest.raises(JobNotFound):
                job.retry(ids[state])
        else:
            with pytest.raises(WrongJobState) as err:
                job.retry(ids[state])
            assert (err.value.expected, err.value.actual) == ("stalled", state)
        assert snapshot(thoonk.client, prefix) == before, state
    # none of the refused retries queued anything: only the one available job can be claimed
    assert [c.id for c in job.claim(10)] == [ids["available"]]


def test_retract_unknown_raises_and_changes_nothing(
    thoonk: Thoonk, job: JobChannel, prefix: str
) -> None:
    _all_states(job)
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(JobNotFound):
        job.retract("never-seen")
    assert snapshot(thoonk.client, prefix) == before


def test_job_not_found_is_a_key_error(job: JobChannel) -> None:
    with pytest.raises(KeyError):
        job.finish("nope")


# leases, fencing, the reaper ------------------------------------------------------------------
def test_extend_renews_a_lease(thoonk: Thoonk, job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job, lease_ms=300)
    first = job.info(jid).lease_deadline_ms
    assert first is not None
    assert job.extend([(jid, c.token)], lease_ms=LONG) == []
    renewed = job.info(jid).lease_deadline_ms
    assert renewed is not None and renewed > first
    wait_server_past(thoonk.client, first + 1)
    assert job.reap() == ([], [])
    assert job.info(jid).state == "claimed"
    assert job.extend([(jid, "not-the-token"), ("never-seen", "1")]) == [jid, "never-seen"]
    assert job.extend([]) == []
    job.finish(jid, token=c.token)


def test_reap_requeues_only_expired_leases(job: JobChannel) -> None:
    long_id = job.put(b"long")
    short_id = job.put(b"short")
    long_claim = claim_one(job, lease_ms=LONG)
    claim_one(job, lease_ms=50)
    reaped: list[str] = []

    def reap_short() -> bool:
        requeued, stalled = job.reap()
        assert stalled == []
        reaped.extend(requeued)
        return short_id in reaped

    eventually(reap_short)
    assert reaped == [short_id]
    assert long_claim.id == long_id and job.info(long_id).state == "claimed"
    info = job.info(short_id)
    assert info.state == "available" and info.cancel_count == 1 and info.worker == ""
    again = claim_one(job)
    assert again.id == short_id and again.cancel_count == 1


def test_reaper_stalls_after_max_cancels(job: JobChannel) -> None:
    jid = job.put(b"x")
    claim_one(job, lease_ms=20)
    assert eventually(lambda: job.reap(max_cancels=1)[0]) == [jid]
    claim_one(job, lease_ms=20)
    assert eventually(lambda: job.reap(max_cancels=1)[1]) == [jid]
    info = job.info(jid)
    assert info.state == "stalled"
    assert info.cancel_count == 2
    assert info.reason.startswith("worker_lost")
    assert job.stall_reason(jid).startswith("worker_lost")
    assert job.claim(1) == []


def test_fencing_refuses_the_old_owner(thoonk: Thoonk, job: JobChannel, prefix: str) -> None:
    jid = job.put(b"x")
    old = claim_one(job, lease_ms=30, worker="old")
    assert eventually(lambda: job.reap()[0]) == [jid]
    new = claim_one(job, worker="new")
    assert new.id == jid and new.token != old.token and new.cancel_count == 1

    before = snapshot(thoonk.client, prefix)
    for call in (
        lambda: job.finish(jid, b"stale", result_ttl_ms=60_000, token=old.token),
        lambda: job.cancel(jid, token=old.token),
        lambda: job.stall(jid, "stale", token=old.token),
        lambda: job.defer(jid, token=old.token),
        lambda: job.set_progress(jid, "9/9", token=old.token),
    ):
        with pytest.raises(LeaseLost):
            call()
        assert snapshot(thoonk.client, prefix) == before
    assert job.finish_many([FinishRequest(jid, old.token, b"stale", 60_000)]) == [-1]
    assert job.extend([(jid, old.token)]) == [jid]
    assert snapshot(thoonk.client, prefix) == before
    assert job.info(jid).worker == "new"

    job.finish(jid, b"fresh", result_ttl_ms=60_000, token=new.token)
    assert job.get_result(jid) == b"fresh"


def test_stale_token_after_reap_is_refused_before_reclaim(
    thoonk: Thoonk, job: JobChannel, prefix: str
) -> None:
    jid = job.put(b"x")
    old = claim_one(job, lease_ms=30)
    assert eventually(lambda: job.reap()[0]) == [jid]
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(WrongJobState):  # LeaseLost is a WrongJobState too
        job.finish(jid, b"stale", token=old.token)
    assert snapshot(thoonk.client, prefix) == before


def test_stale_token_after_reap_raises_lease_lost(job: JobChannel) -> None:
    jid = job.put(b"x")
    old = claim_one(job, lease_ms=30)
    assert eventually(lambda: job.reap()[0]) == [jid]
    with pytest.raises(LeaseLost):
        job.finish(jid, b"stale", token=old.token)


# results ---------------------------------------------------------------------------------------
def test_get_result_wakes_when_another_thread_finishes(thoonk: Thoonk, job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)

    def finisher() -> None:
        # finish once the waiter listens; result_ttl_ms=0 stores nothing, so the waiter can
        # only get it from the job.finish message
        eventually(
            lambda: (
                dict(thoonk.client.pubsub_numsub(job.keys.ch_finish)).get(
                    job.keys.ch_finish.encode(), 0
                )
                > 0
            ),
            timeout=10,
        )
        job.finish(jid, b"published only", result_ttl_ms=0, token=c.token)

    t = threading.Thread(target=finisher)
    t.start()
    try:
        assert job.get_result(jid, timeout=15) == b"published only"
    finally:
        t.join()
    assert job.get_result(jid) is None  # TTL 0: not stored
    assert job.info(jid).state == "finished"


def test_get_result_with_stored_result_from_thread(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    t = threading.Timer(
        0.2, lambda: job.finish(jid, b"stored", result_ttl_ms=60_000, token=c.token)
    )
    t.start()
    try:
        assert job.get_result(jid, timeout=15) == b"stored"
    finally:
        t.join()
    assert job.get_result(jid) == b"stored"


def test_get_result_of_an_unfinished_job(job: JobChannel) -> None:
    jid = job.put(b"x")
    assert job.get_result(jid) is None
    assert job.get_result(jid, timeout=0.2) is None
    assert job.get_result("never-seen", timeout=0.1) is None


def test_results_expire_but_the_job_stays_finished(job: JobChannel) -> None:
    short, long_ = job.put(b"s"), job.put(b"l")
    cs, cl = job.claim(2)
    job.finish(long_, b"kept", result_ttl_ms=60_000, token=cl.token)
    job.finish(short, b"gone soon", result_ttl_ms=200, token=cs.token)
    ttl = job.info(short).result_ttl_ms
    assert ttl is None or 0 < ttl <= 200
    eventually(lambda: job.get_result(short) is None)
    info = job.info(short)
    assert info.state == "finished" and info.finished_ms is not None
    assert info.result_ttl_ms is None
    assert job.get_result(long_) == b"kept"
    assert job.counts()["finished"] == 2
    assert job.info("never-seen").state == "unknown"


def test_reput_of_a_finished_id_forgets_the_old_result(job: JobChannel) -> None:
    job.put(b"one", id="x")
    c = claim_one(job)
    job.finish("x", b"old", result_ttl_ms=60_000, token=c.token)
    assert job.put_new(b"two", id="x") == ("x", True)
    assert job.info("x").state == "available"
    assert job.counts()["finished"] == 0
    assert job.get_result("x") is None


def test_finish_without_result(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    job.finish(jid, token=c.token)
    assert job.info(jid).state == "finished"
    assert job.get_result(jid) is None


def test_finish_many_codes(job: JobChannel) -> None:
    ids = [job.put(b"x") for _ in range(4)]
    claims = job.claim(3)
    codes = job.finish_many(
        [
            FinishRequest(ids[0], claims[0].token, b"r0", 60_000),
            FinishRequest(ids[1], "999999", b"r1", 60_000),  # wrong token
            FinishRequest(ids[3], "", b"r3", 60_000),  # not claimed
            FinishRequest(ids[2], claims[2].token, b"", 0, failed=True),
        ]
    )
    assert codes == [1, -1, 0, 1]
    assert [job.info(i).state for i in ids] == ["finished", "claimed", "finished", "available"]
    assert job.get_result(ids[0]) == b"r0"
    assert job.counts()["failed_total"] == 1
    assert job.finish_many([]) == []


def test_finish_many_with_a_follow_up_job(thoonk: Thoonk, job: JobChannel, prefix: str) -> None:
    nxt = thoonk.job_channel("next")
    jid = job.put(b"x")
    c = claim_one(job)
    codes = job.finish_many(
        [FinishRequest(jid, c.token, b"r", 60_000)], followup=(nxt, "follow-1", b"next item")
    )
    assert codes == [1, 1]
    assert job.info(jid).state == "finished"
    assert nxt.info("follow-1").state == "available"
    assert nxt.counts()["published_total"] == 1
    f = claim_one(nxt)
    assert (f.channel, f.id, f.item) == ("next", "follow-1", b"next item")

    # refused finish: the follow-up is not put either
    jid2 = job.put(b"y")
    c2 = claim_one(job)
    before = snapshot(thoonk.client, prefix)
    assert job.finish_many(
        [FinishRequest(jid2, "bad-token", b"r")], followup=(nxt, "follow-2", b"never")
    ) == [-1]
    assert snapshot(thoonk.client, prefix) == before
    assert nxt.info("follow-2").state == "unknown"

    # a follow-up id that already exists is not doubled
    nxt.put(b"already", id="follow-3")
    assert job.finish_many([FinishRequest(jid2, c2.token)], followup=(nxt, "follow-3", b"dup")) == [
        1,
        0,
    ]
    assert nxt.get_item("follow-3") == b"already"
    assert nxt.counts()["available"] == 1

    with pytest.raises(ValueError):
        job.finish_many([FinishRequest("a"), FinishRequest("b")], followup=(nxt, "z", b"z"))


# non-bytes items -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [5, {"a": 1}, None, 1.5, ["x"]])
def test_non_bytes_items_raise_before_anything_is_written(
    thoonk: Thoonk, job: JobChannel, prefix: str, bad: Any
) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(TypeError):
        job.put(bad)
    with pytest.raises(TypeError):
        job.put_new(bad, id="custom")
    with pytest.raises(TypeError):  # a bad item mid-batch: nothing of the batch is written
        job.put_many(
            [PutRequest(b"ok", id="ok1"), PutRequest(bad, id="bad"), PutRequest(b"ok", id="ok2")],
            batch=1,
        )
    if bad is not None:  # finish(result=None) means "no result"
        with pytest.raises(TypeError):
            job.finish(jid, bad, result_ttl_ms=60_000, token=c.token)
    assert snapshot(thoonk.client, prefix) == before
    assert job.info(jid).state == "claimed"


def test_finish_many_rejects_non_bytes_results(
    thoonk: Thoonk, job: JobChannel, prefix: str
) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(TypeError):
        job.finish_many([FinishRequest(jid, c.token, 5, 60_000)])  # type: ignore[arg-type]
    assert snapshot(thoonk.client, prefix) == before


def test_finish_many_rejects_a_non_bytes_follow_up_item(
    thoonk: Thoonk, job: JobChannel, prefix: str
) -> None:
    nxt = thoonk.job_channel("next")
    jid = job.put(b"x")
    c = claim_one(job)
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(TypeError):
        job.finish_many([FinishRequest(jid, c.token, b"r", 60_000)], followup=(nxt, "f", 7))  # type: ignore[arg-type]
    assert snapshot(thoonk.client, prefix) == before


# progress, logs, reads -------------------------------------------------------------------------
def test_progress(job: JobChannel) -> None:
    jid = job.put(b"x")
    c = claim_one(job)
    job.set_progress(jid, "3/10", token=c.token)
    assert job.info(jid).progress == "3/10"
    job.set_progress(jid, "4/10")
    assert job.info(jid).progress == "4/10"
    job.finish(jid, token=c.token)
    assert job.info(jid).progress == ""


def test_logs(thoonk: Thoonk, job: JobChannel) -> None:
    jid = job.put(b"x")
    assert job.log(jid, []) == 0
    assert job.log(jid, ["one", b"two"]) == 2
    assert job.logs(jid) == [b"one", b"two"]
    assert job.log(jid, ["3", "4", "5"], max_lines=3) == 3
    assert job.logs(jid) == [b"3", b"4", b"5"]
    assert job.logs(jid, 0, 0) == [b"3"]
    assert 0 < thoonk.client.pttl(job.keys.log(jid)) <= 7 * 24 * 3600 * 1000
    job.log(jid, ["six"], ttl_ms=60_000)
    assert 0 < thoonk.client.pttl(job.keys.log(jid)) <= 60_000
    c = claim_one(job)
    job.finish(jid, token=c.token)
    assert job.logs(jid)[-1] == b"six"  # logs outlive the job (until their TTL)
    assert job.logs("never-seen") == []


def test_reads_cover_every_state(job: JobChannel) -> None:
    ids = _all_states(job)
    assert sorted(job.get_ids()) == sorted(
        ids[s] for s in ("available", "delayed", "claimed", "stalled")
    )
    counts = job.counts()
    assert {k: counts[k] for k in ("available", "delayed", "claimed", "stalled", "finished")} == {
        "available": 1,
        "delayed": 1,
        "claimed": 1,
        "stalled": 1,
        "finished": 1,
    }
    assert counts["published_total"] == 5 and counts["finished_total"] == 1
    assert job.get_failure_count(ids["available"]) == 1
    assert job.get_failure_count("never-seen") == 0
    assert job.stalled_ids() == [ids["stalled"]]
    assert job.stall_reason(ids["available"]) == ""
    unknown = job.info("never-seen")
    assert (
        unknown.state,
        unknown.cancel_count,
        unknown.attempts,
        unknown.lease_deadline_ms,
        unknown.due_ms,
        unknown.finished_ms,
        unknown.published_ms,
        unknown.result_ttl_ms,
    ) == ("unknown", 0, 0, None, None, None, None, None)
