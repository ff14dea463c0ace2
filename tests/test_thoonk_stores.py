"""The Thoonk-layer homes of what used to send Redis commands from above (issue 19 item 1): the
cron store, the server clock, channel cleaning, paged reads, watches, the finish subscription,
the registry's server-time stamps and the pub/sub channel names. Real Redis and memory://."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from polling import wait_for

from taskpipe.connection import Connection
from taskpipe.errors import BrokerUnavailable
from taskpipe.thoonk.cron_store import CronStore
from taskpipe.thoonk.finish_watch import FinishSubscription
from taskpipe.thoonk.job import JobChannel
from taskpipe.thoonk.keys import EVENT_STEMS, Keyspace
from taskpipe.thoonk.thoonk import Thoonk
from taskpipe.thoonk.workers import WorkerRegistry

LONG_LEASE = 600_000


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def ch(thoonk: Thoonk) -> JobChannel:
    return thoonk.job_channel("jobs")


def _server_ms(client: Any) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _finish(ch: JobChannel, job_id: str, result: bytes = b"r") -> None:
    ch.put(b"x", id=job_id)
    claim = next(c for c in ch.claim(10, lease_ms=LONG_LEASE) if c.id == job_id)
    ch.finish(job_id, result, result_ttl_ms=LONG_LEASE, token=claim.token)


def _stall(ch: JobChannel, job_id: str) -> None:
    ch.put(b"x", id=job_id)
    claim = next(c for c in ch.claim(10, lease_ms=LONG_LEASE) if c.id == job_id)
    ch.stall(job_id, "bad", token=claim.token)


# the server clock --------------------------------------------------------------------------------
def test_server_ms_is_the_redis_clock(thoonk: Thoonk) -> None:
    before = _server_ms(thoonk.client)
    now = thoonk.server_ms()
    after = _server_ms(thoonk.client)
    assert before <= now <= after


def test_server_ms_maps_a_lost_broker() -> None:
    dead = Thoonk("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(BrokerUnavailable):
            dead.server_ms()
    finally:
        dead.close()


# the cron store ------------------------------------------------------------------------------------
def test_cron_store_registers_and_reads(thoonk: Thoonk) -> None:
    store = CronStore(thoonk)
    assert store.names() == set() and store.state("a") == {} and store.cursors(["a"]) == [""]
    store.register({"a": {"task": "t.a", "expr": "* * * * *"}, "b": {"task": "t.b"}})
    assert store.names() == {"a", "b"}
    assert store.state("a") == {"task": "t.a", "expr": "* * * * *"}
    assert store.states(["a", "b", "c"]) == {
        "a": {"task": "t.a", "expr": "* * * * *"},
        "b": {"task": "t.b"},
        "c": {},
    }
    store.note("b", {"last_error": "CronError: boom"})
    assert store.state("b")["last_error"] == "CronError: boom"
    assert thoonk.client.exists(thoonk.keys.cron_state("a"))  # the documented key


def test_cron_cursor_advances_by_compare_and_set(thoonk: Thoonk) -> None:
    store = CronStore(thoonk)
    assert store.advance("e", "", "100", {"next_fire": "160"})
    assert not store.advance("e", "", "999", {"next_fire": "0"})  # expected '' no longer holds
    assert store.cursor("e") == "100" and store.state("e")["next_fire"] == "160"
    assert store.advance("e", "100", "pending|160|5|me|160")
    assert store.cursors(["e", "none"]) == ["pending|160|5|me|160", ""]
    with pytest.raises(ValueError):
        store.advance("e", "x", "y", {f"f{i}": "v" for i in range(33)})


def test_only_one_of_racing_schedulers_takes_a_fire(thoonk: Thoonk) -> None:
    store = CronStore(thoonk)
    store.advance("race", "", "100")
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def take(n: int) -> None:
        barrier.wait()
        if store.advance("race", "100", f"pending|160|0|s{n}|160"):
            wins.append(n)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.cursor("race") == f"pending|160|0|s{wins[0]}|160"


# cleaning ---------------------------------------------------------------------------------------------
def test_forget_finished_keeps_a_republished_jobs_result(ch: JobChannel) -> None:
    _finish(ch, "old")
    _finish(ch, "again")
    finished_at = ch.client.zscore(ch.keys.finished, "again")
    ch.put(b"x", id="again")  # published again since: its result and log stay
    ch.client.zadd(ch.keys.finished, {"again": finished_at})  # a stale index entry (a race)
    ch.log("again", ["line"])
    ch.log("old", ["gone"])
    cutoff = ch.thoonk.server_ms()
    assert set(ch.finished_before(cutoff)) == {"old", "again"}
    assert ch.count_finished_before(cutoff) == 2
    assert ch.forget_finished(["old", "again"]) == ["old"]
    assert ch.stored_result("old") is None and ch.logs("old") == []
    assert ch.logs("again") == [b"line"]
    assert ch.finished_before(cutoff) == [] and ch.count_finished_before(cutoff) == 0
    assert ch.info("again").state == "available"
    with pytest.raises(ValueError):
        ch.forget_finished([str(i) for i in range(1001)])


def test_finished_before_pages_oldest_first(ch: JobChannel) -> None:
    for i in range(5):
        _finish(ch, f"j{i}")
    cutoff = ch.thoonk.server_ms()
    first, rest = ch.finished_before(cutoff, 0, 2), ch.finished_before(cutoff, 2, 10)
    assert len(first) == 2 and len(rest) == 3 and set(first + rest) == {f"j{i}" for i in range(5)}
    assert ch.finished_before(0) == []


def test_retract_stalled_only_takes_still_stalled_jobs(ch: JobChannel) -> None:
    for job_id in ("legacy", "retried"):
        _stall(ch, job_id)
        ch.client.zrem(ch.keys.stalled_at, job_id)  # as a legacy Thoonk client leaves it
    ch.retry("retried")
    cursor, found = ch.scan_stalled(0, 100)
    while cursor:
        cursor, more = ch.scan_stalled(cursor, 100)
        found += more
    assert found == ["legacy"]
    assert ch.unstamped(["legacy", "retried"]) == ["legacy", "retried"]
    assert ch.retract_stalled(["legacy", "retried"]) == ["legacy"]
    assert ch.info("legacy").state == "unknown" and ch.info("retried").state == "available"
    assert ch.retract_stalled([]) == []


def test_stalled_before_uses_the_stall_time(ch: JobChannel) -> None:
    _stall(ch, "s1")
    at = ch.thoonk.server_ms()
    assert ch.stalled_before(at) == ["s1"] and ch.count_stalled_before(at) == 1
    assert ch.stalled_before(0) == [] and ch.unstamped(["s1"]) == []
    assert ch.count_stalled() == 1


# paged reads ------------------------------------------------------------------------------------------
def test_paged_reads(ch: JobChannel) -> None:
    for i in range(4):
        ch.put(b"x", id=f"a{i}")
    total, page = ch.page_available(1, 2)
    assert (
        total == 4 and [i for i, _ in page] == ["a1", "a2"] and all(s is not None for _, s in page)
    )
    assert ch.page_available(10, 2) == (4, [])
    claims = ch.claim(1, lease_ms=LONG_LEASE, worker="w1")
    ch.set_progress(claims[0].id, "1/2", token=claims[0].token)
    total, page = ch.page_sorted("claimed", 0, 10)
    assert total == 1 and page[0][0] == "a0"
    fields = ch.row_fields("claimed", ["a0"])
    assert fields["workers"] == [b"w1"] and fields["progress"] == [b"1/2"]
    assert fields["leases"][0] is not None and fields["items"] == [b"x"]
    assert ch.row_fields("available", []) == {}
    with pytest.raises(ValueError):
        ch.page_sorted("available", 0, 1)
    ch.log("a0", ["one", "two", "three"])
    item, claimed_ms, result, log_total, logs = ch.detail_fields("a0", 2)
    assert (item, result, log_total, logs) == (b"x", None, 3, [b"two", b"three"])
    assert claimed_ms is not None and ch.log_length("a0") == 3


def test_scan_names_by_type(thoonk: Thoonk) -> None:
    thoonk.job_channel("j1")
    thoonk.job_channel("j2")
    thoonk.feed("f1")
    assert thoonk.scan_names("job", count=1) == ["j1", "j2"]
    assert thoonk.scan_names() == ["f1", "j1", "j2"]


# watches -----------------------------------------------------------------------------------------
def test_watch_hears_finish_and_retract(ch: JobChannel) -> None:
    ch.put(b"x", id="w1")
    ch.put(b"x", id="w2")
    with ch.watch(("finish", "retract"), shared=False) as watch:
        claim = next(c for c in ch.claim(2, lease_ms=LONG_LEASE) if c.id == "w1")
        ch.finish("w1", b"done", token=claim.token)
        ch.retract("w2")
        events = [wait_for(lambda: watch.next(0.5), what="event") for _ in range(2)]
    assert events == [("finish", b"w1\0done"), ("retract", b"w2")]
    with pytest.raises(ValueError):
        ch.watch(("nope",))


def test_finish_subscription_confirms_and_reports(thoonk: Thoonk) -> None:
    ch = thoonk.job_channel("subbed")
    sub = FinishSubscription(thoonk)
    try:
        sub.add({"subbed"})
        notice = wait_for(lambda: sub.next(0.5), what="confirmation")
        assert (notice.kind, notice.channel) == ("subscribed", "subbed")
        _finish(ch, "f1", b"out")
        notice = wait_for(lambda: sub.next(0.5), what="finish")
        assert (notice.kind, notice.channel, notice.job_id, notice.result) == (
            "finish",
            "subbed",
            "f1",
            b"out",
        )
        sub.reset()
        assert sub.channels == set() and sub.next(0.01) is None
    finally:
        sub.close()


# the registry and key names -------------------------------------------------------------------
def test_registry_stamps_started_with_server_time(thoonk: Thoonk) -> None:
    reg = WorkerRegistry(thoonk)
    first = reg.beat("w", {"name": "w", "started": "0", "heartbeat": "0"}, 60_000)
    reg.beat("w", {"name": "w"}, 60_000)
    (entry,) = reg.live()
    assert entry["started"] == str(first // 1000)  # the first beat's server second, kept
    assert int(entry["heartbeat"]) >= first // 1000


def test_event_channel_names_come_from_keys() -> None:
    keys = Keyspace("app*1:")
    assert keys.ch_event("finish", "emails") == "app*1:job.finish:emails"
    assert (
        keys.job("emails").ch_finish == keys.feed("emails").ch_finish == "app*1:job.finish:emails"
    )
    assert keys.ch_event_pattern("publish") == "app\\*1:feed.publish:*"
    assert keys.object_of("finish", b"app*1:job.finish:{e}") == "{e}"
    assert keys.object_of("finish", "app*1:feed.publish:e") is None
    assert set(EVENT_STEMS) == {"publish", "edit", "retract", "position", "finish"}
