"""Thoonk sorted feeds: ordering operations, relpos grammar, events, wire layout, refusals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskpipe.connection import Connection
from taskpipe.errors import FeedDoesNotExist, InvalidPosition, ItemNotFound, WrongFeedType
from taskpipe.thoonk.sorted_feed import SortedFeed, parse_relpos
from taskpipe.thoonk.thoonk import Thoonk


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def sf(thoonk: Thoonk) -> SortedFeed:
    return thoonk.sorted_feed("deck")


@pytest.fixture
def events(conn: Connection, sf: SortedFeed) -> Iterator[Any]:
    """A raw subscriber on the sorted feed's three channels; returns a take(n) function."""
    client = conn.new_client()
    pubsub = client.pubsub()
    k = sf.keys
    pubsub.subscribe(k.ch_publish, k.ch_position, k.ch_retract)
    seen = 0
    deadline = time.monotonic() + 5
    while seen < 3 and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        seen += bool(msg and msg["type"] == "subscribe")
    assert seen == 3
    names = {
        k.ch_publish.encode(): "publish",
        k.ch_position.encode(): "position",
        k.ch_retract.encode(): "retract",
    }

    def take(n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        end = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < end:
            msg = pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                out.append((names[msg["channel"]], msg["data"]))
        return out

    yield take
    pubsub.close()


def snapshot(client: Any, prefix: str) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(match=prefix + "*"):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"set":
            out[key] = client.smembers(key)
        else:
            out[key] = client.zrange(key, 0, -1, withscores=True)
    return out


# behaviour ---------------------------------------------------------------------------------
def test_inserts_and_order(sf: SortedFeed) -> None:
    a = sf.append(b"a")
    b = sf.append(b"b")
    z = sf.prepend(b"z")
    m = sf.publish_before(b, b"m")
    n = sf.publish_after(b, "n")
    assert [a, b, z, m, n] == ["1", "2", "3", "4", "5"]
    assert sf.get_ids() == [z, a, m, b, n]
    assert list(sf.get_all().items()) == [(z, b"z"), (a, b"a"), (m, b"m"), (b, b"b"), (n, b"n")]
    assert sf.get_item(m) == b"m" and sf.get_item("99") is None
    assert len(sf) == 5 and sf.has(a) and not sf.has("99")
    assert a in sf and "99" not in sf


def test_wire_layout(sf: SortedFeed, thoonk: Thoonk, prefix: str) -> None:
    sf.append(b"a")
    sf.prepend(b"b")
    sf.publish_after("1", b"c")
    c = thoonk.client
    assert c.type(prefix + "feed.ids:deck") == b"list"
    assert c.lrange(prefix + "feed.ids:deck", 0, -1) == [b"2", b"1", b"3"]
    assert c.hgetall(prefix + "feed.items:deck") == {b"1": b"a", b"2": b"b", b"3": b"c"}
    assert c.get(prefix + "feed.idincr:deck") == b"3"
    assert c.get(prefix + "feed.publishes:deck") == b"3"
    assert c.hget(prefix + "feed.config:deck", "type") == b"sorted_feed"


def test_insert_events(sf: SortedFeed, events: Any) -> None:
    sf.append(b"a\0x")
    sf.prepend(b"b")
    sf.publish_before("1", b"c")
    sf.publish_after("1", b"d")
    assert events(8) == [
        ("publish", b"1\0a\0x"),
        ("position", b"1\0:end"),
        ("publish", b"2\0b"),
        ("position", b"2\0begin:"),
        ("publish", b"3\0c"),
        ("position", b"3\0:1"),
        ("publish", b"4\0d"),
        ("position", b"4\x001:"),
    ]


def test_edit(sf: SortedFeed, thoonk: Thoonk, events: Any) -> None:
    a = sf.append(b"a")
    b = sf.append(b"b")
    sf.edit(a, b"A")
    assert sf.get_ids() == [a, b]
    assert sf.get_item(a) == b"A"
    assert thoonk.client.get(sf.keys.publishes) == b"3"
    # an edit is announced on feed.publish (thoonk.py 1.0 behaviour), with no position event
    assert events(5)[4:] == [("publish", b"1\0A")]


@pytest.mark.parametrize(
    "relpos,expected",
    [
        ("begin:", ["3", "1", "2", "4"]),
        (":end", ["1", "2", "4", "3"]),
        (":1", ["3", "1", "2", "4"]),
        ("1:", ["1", "3", "2", "4"]),
        (":4", ["1", "2", "3", "4"]),
        ("4:", ["1", "2", "4", "3"]),
    ],
)
def test_move(sf: SortedFeed, events: Any, relpos: str, expected: list[str]) -> None:
    for item in "abcd":
        sf.append(item)
    sf.move(relpos, "3")
    assert sf.get_ids() == expected
    assert sf.get_item("3") == b"c"
    assert events(9)[8] == ("position", b"3\0" + relpos.encode())


def test_move_helpers(sf: SortedFeed) -> None:
    for item in "abcd":
        sf.append(item)
    sf.move_first("4")
    assert sf.get_ids() == ["4", "1", "2", "3"]
    sf.move_last("4")
    assert sf.get_ids() == ["1", "2", "3", "4"]
    sf.move_before("2", "4")  # thoonk.py order: (existing, item)
    assert sf.get_ids() == ["1", "4", "2", "3"]
    sf.move_after("3", "1")
    assert sf.get_ids() == ["4", "2", "3", "1"]


def test_retract(sf: SortedFeed, events: Any) -> None:
    sf.append(b"a")
    sf.append(b"b")
    sf.retract("1")
    assert sf.get_ids() == ["2"] and sf.get_item("1") is None
    assert events(5)[4] == ("retract", b"1")


def test_parse_relpos() -> None:
    assert parse_relpos("begin:") == ("begin", "")
    assert parse_relpos(":end") == ("end", "")
    assert parse_relpos(":12") == ("before", "12")
    assert parse_relpos("12:") == ("after", "12")
    for bad in ["", ":", "::", "12", "1:2", ":1:", "a::", ":a\0b", "begin", "end"]:
        with pytest.raises(InvalidPosition):
            parse_relpos(bad)


# legacy interop ----------------------------------------------------------------------------
def test_legacy_written_sorted_feed(sf: SortedFeed, thoonk: Thoonk) -> None:
    # what thoonk.py 1.0 writes for two appends
    c = thoonk.client
    for n, item in ((1, b"x"), (2, b"y")):
        c.incr(sf.keys.idincr)
        c.rpush(sf.keys.ids, n)
        c.hset(sf.keys.items, n, item)
    new = sf.prepend(b"w")
    assert new == "3"
    sf.move(":end", "1")
    assert list(sf.get_all().items()) == [("3", b"w"), ("2", b"y"), ("1", b"x")]


def test_taken_ids_are_skipped(sf: SortedFeed, thoonk: Thoonk) -> None:
    thoonk.client.hset(sf.keys.items, "1", b"from a legacy client")
    thoonk.client.rpush(sf.keys.ids, "1")
    assert sf.append(b"mine") == "2"
    assert sf.get_item("1") == b"from a legacy client"


def test_move_puts_back_an_item_dropped_from_the_ordering(sf: SortedFeed, thoonk: Thoonk) -> None:
    # thoonk.py's move-to-itself bug leaves the item in items but not in ids
    sf.append(b"a")
    sf.append(b"b")
    thoonk.client.lrem(sf.keys.ids, 0, "1")
    sf.move(":end", "1")
    assert sf.get_ids() == ["2", "1"]


# refused calls -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,error",
    [
        (lambda sf: sf.move(":2", "2"), InvalidPosition),
        (lambda sf: sf.move("2:", "2"), InvalidPosition),
        (lambda sf: sf.move_before("2", "2"), InvalidPosition),
        (lambda sf: sf.move("1:2", "2"), InvalidPosition),
        (lambda sf: sf.move("middle", "2"), InvalidPosition),
        (lambda sf: sf.move(":", "2"), InvalidPosition),
        (lambda sf: sf.move(":99", "2"), ItemNotFound),
        (lambda sf: sf.move("99:", "2"), ItemNotFound),
        (lambda sf: sf.move(":end", "99"), ItemNotFound),
        (lambda sf: sf.move("begin:", "99"), ItemNotFound),
        (lambda sf: sf.publish_before("99", b"x"), ItemNotFound),
        (lambda sf: sf.publish_after("99", b"x"), ItemNotFound),
        (lambda sf: sf.edit("99", b"x"), ItemNotFound),
        (lambda sf: sf.retract("99"), ItemNotFound),
        (lambda sf: sf.move(5, "2"), InvalidPosition),
    ],
)
def test_refused_calls_change_nothing(
    sf: SortedFeed, thoonk: Thoonk, prefix: str, events: Any, call: Any, error: type[Exception]
) -> None:
    for item in "abc":
        sf.append(item)
    assert len(events(6)) == 6
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(error):
        call(sf)
    assert snapshot(thoonk.client, prefix) == before
    # no event went out: the next one on the wire is a marker published after the call
    thoonk.client.publish(sf.keys.ch_retract, b"marker")
    assert events(1) == [("retract", b"marker")]


def test_pivot_in_items_but_not_in_ordering_is_missing(
    sf: SortedFeed, thoonk: Thoonk, prefix: str
) -> None:
    sf.append(b"a")
    sf.append(b"b")
    thoonk.client.lrem(sf.keys.ids, 0, "1")
    before = snapshot(thoonk.client, prefix)
    with pytest.raises(ItemNotFound):
        sf.publish_after("1", b"x")
    with pytest.raises(ItemNotFound):
        sf.move(":1", "2")
    assert snapshot(thoonk.client, prefix) == before


def test_wrong_type_and_deleted(thoonk: Thoonk, prefix: str) -> None:
    sf = thoonk.sorted_feed("deck")
    with pytest.raises(WrongFeedType):
        thoonk.feed("deck")
    with pytest.raises(WrongFeedType):
        thoonk.queue("deck")
    thoonk.delete("deck")
    with pytest.raises(FeedDoesNotExist):
        sf.append(b"x")
    assert snapshot(thoonk.client, prefix) == {}
