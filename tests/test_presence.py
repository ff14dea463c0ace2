"""Presence (taskpipe/thoonk/workers.py) and the reaper's fast path (job_reap.lua), on real Redis
and memory://: a joined worker whose alive-channel subscription is gone has its claims sent back
(cancel count +1, fenced) after the grace; a subscribed one, or one that never joined, is left
to its lease. Grace 0 and explicit reaper passes make it deterministic (no sleeps)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from polling import wait_for

from taskpipe.errors import LeaseLost
from taskpipe.thoonk import Thoonk
from taskpipe.thoonk.workers import Presence, WorkerRegistry

LONG_LEASE = 600_000


@pytest.fixture
def thoonk(broker_url: str, prefix: str) -> Iterator[Thoonk]:
    t = Thoonk(broker_url, prefix=prefix)
    yield t
    t.connection.close()


def dropped(me: Presence) -> None:
    """The worker's subscription goes, as when its process dies; wait until Redis has taken the
    UNSUBSCRIBE and the close (they travel on the subscriber's own connection, so a reaper call
    on another one can otherwise overtake them on a loaded machine)."""
    me._drop()
    wait_for(lambda: me.subscribers() == 0, what="the subscription to be gone")


def test_dead_worker_claims_go_back_after_the_grace(thoonk: Thoonk) -> None:
    ch = thoonk.job("jobs")
    ids = [ch.put(f"job{i}") for i in range(3)]
    me = Presence(thoonk, "w1")
    assert me.hold(rejoin=True) is True
    assert me.subscribers() == 1
    claims = ch.claim(2, lease_ms=LONG_LEASE, worker="w1")
    legacy = ch.claim(1, lease_ms=LONG_LEASE, worker="legacy")  # never joined: lease only
    args = me.reap_args(0)
    assert args is not None
    # alive: nothing happens, however often the reaper looks
    for _ in range(3):
        assert ch.reap(3, presence=args) == ([], [])
    # the process "dies": its subscription goes (Redis drops it when the socket closes)
    dropped(me)
    first = ch.reap_detail(3, presence=args)  # first seen gone: the grace starts
    assert (first.requeued, first.dead_workers) == ([], [])
    second = ch.reap_detail(3, presence=args)
    assert second.dead_workers == ["w1"]
    assert sorted(second.requeued) == sorted(c.id for c in claims) == sorted(second.dead_ids)
    for c in claims:
        info = ch.info(c.id)
        assert info.state == "available" and info.cancel_count == 1
        with pytest.raises(LeaseLost):  # fenced: the old owner's finish is refused
            ch.finish(c.id, "late", token=c.token)
    assert ch.info(legacy[0].id).state == "claimed"
    assert set(ids) == {c.id for c in claims} | {legacy[0].id}
    me.leave()


def test_a_resubscribed_worker_is_not_reaped(thoonk: Thoonk) -> None:
    ch = thoonk.job("jobs")
    ch.put("x")
    me = Presence(thoonk, "w2")
    me.hold(rejoin=True)
    claim = ch.claim(1, lease_ms=LONG_LEASE, worker="w2")[0]
    args = me.reap_args(0)
    dropped(me)
    assert ch.reap(1, presence=args) == ([], [])  # seen gone once
    assert me.hold() is True  # the keeper notices and subscribes again
    assert ch.reap(1, presence=args) == ([], [])  # seen alive: the clock is reset
    assert thoonk.client.zscore(thoonk.keys.presence(), "w2") == 0
    assert ch.info(claim.id).state == "claimed"
    me.leave()
    assert thoonk.client.zscore(thoonk.keys.presence(), "w2") is None
    assert ch.reap(1, presence=args) == ([], [])  # left cleanly: lease only from now on


def test_a_grace_longer_than_the_gap_keeps_the_claim(thoonk: Thoonk) -> None:
    ch = thoonk.job("jobs")
    ch.put("x")
    me = Presence(thoonk, "w3")
    me.hold(rejoin=True)
    claim = ch.claim(1, lease_ms=LONG_LEASE, worker="w3")[0]
    dropped(me)
    args = me.reap_args(3_600_000)
    for _ in range(3):
        assert ch.reap(1, presence=args) == ([], [])
    assert ch.info(claim.id).state == "claimed"
    me.leave()


def test_past_max_cancels_a_dead_workers_job_is_stalled(thoonk: Thoonk) -> None:
    ch = thoonk.job("jobs")
    job_id = ch.put("x")
    me = Presence(thoonk, "w4")
    for round_ in range(2):
        me.hold(rejoin=True)
        assert ch.claim(1, lease_ms=LONG_LEASE, worker="w4")[0].id == job_id
        dropped(me)
        ch.reap(1, presence=me.reap_args(0))
        requeued, stalled = ch.reap(1, presence=me.reap_args(0))
        assert (requeued, stalled) == (([job_id], []) if round_ == 0 else ([], [job_id]))
    assert ch.info(job_id).state == "stalled"
    assert ch.stall_reason(job_id) == "worker_lost: worker died 2 times"


def test_registry_uses_server_time(thoonk: Thoonk) -> None:
    reg = WorkerRegistry(thoonk)
    now_ms = reg.beat("w5", {"name": "w5", "host": "h"}, 60_000)
    server = thoonk.client.time()
    assert abs(now_ms - (int(server[0]) * 1000 + int(server[1]) // 1000)) < 60_000
    assert [w["name"] for w in reg.live()] == ["w5"]
    assert reg.live()[0]["heartbeat"] == str(now_ms // 1000)
    reg.beat("gone", {"name": "gone"}, 1)  # a deadline 1 ms after now: expired by the next look
    thoonk.client.zadd(thoonk.keys.workers_registry(), {"gone": now_ms - 1})
    assert [w["name"] for w in reg.live()] == ["w5"]
    reg.remove("w5")
    assert reg.live() == []


def test_the_presence_connection_is_named(thoonk: Thoonk) -> None:
    if thoonk.connection.is_memory:
        pytest.skip("memory:// has no connections to name")
    me = Presence(thoonk, "web 1.42")
    me.hold(rejoin=True)
    try:
        names = [c.get("name") for c in thoonk.client.client_list()]
        assert "taskpipe-worker:web_1.42" in names
    finally:
        me.leave()
