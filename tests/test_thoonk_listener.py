"""The Thoonk event listener: every event type, NUL splitting, prefixes, errors, reconnection."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskpipe.connection import Connection
from taskpipe.thoonk.listener import EVENTS, Listener
from taskpipe.thoonk.thoonk import Thoonk

Event = tuple[str, str, str, "bytes | None"]


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Thoonk:
    return Thoonk(connection=conn, prefix=prefix)


def recorder(listener: Listener, events: tuple[str, ...] = EVENTS) -> queue.Queue[Event]:
    """Register a callback on each event that records ``(event, feed, id, payload)``."""
    seen: queue.Queue[Event] = queue.Queue()
    for event in events:

        def callback(feed: str, item_id: str, payload: bytes | None, event: str = event) -> None:
            seen.put((event, feed, item_id, payload))

        listener.on(event, callback)
    return seen


def take(seen: queue.Queue[Event], n: int, timeout: float = 5.0) -> list[Event]:
    out: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            out.append(seen.get(timeout=remaining))
        except queue.Empty:
            break
    return out


@pytest.fixture
def listening(thoonk: Thoonk) -> Iterator[Callable[..., tuple[Listener, queue.Queue[Event]]]]:
    started: list[Listener] = []

    def make(
        t: Thoonk = thoonk, events: tuple[str, ...] = EVENTS
    ) -> tuple[Listener, queue.Queue[Event]]:
        listener = t.listener()
        seen = recorder(listener, events)
        listener.start()
        started.append(listener)
        return listener, seen

    yield make
    for listener in started:
        listener.stop()


def test_feed_events(thoonk: Thoonk, listening: Any) -> None:
    _, seen = listening()
    feed = thoonk.feed("news")
    item_id = feed.publish(b"a\0b")
    feed.publish(b"c", id=item_id)
    feed.retract(item_id)
    assert take(seen, 5) == [
        ("create", "news", thoonk.instance, None),
        ("config", "news", thoonk.instance, None),
        ("publish", "news", item_id, b"a\0b"),
        ("edit", "news", item_id, b"c"),
        ("retract", "news", item_id, None),
    ]


def test_sorted_feed_and_registry_events(thoonk: Thoonk, listening: Any) -> None:
    sf = thoonk.sorted_feed("deck")
    sf.append(b"x")
    _, seen = listening()
    sf.prepend(b"y")
    sf.move("2:", "1")
    thoonk.set_config("deck", color="blue")
    thoonk.delete("deck")
    assert take(seen, 5) == [
        ("publish", "deck", "2", b"y"),
        ("position", "deck", "2", b"begin:"),
        ("position", "deck", "1", b"2:"),
        ("config", "deck", thoonk.instance, None),
        ("delete", "deck", thoonk.instance, None),
    ]


def test_finish_payload_with_and_without_result(
    thoonk: Thoonk, listening: Any, prefix: str
) -> None:
    _, seen = listening(events=("finish",))
    thoonk.client.publish(prefix + "job.finish:jobs", b"j1\0result\0with nul")
    thoonk.client.publish(prefix + "job.finish:jobs", b"j2")
    thoonk.client.publish(prefix + "job.finish:jobs", b"j3\0")
    assert take(seen, 3) == [
        ("finish", "jobs", "j1", b"result\0with nul"),
        ("finish", "jobs", "j2", None),
        ("finish", "jobs", "j3", b""),
    ]


def test_other_prefixes_are_not_heard(
    thoonk: Thoonk, conn: Connection, listening: Any, prefix: str
) -> None:
    _, seen = listening()
    other = Thoonk(connection=conn, prefix="other" + prefix)
    other.feed("news").publish(b"elsewhere")
    thoonk.client.publish("feed.publish:news", b"1\0no prefix")
    thoonk.client.publish(prefix + "feed.publish:news", b"2\0mine")
    assert take(seen, 1) == [("publish", "news", "2", b"mine")]


def test_glob_characters_in_prefix_are_literal(
    conn: Connection, prefix: str, listening: Any
) -> None:
    odd = Thoonk(connection=conn, prefix="[ab]*?" + prefix)
    _, seen = listening(odd, ("publish",))
    odd.client.publish("a" + prefix + "feed.publish:f", b"1\0would match the glob")
    odd.client.publish("[ab]*?" + prefix + "feed.publish:f", b"2\0exact")
    # delivery is in order, so the glob-matching message would have come first
    assert take(seen, 1) == [("publish", "f", "2", b"exact")]


def test_callback_error_is_logged_and_thread_lives(thoonk: Thoonk, caplog: Any) -> None:
    listener = thoonk.listener()
    seen: queue.Queue[Event] = queue.Queue()

    def boom(feed: str, item_id: str, payload: bytes | None) -> None:
        raise RuntimeError("callback bug")

    listener.on("publish", boom)
    listener.on("publish", lambda f, i, p: seen.put(("publish", f, i, p)))
    with caplog.at_level(logging.ERROR, logger="taskpipe.thoonk.listener"), listener:
        feed = thoonk.feed("news")
        first = feed.publish(b"1")
        second = feed.publish(b"2")
        assert [e[2] for e in take(seen, 2)] == [first, second]
        assert listener.running
    assert not listener.running
    assert (
        sum(
            "callback bug" in (r.exc_text or "")
            or (r.exc_info is not None and "callback bug" in str(r.exc_info[1]))
            for r in caplog.records
        )
        == 2
    )


def test_on_off_and_bad_event(thoonk: Thoonk, listening: Any) -> None:
    listener, seen = listening(events=("retract",))
    extra: queue.Queue[Event] = queue.Queue()

    def cb(feed: str, item_id: str, payload: bytes | None) -> None:
        extra.put(("publish", feed, item_id, payload))

    assert listener.on("publish", cb) is cb
    feed = thoonk.feed("news")
    a = feed.publish(b"a")
    assert take(extra, 1) == [("publish", "news", a, b"a")]
    listener.off("publish", cb)
    listener.off("publish", cb)  # no error twice
    feed.publish(b"b")
    feed.retract(a)
    assert take(seen, 1) == [("retract", "news", a, None)]
    assert extra.empty()  # the publish of b was dispatched before the retract, to nobody
    with pytest.raises(ValueError):
        listener.on("publish_notice", cb)


def test_stop_and_restart(thoonk: Thoonk) -> None:
    listener = thoonk.listener()
    seen = recorder(listener, ("publish",))
    listener.start()
    assert listener.running and listener.connects == 1
    listener.stop()
    assert not listener.running
    feed = thoonk.feed("news")
    feed.publish(b"unheard")
    with listener:
        heard = feed.publish(b"heard")
        assert take(seen, 1) == [("publish", "news", heard, b"heard")]
    assert not listener.running


def test_reconnects_after_connection_is_killed(real_conn: Connection, prefix: str) -> None:
    thoonk = Thoonk(connection=real_conn, prefix=prefix)
    listener = thoonk.listener()
    seen = recorder(listener, ("publish",))
    with listener:
        feed = thoonk.feed("news")
        before = feed.publish(b"before")
        assert take(seen, 1) == [("publish", "news", before, b"before")]
        killed = real_conn.client.client_kill_filter(_type="pubsub")
        assert killed >= 1
        # pub/sub has no replay: publish until the resubscribed listener hears one
        heard: list[Event] = []
        sent: list[str] = []
        deadline = time.monotonic() + 15
        while not heard and time.monotonic() < deadline:
            sent.append(feed.publish(b"after"))
            heard = take(seen, 1, timeout=0.3)
        assert heard and heard[0][0] == "publish" and heard[0][3] == b"after"
        assert heard[0][2] in sent
        assert listener.connects >= 2
        assert listener.running


def test_start_without_a_server_raises_and_leaves_no_thread(prefix: str) -> None:
    from redis_server import free_port

    from taskpipe.errors import BrokerUnavailable

    thoonk = Thoonk(connection=Connection(f"redis://127.0.0.1:{free_port()}/0"), prefix=prefix)
    listener = thoonk.listener()
    with pytest.raises(BrokerUnavailable):
        listener.start(timeout=0.5)
    assert not listener.running
