"""Thoonk feeds: behaviour, the v1 wire layout, events, max_length, and refused calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pubsub_probe import Sub

from taskpipe.connection import Connection
from taskpipe.errors import (
    FeedDoesNotExist,
    ItemNotFound,
    SerializationError,
    WrongFeedType,
)
from taskpipe.thoonk.feed import Feed, parse_max_length
from taskpipe.thoonk.thoonk import Thoonk


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def feed(thoonk: Thoonk) -> Feed:
    return thoonk.feed("news")


@pytest.fixture
def sub(conn: Connection) -> Iterator[Any]:
    subs: list[Sub] = []

    def make(*channels: str) -> Sub:
        s = Sub(conn.new_client(), *channels)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


def snapshot(client: Any, prefix: str) -> dict[bytes, Any]:
    """Every key under the prefix with its type and full value."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(match=prefix + "*"):
        kind = client.type(key)
        if kind == b"string":
            value: Any = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"set":
            value = client.smembers(key)
        else:
            value = client.zrange(key, 0, -1, withscores=True)
        out[key] = (kind, value)
    return out


# behaviour ---------------------------------------------------------------------------------
def test_publish_and_read_back(feed: Feed) -> None:
    first = feed.publish(b"one")
    second = feed.publish("two")
    assert len(first) == 32 and int(first, 16) >= 0
    assert feed.get_ids() == [first, second]
    assert feed.get_item(first) == b"one"
    assert feed.get_item(second) == b"two"
    assert feed.get_item("nope") is None
    assert feed.get_all() == {first: b"one", second: b"two"}
    assert list(feed.get_all()) == [first, second]  # a dict in feed order
    assert len(feed) == 2
    assert feed.has(first) and not feed.has("nope")
    assert first in feed and "nope" not in feed and 3 not in feed


def test_publish_with_own_id_and_edit_moves_to_the_end(feed: Feed, thoonk: Thoonk) -> None:
    a = feed.publish(b"a", id="a")
    b = feed.publish(b"b", id="b")
    assert (a, b) == ("a", "b")
    score_before = thoonk.client.zscore(feed.keys.ids, "a")
    assert feed.publish(b"a2", id="a") == "a"
    assert feed.get_ids() == ["b", "a"]  # as the thoonk.py document and both clients do
    assert feed.get_item("a") == b"a2"
    assert thoonk.client.zscore(feed.keys.ids, "a") > score_before
    assert thoonk.client.get(feed.keys.publishes) == b"3"
    assert feed.publish(b"a3", id="a") == "a"  # editing the newest keeps it last
    assert feed.get_ids() == ["b", "a"]


def test_ids_in_publish_order_even_within_one_ms(feed: Feed, thoonk: Thoonk) -> None:
    ids = [feed.publish(str(i)) for i in range(200)]
    assert feed.get_ids() == ids
    scores = [s for _, s in thoonk.client.zrange(feed.keys.ids, 0, -1, withscores=True)]
    assert all(b > a for a, b in zip(scores, scores[1:], strict=False))


def test_retract(feed: Feed, sub: Any) -> None:
    keep = feed.publish(b"keep")
    gone = feed.publish(b"gone")
    s = sub(feed.keys.ch_retract)
    feed.retract(gone)
    assert feed.get_ids() == [keep]
    assert feed.get_item(gone) is None
    assert s.take(1) == [(feed.keys.ch_retract, gone.encode())]


def test_items_are_opaque_bytes(feed: Feed) -> None:
    payload = bytes(range(256)) + b"\0\0tail"
    item_id = feed.publish(payload)
    assert feed.get_item(item_id) == payload
    assert feed.get_all() == {item_id: payload}


# wire contract -----------------------------------------------------------------------------
def test_wire_layout(feed: Feed, thoonk: Thoonk, prefix: str) -> None:
    before = time.time() * 1000
    item_id = feed.publish(b"x")
    after = time.time() * 1000
    c = thoonk.client
    assert feed.keys.ids == prefix + "feed.ids:news"
    assert c.type(prefix + "feed.ids:news") == b"zset"
    assert c.type(prefix + "feed.items:news") == b"hash"
    assert c.hget(prefix + "feed.items:news", item_id) == b"x"
    assert c.get(prefix + "feed.publishes:news") == b"1"
    assert c.hget(prefix + "feed.config:news", "type") == b"feed"
    assert c.sismember(prefix + "feeds", "news")
    score = c.zscore(prefix + "feed.ids:news", item_id)
    # milliseconds from the server clock (loosely: same machine, generous window)
    assert before - 60_000 < score < after + 60_000


def test_events_nul_framing(feed: Feed, sub: Any) -> None:
    k = feed.keys
    s = sub(k.ch_publish, k.ch_edit)
    item_id = feed.publish(b"a\0b")
    feed.publish(b"c\0d", id=item_id)
    assert s.take(2) == [
        (k.ch_publish, item_id.encode() + b"\0a\0b"),
        (k.ch_edit, item_id.encode() + b"\0c\0d"),
    ]


