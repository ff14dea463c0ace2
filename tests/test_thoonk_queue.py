"""Thoonk queues: FIFO + priority lane, atomic get, blocking without polling, legacy interop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from taskpipe.connection import Connection
from taskpipe.errors import Empty, FeedDoesNotExist, SerializationError, WrongFeedType
from taskpipe.thoonk.queue import MAX_SKIPS, Queue
from taskpipe.thoonk.thoonk import Thoonk


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


@pytest.fixture
def q(thoonk: Thoonk) -> Iterator[Queue]:
    queue = thoonk.queue("work")
    yield queue
    queue.close()


def test_fifo_and_priority_lane(q: Queue) -> None:
    q.put(b"1")
    q.put("2")
    q.put(b"p1", priority=True)
    q.put(b"p2", priority=q.HIGH)
    q.put(b"3")
    assert len(q) == 5
    got = [q.get(timeout=None) for _ in range(5)]
    # priority items come first, LIFO among themselves (Thoonk v1 RPUSH semantics)
    assert got == [b"p2", b"p1", b"1", b"2", b"3"]
    with pytest.raises(Empty):
        q.get(timeout=None)
    assert len(q) == 0


def test_wire_layout(q: Queue, thoonk: Thoonk, prefix: str) -> None:
    a = q.put(b"a")
    b = q.put(b"b")
    p = q.put(b"p", priority=True)
    c = thoonk.client
    ids_key = prefix + "feed.ids:work"
    assert c.type(ids_key) == b"list"
    # LPUSH normal (newest at the left), RPUSH priority (at the right, popped next)
    assert c.lindex(ids_key, 0) == b.encode()
    assert c.lindex(ids_key, -1) == p.encode()
    assert c.lrange(ids_key, 0, -1) == [b.encode(), a.encode(), p.encode()]
    assert q.get_ids() == [b, a, p]
    assert c.hgetall(prefix + "feed.items:work") == {
        a.encode(): b"a",
        b.encode(): b"b",
        p.encode(): b"p",
    }
    assert c.get(prefix + "feed.publishes:work") == b"3"
    assert c.hget(prefix + "feed.config:work", "type") == b"queue"
    wake = prefix + "feed.wake:work"
    assert c.type(wake) == b"list" and c.llen(wake) == 3 and c.ttl(wake) > 0
    for _ in range(70):
        q.put(b"x")
    assert c.llen(wake) == 64


def test_get_deletes_the_item(q: Queue, thoonk: Thoonk) -> None:
    item_id = q.put(b"x\0y")
    assert q.get_with_id(timeout=None) == (item_id, b"x\0y")
    assert thoonk.client.hlen(q.keys.items) == 0
    assert thoonk.client.llen(q.keys.ids) == 0


def test_empty_item_is_not_none(q: Queue) -> None:
    q.put(b"")
    assert q.get(timeout=None) == b""


def test_get_timeout_raises_empty(q: Queue) -> None:
    with pytest.raises(Empty):
        q.get(timeout=None)
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert q.get_with_id(timeout=None) is None
    with pytest.raises(ValueError):
        q.get(timeout=-1)


def test_blocked_get_is_woken_by_put(q: Queue) -> None:
    result: list[bytes | None] = []
    started = threading.Event()

    def consume() -> None:
        started.set()
        result.append(q.get(timeout=20))

    t = threading.Thread(target=consume)
    t.start()
    started.wait(5)
    q.put(b"wake up")
    t.join(25)
    assert result == [b"wake up"]


def test_wait_forever_is_woken(q: Queue, thoonk: Thoonk) -> None:
    result: list[bytes | None] = []
    t = threading.Thread(target=lambda: result.append(q.get()), daemon=True)
    t.start()
    thoonk.queue("work").put(b"late")
    t.join(25)
    assert result == [b"late"]


def test_concurrent_consumers_get_each_item_once(q: Queue, thoonk: Thoonk) -> None:
    got: list[bytes] = []
    lock = threading.Lock()
    total = 200

    def consume() -> None:
        mine = thoonk.queue("work")
        while True:
            got_one = mine.get_with_id(timeout=2)
            item = got_one[1] if got_one is not None else None
            if item is None or item == b"stop":
                mine.close()
                return
            with lock:
                got.append(item)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(total):
        q.put(str(i))
    for _ in threads:
        q.put(b"stop")
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(str(i).encode() for i in range(total))
    assert thoonk.client.hlen(q.keys.items) == 0


# legacy interop ----------------------------------------------------------------------------
def test_reads_items_written_by_a_legacy_producer(q: Queue, thoonk: Thoonk) -> None:
    # thoonk.py 1.0 put: MULTI LPUSH feed.ids id, HSET feed.items id item, INCR publishes
    c = thoonk.client
    pipe = c.pipeline(transaction=True)
    pipe.lpush(q.keys.ids, "legacy-1")
    pipe.hset(q.keys.items, "legacy-1", b"hello")
    pipe.incr(q.keys.publishes)
    pipe.execute()
    c.lpush(q.keys.ids, "legacy-2")
    c.hset(q.keys.items, "legacy-2", b"world")
    assert q.get_with_id(timeout=1) == ("legacy-1", b"hello")
    assert q.get(timeout=1) == b"world"


def test_legacy_consumer_reads_what_put_writes(q: Queue, thoonk: Thoonk) -> None:
    first = q.put(b"first")
    q.put(b"second")
    urgent = q.put(b"urgent", priority=True)
    c = thoonk.client
    # thoonk.py 1.0 get: BRPOP feed.ids, then HGET + HDEL feed.items
    for expected_id, expected in ((urgent, b"urgent"), (first, b"first")):
        key, item_id = c.brpop([q.keys.ids], 1)
        assert key == q.keys.ids.encode() and item_id == expected_id.encode()
        assert c.hget(q.keys.items, item_id) == expected
        c.hdel(q.keys.items, item_id)
    assert q.get(timeout=None) == b"second"


def test_ids_without_item_are_dropped(q: Queue, thoonk: Thoonk) -> None:
    c = thoonk.client
    real = q.put(b"real")
    for i in range(MAX_SKIPS * 2 + 5):
        c.rpush(q.keys.ids, f"orphan-{i}")  # popped before the real one
    assert q.get_with_id(timeout=None) == (real, b"real")
    assert c.llen(q.keys.ids) == 0
    assert q.get_with_id(timeout=None) is None


# refused calls -----------------------------------------------------------------------------
def test_bad_item_writes_nothing(q: Queue, thoonk: Thoonk) -> None:
    with pytest.raises(SerializationError):
        q.put(None)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        q.put(3.5)  # type: ignore[arg-type]
    assert thoonk.client.exists(q.keys.ids, q.keys.items, q.keys.publishes, q.wake_key) == 0


def test_wrong_type(thoonk: Thoonk) -> None:
    thoonk.feed("x")
    with pytest.raises(WrongFeedType):
        thoonk.queue("x")
    thoonk.queue("y")
    with pytest.raises(WrongFeedType):
        thoonk.feed("y")
    with pytest.raises(WrongFeedType):
        thoonk.sorted_feed("y")


def test_put_on_deleted_queue_writes_nothing(q: Queue, thoonk: Thoonk, prefix: str) -> None:
    thoonk.delete("work")
    with pytest.raises(FeedDoesNotExist):
        q.put(b"x")
    assert list(thoonk.client.scan_iter(match=prefix + "*")) == []


def test_waiting_get_blocks_instead_of_polling(q: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    take = q._take

    def counting_take() -> tuple[str, bytes] | None:
        calls.append(1)
        return take()

    monkeypatch.setattr(q, "_take", counting_take)
    with pytest.raises(Empty):
        q.get(timeout=0.5)
    # one look, one BLPOP on the wake list for the whole timeout, one last look
    assert len(calls) <= 3
