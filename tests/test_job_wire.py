"""Job channels on the wire (real Redis only): key types, list directions, ms scores, payload
framing, and interoperability with clients that speak only the Thoonk v1 contract.

The "legacy" steps below are plain Redis commands, written exactly as thoonk.py 1.0 / thoonk.js
0.5 issue them (see docs/contract.md), so taskpipe and the original clients can share a channel.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pubsub_probe import Sub

from taskpipe.connection import Connection
from taskpipe.errors import LeaseLost
from taskpipe.thoonk.job import JobChannel
from taskpipe.thoonk.keys import JobKeys
from taskpipe.thoonk.thoonk import Thoonk

LONG = 30_000


@pytest.fixture
def thoonk(real_conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=real_conn, prefix=prefix)


@pytest.fixture
def r(real_conn: Connection) -> Iterator[redis.Redis]:
    """A plain redis-py client: what a legacy Thoonk client would hold."""
    client = real_conn.new_client()
    yield client
    client.close()


@pytest.fixture
def job(thoonk: Thoonk) -> JobChannel:
    return thoonk.job_channel("wire")


@pytest.fixture
def k(job: JobChannel) -> JobKeys:
    return job.keys


def now_ms() -> float:
    return time.time() * 1000


def assert_ms(score: Any) -> None:
    """A score in ms since the epoch, from the (same-host) Redis clock."""
    assert score is not None
    assert abs(float(score) - now_ms()) < 60_000, score


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def ktype(r: redis.Redis, key: str) -> str:
    return _text(r.type(key))


# legacy client steps (thoonk.py 1.0 / thoonk.js 0.5, v1 contract) -------------------------------
def legacy_create(r: redis.Redis, prefix: str, name: str) -> None:
    r.sadd(prefix + "feeds", name)
    r.hset(prefix + "feed.config:" + name, "type", "job")


def legacy_put(r: redis.Redis, k: JobKeys, item: bytes, priority: bool = False) -> str:
    jid = uuid.uuid4().hex
    pipe = r.pipeline(transaction=True)
    (pipe.rpush if priority else pipe.lpush)(k.ids, jid)
    pipe.incr(k.publishes)
    pipe.hset(k.items, jid, item)
    pipe.zadd(k.published, {jid: int(now_ms())})
    pipe.execute()
    return jid


def legacy_get(r: redis.Redis, k: JobKeys, timeout: int = 2) -> tuple[str, bytes, int] | None:
    popped = r.brpop([k.ids], timeout=timeout)
    if popped is None:
        return None
    jid = _text(popped[1])
    pipe = r.pipeline(transaction=True)
    pipe.zadd(k.claimed, {jid: int(now_ms())})
    pipe.hget(k.items, jid)
    pipe.hget(k.cancelled, jid)
    _, item, cancelled = pipe.execute()
    return jid, item, int(cancelled or 0)


def _watched(r: redis.Redis, k: JobKeys, jid: str, queue: Any) -> bool:
    """WATCH feed.claimed, check ZRANK, run the MULTI (retrying on a WATCH abort)."""
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.claimed)  # type: ignore[no-untyped-call]
                if pipe.zrank(k.claimed, jid) is None:
                    pipe.unwatch()
                    return False
                pipe.multi()
                queue(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


def legacy_finish(r: redis.Redis, k: JobKeys, jid: str, result: bytes | None = None) -> bool:
    def queue(pipe: Any) -> None:
        pipe.zrem(k.claimed, jid)
        pipe.hdel(k.cancelled, jid)
        pipe.incr(k.finishes)
        if result is not None:
            pipe.publish(k.ch_finish, jid.encode() + b"\0" + result)
        pipe.hdel(k.items, jid)
        pipe.zrem(k.published, jid)

    return _watched(r, k, jid, queue)


def legacy_cancel(r: redis.Redis, k: JobKeys, jid: str) -> bool:
    def queue(pipe: Any) -> None:
        pipe.hincrby(k.cancelled, jid, 1)
        pipe.lpush(k.ids, jid)
        pipe.zrem(k.claimed, jid)

    return _watched(r, k, jid, queue)


def legacy_retry(r: redis.Redis, k: JobKeys, jid: str) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.srem(k.stalled, jid)
    pipe.lpush(k.ids, jid)
    pipe.zadd(k.published, {jid: int(now_ms())})
    pipe.execute()


# layout ----------------------------------------------------------------------------------------
def test_registry_and_config(
    thoonk: Thoonk, job: JobChannel, r: redis.Redis, prefix: str, k: JobKeys
) -> None:
    assert k.ids == prefix + "feed.ids:wire"
    assert k.ch_finish == prefix + "job.finish:wire"
    assert ktype(r, prefix + "feeds") == "set"
    assert r.sismember(prefix + "feeds", "wire")
    assert ktype(r, k.config) == "hash"
    config = r.hgetall(k.config)
    assert config[b"type"] == b"job"
    assert config[b"schema"] == b"1"


def test_put_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    a = job.put(b"a")
    assert ktype(r, k.ids) == "list"
    assert r.lrange(k.ids, 0, -1) == [a.encode()]
    b = job.put(b"b")
    assert r.lindex(k.ids, 0) == b.encode()  # LPUSH: normal jobs enter on the left
    assert r.lindex(k.ids, -1) == a.encode()  # consumers pop the right: a is next
    p = job.put(b"p", priority=True)
    assert r.lindex(k.ids, -1) == p.encode()  # RPUSH: priority jobs go to the popping end
    assert r.lrange(k.ids, 0, -1) == [b.encode(), a.encode(), p.encode()]
    assert ktype(r, k.items) == "hash"
    assert r.hgetall(k.items) == {a.encode(): b"a", b.encode(): b"b", p.encode(): b"p"}
    assert ktype(r, k.published) == "zset"
    for jid in (a, b, p):
        assert_ms(r.zscore(k.published, jid))
    assert r.get(k.publishes) == b"3"
    assert not r.exists(k.claimed, k.stalled, k.cancelled, k.delayed)


def test_delayed_put_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    d = job.put(b"d", delay_ms=60_000)
    u = job.put(b"u", delay_ms=60_000, priority=True)
    assert r.llen(k.ids) == 0  # invisible to BRPOP until due
    assert ktype(r, k.delayed) == "zset"
    published = r.zscore(k.published, d)
    assert_ms(published)
    assert published is not None
    assert r.zscore(k.delayed, d) == pytest.approx(published + 60_000, abs=1000)
    assert ktype(r, k.urgent) == "set"
    assert r.smembers(k.urgent) == {u.encode()}
    assert r.hget(k.items, d) == b"d"


def test_claim_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    jid = job.put(b"x")
    c = job.claim(1, lease_ms=LONG, worker="host-1")[0]
    assert r.llen(k.ids) == 0
    assert ktype(r, k.claimed) == "zset"
    claimed_at = r.zscore(k.claimed, jid)
    assert_ms(claimed_at)
    assert claimed_at is not None
    assert r.zscore(k.leases, jid) == claimed_at + LONG  # same server clock reading
    assert r.hget(k.tokens, jid) == c.token.encode()
    counter, _, second = c.token.partition(":")
    assert r.get(k.fence) == counter.encode()  # token = <fence counter>:<server second>
    assert abs(int(second) - int(claimed_at) // 1000) <= 1
    assert r.hget(k.workers, jid) == b"host-1"
    assert r.hget(k.items, jid) == b"x"  # items hold the job for its whole life
    assert_ms(r.zscore(k.published, jid))


def test_cancel_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    jid = job.put(b"x")
    other = job.put(b"y")
    c = job.claim(1)[0]
    assert c.id == jid
    job.cancel(jid, token=c.token)
    assert ktype(r, k.cancelled) == "hash"
    assert r.hget(k.cancelled, jid) == b"1"
    assert r.lrange(k.ids, 0, -1) == [jid.encode(), other.encode()]  # LPUSH: back of the queue
    assert r.zscore(k.claimed, jid) is None
    assert r.zscore(k.leases, jid) is None
    assert r.hget(k.tokens, jid) is None and r.hget(k.workers, jid) is None


def test_stall_and_retry_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    jid = job.put(b"x")
    job.cancel(jid, token=job.claim(1)[0].token)
    job.stall(jid, "poison", token=job.claim(1)[0].token)
    assert ktype(r, k.stalled) == "set"
    assert r.smembers(k.stalled) == {jid.encode()}
    assert r.hget(k.reasons, jid) == b"poison"
    assert r.zscore(k.published, jid) is None
    assert r.zscore(k.claimed, jid) is None
    assert r.hget(k.cancelled, jid) == b"1"  # kept across the stall
    assert r.llen(k.ids) == 0
    job.retry(jid)
    assert r.smembers(k.stalled) == set()
    assert r.hget(k.reasons, jid) is None
    assert r.lindex(k.ids, 0) == jid.encode()
    assert_ms(r.zscore(k.published, jid))
    assert r.hget(k.cancelled, jid) is None  # reset by default


def test_finish_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    jid = job.put(b"x")
    c = job.claim(1)[0]
    job.cancel(jid, token=c.token)
    c = job.claim(1)[0]
    job.set_progress(jid, "1/1", token=c.token)
    job.finish(jid, b"ok", result_ttl_ms=60_000, token=c.token)
    for key in (k.items, k.cancelled, k.tokens, k.workers, k.progress):
        assert r.hget(key, jid) is None
    for key in (k.claimed, k.leases, k.published):
        assert r.zscore(key, jid) is None
    assert r.get(k.finishes) == b"1"
    assert ktype(r, k.finished) == "zset"
    assert_ms(r.zscore(k.finished, jid))
    assert k.result(jid) == job.thoonk.keys.prefix + "feed.result:wire:" + jid
    assert ktype(r, k.result(jid)) == "string"
    assert r.get(k.result(jid)) == b"ok"
    assert 0 < r.pttl(k.result(jid)) <= 60_000
    assert r.get(k.failures) is None
    jid2 = job.put(b"y")
    job.finish(jid2, b"err", result_ttl_ms=0, token=job.claim(1)[0].token, failed=True)
    assert r.get(k.failures) == b"1"
    assert not r.exists(k.result(jid2))  # TTL 0: not stored


def test_reap_layout(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    jid = job.put(b"x")
    other = job.put(b"y")
    job.claim(1, lease_ms=20)
    deadline = time.monotonic() + 5
    while not job.reap()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert r.lrange(k.ids, 0, -1) == [jid.encode(), other.encode()]
    assert r.hget(k.cancelled, jid) == b"1"
    assert r.zscore(k.claimed, jid) is None and r.zscore(k.leases, jid) is None


def test_retract_layout_and_event(job: JobChannel, r: redis.Redis, k: JobKeys, prefix: str) -> None:
    sub = Sub(r, prefix + "feed.retract:wire")
    try:
        jid = job.put(b"x")
        job.stall(jid, "why", token=job.claim(1)[0].token)
        job.log(jid, ["l"])
        job.retract(jid)
        assert sub.take(1) == [(prefix + "feed.retract:wire", jid.encode())]
    finally:
        sub.close()
    assert r.hget(k.items, jid) is None
    assert r.smembers(k.stalled) == set()
    assert r.hget(k.reasons, jid) is None
    assert not r.exists(k.log(jid))


def test_delete_removes_every_channel_key(
    thoonk: Thoonk, job: JobChannel, r: redis.Redis, prefix: str
) -> None:
    a = job.put(b"a")
    job.put(b"d", delay_ms=60_000, priority=True)
    job.stall(a, "x", token=job.claim(1)[0].token)
    job.put(b"c")
    job.claim(1)
    thoonk.delete("wire")
    assert not r.sismember(prefix + "feeds", "wire")
    assert r.keys(prefix + "feed.*") == []


# payload framing -------------------------------------------------------------------------------
def test_job_finish_payload_is_id_nul_result(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    sub = Sub(r, k.ch_finish)
    try:
        a, b, c, d = (job.put(b"x") for _ in range(4))
        claims = {cl.id: cl for cl in job.claim(4)}
        job.finish(a, b"plain", result_ttl_ms=60_000, token=claims[a].token)
        job.finish(b, b"with\0nul\0bytes", result_ttl_ms=60_000, token=claims[b].token)
        job.finish(c, token=claims[c].token)  # no result: nothing is published
        job.finish(d, b"not stored", result_ttl_ms=0, token=claims[d].token)
        got = sub.take(3)
        assert got == [
            (k.ch_finish, a.encode() + b"\0plain"),
            (k.ch_finish, b.encode() + b"\0with\0nul\0bytes"),
            (k.ch_finish, d.encode() + b"\0not stored"),
        ]
        assert sub.take(1, timeout=0.3) == []
    finally:
        sub.close()
    jid, _, result = got[1][1].partition(b"\0")  # receivers split on the first NUL
    assert (jid.decode(), result) == (b, b"with\0nul\0bytes")
    assert job.get_result(b) == b"with\0nul\0bytes"


def test_progress_and_log_events(job: JobChannel, r: redis.Redis, k: JobKeys, prefix: str) -> None:
    assert k.ch_events == prefix + "feed.jobevent:wire"
    sub = Sub(r, k.ch_events)
    try:
        jid = job.put(b"x")
        c = job.claim(1)[0]
        job.set_progress(jid, "2/5", token=c.token)
        job.log(jid, ["first", "sec\0ond"])
        assert sub.take(3) == [
            (k.ch_events, b"progress\0" + jid.encode() + b"\x002/5"),
            (k.ch_events, b"log\0" + jid.encode() + b"\0first"),
            (k.ch_events, b"log\0" + jid.encode() + b"\0sec\0ond"),
        ]
    finally:
        sub.close()
    assert r.hget(k.progress, jid) == b"2/5"
    assert ktype(r, k.log(jid)) == "list"
    assert r.lrange(k.log(jid), 0, -1) == [b"first", b"sec\0ond"]


# interoperability --------------------------------------------------------------------------------
def test_legacy_producer_taskpipe_consumer(thoonk: Thoonk, r: redis.Redis, prefix: str) -> None:
    legacy_create(r, prefix, "legacy")
    job = thoonk.job_channel(
        "legacy"
    )  # opens the legacy-created channel (type job, no schema field)
    k = job.keys
    a = legacy_put(r, k, b"first")
    b = legacy_put(r, k, b"second")
    p = legacy_put(r, k, b"urgent", priority=True)
    assert job.info(a).state == "available"
    assert job.get(timeout=2) == (p, b"urgent", 0)
    c = job.claim(1, worker="tp")[0]
    assert (c.id, c.item, c.cancel_count) == (a, b"first", 0)
    assert job.counts()["published_total"] == 3

    sub = Sub(r, k.ch_finish)
    try:
        job.finish(a, b"res\0ult", result_ttl_ms=60_000, token=c.token)
        job.finish(p, b"p-result")
        assert sub.take(2) == [
            (k.ch_finish, a.encode() + b"\0res\0ult"),
            (k.ch_finish, p.encode() + b"\0p-result"),
        ]
    finally:
        sub.close()
    # the legacy view after taskpipe's finish is what a legacy finish leaves
    assert r.hget(k.items, a) is None
    assert r.zscore(k.claimed, a) is None and r.zscore(k.published, a) is None
    assert r.get(k.finishes) == b"2"
    assert r.lrange(k.ids, 0, -1) == [b.encode()]
    # a legacy cancel count is honoured by taskpipe claims
    c = job.claim(1)[0]
    job.cancel(b, token=c.token)
    assert legacy_get(r, k) == (b, b"second", 1)


def test_taskpipe_producer_legacy_consumer(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    a = job.put(b"first")
    p = job.put(b"urgent", priority=True)
    b = job.put(b"second")
    got = legacy_get(r, k)
    assert got == (p, b"urgent", 0)
    assert job.info(p).state == "claimed"
    sub = Sub(r, k.ch_finish)
    try:
        assert legacy_finish(r, k, p, b"legacy\0result")
        assert sub.take(1) == [(k.ch_finish, p.encode() + b"\0legacy\0result")]
    finally:
        sub.close()
    # a legacy finish writes no finished index and no stored result
    assert job.info(p).state == "unknown"
    assert job.get_result(p) is None

    assert legacy_get(r, k) == (a, b"first", 0)
    assert legacy_cancel(r, k, a)
    assert job.get_failure_count(a) == 1
    assert r.lrange(k.ids, 0, -1) == [a.encode(), b.encode()]
    c = job.claim(1)[0]
    assert c.id == b
    job.stall(b, "for legacy retry", token=c.token)
    legacy_retry(r, k, b)
    assert job.info(b).state == "available"
    assert [x.id for x in job.claim(2)] == [a, b]
    counts = job.counts()
    assert (counts["published_total"], counts["finished_total"], counts["claimed"]) == (3, 1, 2)


def test_legacy_claims_have_no_lease(job: JobChannel, r: redis.Redis, k: JobKeys) -> None:
    jid = job.put(b"x")
    assert legacy_get(r, k) == (jid, b"x", 0)
    info = job.info(jid)
    assert info.state == "claimed" and info.lease_deadline_ms is None
    time.sleep(0.05)
    assert job.reap(max_cancels=1) == ([], [])  # never requeued by the reaper
    assert job.info(jid).state == "claimed"
    assert job.extend([(jid, "1")]) == [jid]  # no token to renew
    with pytest.raises(LeaseLost):
        job.finish(jid, b"r", token="1")
    job.set_progress(jid, "half")  # token-less calls work on legacy claims
    job.finish(jid, b"r", result_ttl_ms=60_000)
    assert job.get_result(jid) == b"r"


def test_legacy_finish_refuses_unclaimed_taskpipe_jobs(
    job: JobChannel, r: redis.Redis, k: JobKeys
) -> None:
    jid = job.put(b"x")
    job.stall(jid, token=job.claim(1)[0].token)
    assert not legacy_finish(r, k, jid, b"r")
    assert job.info(jid).state == "stalled"


def test_legacy_orphan_sweep_would_see_delayed_jobs_as_orphans(
    job: JobChannel, r: redis.Redis, k: JobKeys
) -> None:
    """Why legacy maintenance must not run beside taskpipe: its snapshot (items minus ids,
    claimed and stalled) counts delayed jobs as orphans and would LPUSH them before they are due.
    Claimed, stalled and available taskpipe jobs are all visible to it."""
    avail = job.put(b"a")
    claimed = job.put(b"c")
    stalled = job.put(b"s")
    delayed = job.put(b"d", delay_ms=60_000)
    claims = {c.id: c for c in job.claim(3)}
    job.cancel(avail, token=claims[avail].token)
    job.stall(stalled, token=claims[stalled].token)
    pipe = r.pipeline(transaction=True)
    pipe.hkeys(k.items)
    pipe.lrange(k.ids, 0, -1)
    pipe.zrange(k.claimed, 0, -1)
    pipe.smembers(k.stalled)
    items, ids, in_claimed, in_stalled = pipe.execute()
    orphans = set(items) - set(ids) - set(in_claimed) - set(in_stalled)
    assert orphans == {delayed.encode()}
    assert {avail, claimed, stalled} <= {x.decode() for x in items}


# flow control beside legacy clients (docs/flow-control.md) -------------------------------------
def test_legacy_client_beside_numbered_priorities(
    job: JobChannel, r: redis.Redis, k: JobKeys
) -> None:
    from taskpipe.thoonk.flow import PutFlow
    from taskpipe.thoonk.job import PutRequest

    numbered = [
        job.put_request(PutRequest(b"n%d" % p, f"num{p}", flow=PutFlow(priority=p))) for p in (7, 2)
    ]
    assert numbered == [True, True]
    mine_normal = job.put(b"mine-normal")
    mine_head = job.put(b"mine-head", priority=True)
    legacy_normal = legacy_put(r, k, b"legacy-normal")
    legacy_head = legacy_put(r, k, b"legacy-head", priority=True)
    # the legacy consumer sees the list as always: priority jobs (newest first), then FIFO
    got = [legacy_get(r, k) for _ in range(2)]
    assert [g[0] for g in got if g] == [legacy_head, mine_head]
    for jid, _, _ in (g for g in got if g):
        assert legacy_finish(r, k, jid, b"done")
    # numbered jobs are not in feed.ids: taskpipe claims the rest, numbered ones last, 2 then 7
    assert [c.id for c in job.claim(10)] == [mine_normal, legacy_normal, "num2", "num7"]
    assert r.llen(k.ids) == 0 and r.zcard(k.prio) == 0
