"""Flow control (docs/flow-control.md) on real Redis and memory://: numeric priorities,
rate limits and concurrency caps in the claim script, deduplication in the put script."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from polling import wait_for
from worker_helpers import burst

from taskpipe import TaskPipe
from taskpipe.errors import ConfigError
from taskpipe.flow import parse_rate_limit
from taskpipe.serialization import decode_envelope
from taskpipe.thoonk.claiming import claim_from
from taskpipe.thoonk.flow import flow_state


def _claim_ids(app: TaskPipe, n: int = 100, channel: str | None = None) -> list[str]:
    return [c.id for c in app.channel(channel).claim(n)]


# priorities ------------------------------------------------------------------------------------
def test_numbered_priorities_drain_in_order(app: TaskPipe) -> None:
    @app.task(name="p")
    def p(x: Any) -> Any:
        return x

    published = []
    for prio in (5, 9, 0, 3, 0, 7, 1, 9, 2, 4, 8, 6):
        published.append((prio, p.apply_async((prio,), priority=prio).id))
    plain = p.delay("plain").id
    head = p.apply_async(("head",), priority=True).id
    order = _claim_ids(app)
    # unnumbered jobs first (Thoonk head-of-queue, then FIFO), then 0 .. 9, FIFO within a number
    expected = [head, plain] + [jid for _, jid in sorted(published, key=lambda t: t[0])]
    assert order == expected


def test_task_default_priority_and_map(app: TaskPipe) -> None:
    @app.task(name="low", priority=9)
    def low(x: Any) -> Any:
        return x

    @app.task(name="high", priority=0)
    def high(x: Any) -> Any:
        return x

    lows = [r.id for r in low.map(range(3))]
    highs = [r.id for r in high.map(range(3))]
    assert _claim_ids(app) == highs + lows


@pytest.mark.parametrize("bad", [10, -1, 5.0, "5", [1]])
def test_bad_priority_is_a_config_error(app: TaskPipe, bad: Any) -> None:
    @app.task(name="t")
    def t() -> None:
        return None

    with pytest.raises(ConfigError, match="priority"):
        t.apply_async(priority=bad)
    with pytest.raises(ConfigError, match="priority"):
        app.task(name="t2", priority=bad)(lambda: None)
    assert app.channel().counts()["available"] == 0


def test_numbered_job_sent_back_keeps_its_place(app: TaskPipe) -> None:
    @app.task(name="p")
    def p(x: Any) -> Any:
        return x

    a = p.apply_async((1,), priority=2).id
    b = p.apply_async((2,), priority=2).id
    c = p.apply_async((3,), priority=1).id
    ch = app.channel()
    first = ch.claim(1)[0]
    assert first.id == c
    ch.cancel(c, token=first.token)  # back through the list: re-sorted at the next claim
    d = p.apply_async((4,), priority=5).id
    assert _claim_ids(app) == [c, a, b, d]


def test_retract_removes_a_numbered_job(app: TaskPipe) -> None:
    @app.task(name="p")
    def p(x: Any) -> Any:
        return x

    a = p.apply_async((1,), priority=3).id
    b = p.apply_async((2,), priority=3).id
    ch = app.channel()
    ch.retract(a)
    assert ch.counts()["available"] == 1
    assert not app.connection.client.hexists(ch.keys.flow, a)
    assert _claim_ids(app) == [b]


def test_flow_specs_of_finished_jobs_are_dropped(app: TaskPipe) -> None:
    @app.task(name="p", concurrency=5)
    def p(x: Any) -> Any:
        return x

    for i in range(40):
        p.apply_async((i,), priority=i % 10)
    burst(app)
    ch = app.channel()
    client = app.connection.client
    assert ch.counts()["finished"] == 40
    # each claim sweeps a sample of feed.slots (at least 8): a few empty claims forget all 40
    for _ in range(10):
        if not client.exists(ch.keys.flow):
            break
        assert ch.claim(1) == []
    assert client.hlen(ch.keys.flow) == 0 and client.hlen(ch.keys.slots) == 0
    # a requeued numbered job keeps its spec (its place among numbered jobs)
    keep = p.apply_async(("k",), priority=1).id
    got = ch.claim(1)[0]
    ch.cancel(keep, token=got.token)
    assert ch.claim(1)[0].id == keep and client.hexists(ch.keys.flow, keep)


def test_eager_mode_checks_priority() -> None:
    eager = TaskPipe("eager", broker="memory://", eager=True)

    @eager.task(name="e", priority=2, unique=True)
    def e(x: int) -> int:
        return x * 2

    assert e.delay(2).get() == 4
    with pytest.raises(ConfigError, match="priority"):
        e.apply_async((1,), priority=11)
    eager.close()


def test_priority_jobs_run_through_a_worker(app: TaskPipe) -> None:
    seen: list[int] = []

    @app.task(name="rec")
    def rec(x: int) -> None:
        seen.append(x)

    for prio in (3, 1, 2):
        rec.apply_async((prio,), priority=prio)
    burst(app, concurrency=1, prefetch=0)
    assert seen == [1, 2, 3]
    assert app.channel().counts()["available"] == 0


# rate limits -----------------------------------------------------------------------------------
def test_parse_rate_limit() -> None:
    assert parse_rate_limit("100/s") == (10.0, 10, "100/s")
    assert parse_rate_limit("10/m") == (6000.0, 1, "10/m")
    assert parse_rate_limit("1000/h")[:2] == (3600.0, 100)
    assert parse_rate_limit("5/10s")[:2] == (2000.0, 1)
    for bad in ("100", "x/s", "0/s", "10/fortnight", 100, None, "10/0s"):
        with pytest.raises(ConfigError, match="rate_limit"):
            parse_rate_limit(bad)


def test_rate_limit_with_a_period_that_is_not_a_number_is_a_config_error() -> None:
    # the period's digits and dots were matched, then float() raised a bare ValueError
    for bad in ("5/1.2.3s", "5/.s", "5/..m"):
        with pytest.raises(ConfigError, match="rate_limit"):
            parse_rate_limit(bad)


def test_rate_limit_stops_the_claim_and_reports_the_next_slot(app: TaskPipe) -> None:
    @app.task(name="r", rate_limit="10/s")  # one per 100 ms, burst 1
    def r(x: Any) -> Any:
        return x

    @app.task(name="free")
    def free(x: Any) -> Any:
        return x

    ids = [r.delay(i).id for i in range(3)]
    other = free.delay(0).id
    ch = app.channel()
    claims, next_due, now = claim_from(app.thoonk, [ch], 10, 30_000, "w")
    # one rated job, then the unrated one behind the held ones; the held ones stay queued in order
    assert [c.id for c in claims] == [ids[0], other]
    assert next_due is not None and 0 < next_due - now <= 100
    assert ch.counts()["available"] == 2
    state = flow_state(ch, now)
    assert "t:r" in state["rate_waiting_ms"]
    wait_for(lambda: _claim_ids(app, 10) == [ids[1]], what="the next rate slot")


def test_channel_rate_limit_and_status(app: TaskPipe) -> None:
    @app.task(name="x")
    def x(i: Any) -> Any:
        return i

    app.set_limits(rate_limit="2/m", concurrency=5)
    x.map(range(4))
    ch = app.channel()
    assert len(_claim_ids(app)) == 1  # burst 1: the channel waits 30 s for the next one
    state = flow_state(ch, 0)
    assert state["rate_limit"] == "2/m" and state["concurrency"] == 5
    app.set_limits()  # cleared
    assert flow_state(ch, 0)["rate_limit"] is None
    assert len(_claim_ids(app)) == 3
    with pytest.raises(ConfigError):
        app.set_limits(rate_limit="fast")
    with pytest.raises(ConfigError):
        app.set_limits(concurrency=0)


# concurrency caps ------------------------------------------------------------------------------
def test_per_key_cap_released_by_finish_cancel_and_reap(app: TaskPipe) -> None:
    @app.task(name="c", concurrency=2, concurrency_key=lambda user, i: user)
    def c(user: str, i: int) -> None:
        return None

    ann = [c.delay("ann", i).id for i in range(5)]
    bob = c.delay("bob", 0).id
    ch = app.channel()
    got = ch.claim(10, lease_ms=30_000)
    assert [g.id for g in got] == [ann[0], ann[1], bob]
    assert flow_state(ch, 0)["running_by_group"] == {"k:c:ann": 2, "k:c:bob": 1}
    assert _claim_ids(app) == []  # ann is at its cap
    ch.finish(got[0].id, token=got[0].token)  # finish frees one slot
    assert _claim_ids(app) == [ann[2]]
    ch.cancel(got[1].id, token=got[1].token)  # a cancel frees one (the job goes to the back)
    third = ch.claim(10, lease_ms=1)  # a lease that is already over
    assert [t.id for t in third] == [ann[3]]
    assert _claim_ids(app) == []  # ann[2] and ann[3] hold both slots
    wait_for(lambda: ch.reap()[0] == [ann[3]], what="the expired lease to be reaped")
    # the reaped claim freed its slot: the next ann job in line starts
    assert _claim_ids(app) == [ann[4]]
    assert flow_state(ch, 0)["running_by_group"] == {"k:c:ann": 2, "k:c:bob": 1}


def test_channel_cap(app: TaskPipe) -> None:
    @app.task(name="y")
    def y(i: Any) -> Any:
        return i

    app.set_limits(concurrency=2)
    y.map(range(5))
    ch = app.channel()
    got = ch.claim(10)
    assert len(got) == 2 and _claim_ids(app) == []
    ch.finish(got[0].id, token=got[0].token)
    assert len(_claim_ids(app)) == 1


def test_flow_options_are_checked(app: TaskPipe) -> None:
    def f(user: str) -> None:
        return None

    for bad, match in (
        (dict(concurrency_key=lambda user: user), "concurrency="),
        (dict(concurrency=0), "concurrency"),
        (dict(concurrency=2, concurrency_key="user"), "callable"),
        (dict(rate_limit="lots"), "rate_limit"),
        (dict(unique=True, debounce="1s"), "one of"),
        (dict(unique_for="0s"), "positive"),
        # past Redis's expiry range: was a BrokerError (ResponseError) at the first publish
        (dict(unique_for=1e16), "at most"),
        (dict(debounce=1e16), "at most"),
    ):
        with pytest.raises(ConfigError, match=match):
            app.task(name="bad", **bad)(f)

    @app.task(name="k", concurrency=1, concurrency_key=lambda user: 1 / 0)
    def k(user: str) -> None:
        return None

    with pytest.raises(ConfigError, match="concurrency_key"):
        k.delay("x")

    @app.task(name="plain")
    def plain(x: int) -> None:
        return None

    for option in ("unique_for", "debounce"):
        with pytest.raises(ConfigError, match="at most"):
            options: dict[str, Any] = {option: 1e16}
            plain.apply_async((1,), **options)
    assert app.channel().counts()["available"] + app.channel().counts()["delayed"] == 0
    assert not plain.apply_async((1,), unique_for="36500d").deduplicated  # 100 years is fine


# deduplication ---------------------------------------------------------------------------------
def test_unique_while_unfinished(app: TaskPipe) -> None:
    @app.task(name="u", unique=True)
    def u(x: Any) -> Any:
        return x

    first = u.delay(1)
    again = u.delay(1)
    other = u.delay(2)
    assert first.dedup is None and not first.deduplicated
    assert again.dedup == "deduplicated" and again.id == first.id
    assert other.dedup is None and other.id != first.id
    burst(app)
    assert first.get(timeout=5) == 1
    later = u.delay(1)  # the holder finished: a new job
    assert later.dedup is None and later.id != first.id


def test_unique_key_and_window(app: TaskPipe) -> None:
    @app.task(name="w")
    def w(x: Any) -> Any:
        return x

    a = w.apply_async((1,), unique_for="1h", unique_key="report-42")
    b = w.apply_async((2,), unique_for="1h", unique_key="report-42")
    assert b.deduplicated and b.id == a.id
    burst(app)
    c = w.apply_async((3,), unique_for="1h", unique_key="report-42")
    assert c.deduplicated  # the window holds even after the job finished
    first = w.apply_async((4,), unique_for="50ms", unique_key="short")
    assert not first.deduplicated
    wait_for(
        lambda: not w.apply_async((5,), unique_for="50ms", unique_key="short").deduplicated,
        what="the window to end",
    )


def test_debounce_latest_wins(app: TaskPipe) -> None:
    @app.task(name="d", debounce="30s")
    def d(x: Any) -> Any:
        return x

    a = d.delay(1)
    b = d.delay(2)
    c = d.delay(3)
    assert a.dedup is None and b.dedup == c.dedup == "debounced"
    assert a.id == b.id == c.id
    ch = app.channel()
    assert ch.counts()["delayed"] == 1
    info = ch.info(a.id)
    assert info.state == "delayed"
    item = app.connection.client.hget(ch.keys.items, a.id)
    assert list(decode_envelope(item).args) == [3]


def test_debounce_runs_once_with_the_latest_arguments(app: TaskPipe) -> None:
    runs: list[int] = []

    @app.task(name="d2", debounce="50ms")
    def d2(x: int) -> int:
        runs.append(x)
        return x

    results = [d2.delay(i) for i in range(4)]  # no worker yet: the holder stays delayed
    assert {r.id for r in results} == {results[0].id}
    assert [r.dedup for r in results] == [None, "debounced", "debounced", "debounced"]
    burst(app)  # waits for the due job (within its block timeout), runs it once
    assert runs == [3] and results[0].get(timeout=5) == 3
    after = d2.delay(9)  # the holder ran: a new debounced job
    assert after.dedup is None and after.id != results[0].id


def test_dedup_in_publish_many(app: TaskPipe) -> None:
    @app.task(name="m")
    def m(x: Any) -> Any:
        return x

    results = app.publish_many([m.s(1).set(unique=True), m.s(1).set(unique=True), m.s(2)])
    assert results[1].deduplicated and results[1].id == results[0].id
    assert not results[2].deduplicated
    assert app.channel().counts()["available"] == 2


# legacy Thoonk clients --------------------------------------------------------------------------
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_legacy_client_claims_beside_numbered_jobs(app: TaskPipe) -> None:
    r: redis.Redis = app.connection.client
    ch = app.channel()
    k = ch.keys

    @app.task(name="n")
    def n(x: Any) -> Any:
        return x

    numbered = n.apply_async((0,), priority=0).id
    normal = n.delay("normal").id
    head = n.apply_async(("head",), priority=True).id
    # a legacy consumer pops feed.ids from the right: Thoonk's priority job, then the normal one
    assert r.rpop(k.ids) == head.encode()
    assert r.rpop(k.ids) == normal.encode()
    assert r.rpop(k.ids) is None  # numbered jobs live in feed.prio, which it does not read
    r.rpush(k.ids, normal, head)  # hand them back (head at the right end again)
    # a legacy producer's jobs (LPUSH normal, RPUSH priority) are claimed by taskpipe first
    legacy_normal, legacy_head = "legacy-normal", "legacy-head"
    r.hset(k.items, mapping={legacy_normal: b"x", legacy_head: b"y"})
    r.lpush(k.ids, legacy_normal)
    r.rpush(k.ids, legacy_head)
    assert _claim_ids(app) == [legacy_head, head, normal, legacy_normal, numbered]


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_rate_limited_worker_sleeps_instead_of_polling(app: TaskPipe) -> None:
    starts: list[int] = []

    @app.task(name="slowly", rate_limit="20/s")  # one per 50 ms, burst 2
    def slowly(i: int) -> None:
        sec, usec = app.connection.client.time()
        starts.append(sec * 1000 + usec // 1000)

    slowly.map(range(12))
    client: redis.Redis = app.connection.client
    before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    burst(app, concurrency=4)
    calls = client.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert len(starts) == 12
    # 12 jobs at 20/s with a burst of 2 take at least 10 intervals by the server clock
    assert max(starts) - min(starts) >= 300  # (500 ms of slots; a start may lag its claim)
    # a claim per slot, a finish per job, and a few wake-ups: a busy-polling worker would make
    # thousands of script calls in that half second
    assert calls < 12 * 8, calls


# requeue (docs/history.md) ---------------------------------------------------------------------
def test_a_requeued_job_keeps_its_tasks_flow_control(app: TaskPipe) -> None:
    # a job's flow spec is dropped once it finishes, and job_requeue put it back in the plain
    # list: `jobs requeue --all` of a capped (or rate-limited, or numbered) task's failures ran
    # them all at once, past the cap, and a numbered job lost its place
    @app.task(name="capped", concurrency=1, retries=0)
    def capped(i: int) -> None:
        raise ValueError("down")

    @app.task(name="late", priority=9)
    def late(i: int) -> None:
        raise ValueError("down")

    @app.task(name="plain")
    def plain(i: int) -> None:
        raise ValueError("down")

    jobs = [capped.delay(i) for i in range(3)] + [late.delay(0), plain.delay(0)]
    burst(app, concurrency=1, prefetch=0)
    assert all(j.state == "failed" for j in jobs)
    ch = app.channel()
    assert ch.counts()["available"] == 0
    for j in jobs:
        j.requeue()
    got = ch.claim(10, lease_ms=30_000)
    # the unnumbered jobs first (the cap lets one capped job through), the numbered one last
    assert [g.id for g in got] == [jobs[0].id, jobs[4].id, jobs[3].id]
    assert flow_state(ch, 0)["running_by_group"] == {"t:capped": 1}
    assert _claim_ids(app) == []  # the other two capped jobs wait for the slot
    ch.finish(got[0].id, token=got[0].token)
    assert _claim_ids(app) == [jobs[1].id]