def test_legacy_written_items_are_readable(feed: Feed, thoonk: Thoonk) -> None:
    # what thoonk.js 0.5 writes: ZADD ms, HSET item, INCR publishes
    c = thoonk.client
    c.zadd(feed.keys.ids, {"old": 1_300_000_000_000})
    c.hset(feed.keys.items, "old", b"legacy")
    new = feed.publish(b"new")
    assert list(feed.get_all().items()) == [("old", b"legacy"), (new, b"new")]
    feed.retract("old")
    assert feed.get_ids() == [new]


# max_length --------------------------------------------------------------------------------
def test_max_length_evicts_oldest_with_events(thoonk: Thoonk, sub: Any) -> None:
    feed = thoonk.feed("capped", config={"max_length": 3})
    assert feed.max_length == 3
    s = sub(feed.keys.ch_retract)
    ids = [feed.publish(str(i)) for i in range(5)]
    assert feed.get_ids() == ids[2:]
    assert feed.get_item(ids[0]) is None and feed.get_item(ids[1]) is None
    assert [d for _, d in s.take(2)] == [ids[0].encode(), ids[1].encode()]


def test_edit_at_cap_neither_shrinks_nor_evicts_itself(thoonk: Thoonk) -> None:
    feed = thoonk.feed("capped", config={"max_length": 3})
    ids = [feed.publish(str(i)) for i in range(3)]
    feed.publish(b"edited", id=ids[0])
    assert feed.get_ids() == [*ids[1:], ids[0]]  # moved to the end, nothing evicted
    assert feed.get_item(ids[0]) == b"edited"


def test_lowered_cap_trims_on_next_publish_and_keeps_written_id(thoonk: Thoonk) -> None:
    feed = thoonk.feed("capped")
    ids = [feed.publish(str(i)) for i in range(6)]
    feed.max_length = 2
    assert thoonk.get_config("capped")["max_length"] == "2"
    # editing the OLDEST item: it must survive the trim
    feed.publish(b"edited", id=ids[0])
    assert feed.get_ids() == [ids[5], ids[0]]  # the edit moved it to the end
    assert feed.get_item(ids[0]) == b"edited"
    feed.max_length = None
    assert feed.max_length is None
    assert "max_length" not in thoonk.get_config("capped")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "nan"])
def test_max_length_non_positive_or_garbage_is_unbounded(thoonk: Thoonk, value: str) -> None:
    feed = thoonk.feed("free")
    thoonk.client.hset(feed.keys.config, "max_length", value)
    assert feed.max_length is None
    ids = [feed.publish(str(i)) for i in range(4)]
    assert feed.get_ids() == ids


def test_parse_max_length() -> None:
    assert parse_max_length(b"5") == 5
    assert parse_max_length("2.7") == 2
    assert parse_max_length("0.5") is None
    assert parse_max_length(None) is None
    assert parse_max_length("inf") is None


def test_eviction_is_bounded_per_call(thoonk: Thoonk, monkeypatch: pytest.MonkeyPatch) -> None:
    import taskpipe.thoonk.feed as feed_module

    monkeypatch.setattr(feed_module, "MAX_EVICTIONS", 3)
    feed = thoonk.feed("big")
    for i in range(10):
        feed.publish(str(i))
    feed.max_length = 1
    feed.publish(b"a")
    assert len(feed) == 8  # 11 items, at most 3 evicted by that call
    feed.publish(b"b")
    assert len(feed) == 6
    feed.publish(b"c")
    feed.publish(b"d")
    newest = feed.publish(b"e")
    assert feed.get_ids() == [newest]


# refused calls -----------------------------------------------------------------------------
def test_retract_unknown_id_changes_nothing(
    feed: Feed, thoonk: Thoonk, prefix: str, sub: Any
) -> None:
    feed.publish(b"x")
    s = sub(feed.keys.ch_retract)
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(ItemNotFound):
        feed.retract("missing")
    assert snapshot(thoonk.client, prefix) == before
    # no event went out: the next one on the wire is a marker published after the call
    thoonk.client.publish(feed.keys.ch_retract, b"marker")
    assert s.take(1) == [(feed.keys.ch_retract, b"marker")]


def test_bad_input_is_refused_before_writing(feed: Feed, thoonk: Thoonk, prefix: str) -> None:
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(SerializationError):
        feed.publish(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        feed.publish(b"x", id="a\0b")
    with pytest.raises(ValueError):
        feed.publish(b"x", id="")
    with pytest.raises(TypeError):
        feed.retract(None)  # type: ignore[arg-type]
    assert snapshot(thoonk.client, prefix) == before


def test_wrong_type_is_refused(thoonk: Thoonk) -> None:
    thoonk.feed("x")
    with pytest.raises(WrongFeedType):
        thoonk.queue("x")
    with pytest.raises(WrongFeedType):
        thoonk.sorted_feed("x")
    assert thoonk.get_type("x") == "feed"


def test_publish_to_deleted_feed_writes_nothing(feed: Feed, thoonk: Thoonk, prefix: str) -> None:
    feed.publish(b"x")
    thoonk.delete("news")
    with pytest.raises(FeedDoesNotExist):
        feed.publish(b"y")
    assert snapshot(thoonk.client, prefix) == {}
