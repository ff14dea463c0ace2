"""The thoonk.py document (shared/seeds/thoonk-py.txt) and the Thoonk Jobs README, call by call.

Each test is one section of the document, with its calls written as the document shows them,
run on real Redis and on memory://. Handlers and ``on_finish`` callbacks report through a
``queue.Queue`` (a watchdog ``get(timeout=...)``, never a timing assertion).
"""

from __future__ import annotations

import json
import queue as stdlib_queue
import threading
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from redis_server import RedisServer

from taskpipe.connection import Connection
from taskpipe.errors import (
    BrokerUnavailable,
    ConfigError,
    DurationError,
    Empty,
    FeedDoesNotExist,
    FeedExists,
    InvalidPosition,
    ItemNotFound,
    JobNotFound,
    ResultTimeout,
    SerializationError,
    TaskpipeError,
    WrongFeedType,
    WrongJobState,
)
from taskpipe.thoonk import Job, JobClaim, Thoonk

WATCHDOG = 10.0  # how long a test waits for an event before failing (never reached when green)


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Iterator[Thoonk]:
    t = Thoonk(connection=conn, prefix=prefix)
    yield t
    t.stop_listener()


class Calls:
    """Collects handler calls from the listener thread."""

    def __init__(self) -> None:
        self.q: stdlib_queue.Queue[tuple[Any, ...]] = stdlib_queue.Queue()

    def handler(self, name: str) -> Any:
        return lambda *args: self.q.put((name, *args))

    def next(self) -> tuple[Any, ...]:
        return self.q.get(timeout=WATCHDOG)

    def expect(self, *call: Any) -> None:
        """Read calls until this one (a call that never comes fails the watchdog)."""
        while self.next() != call:
            pass


# Using Thoonk -------------------------------------------------------------------------------
def test_thoonk_host_port_db_listen(redis_server: RedisServer, prefix: str) -> None:
    url = urlparse(redis_server.url)
    host, port = url.hostname, url.port
    pubsub = Thoonk(host, port, 0, listen=True, prefix=prefix)
    try:
        assert pubsub.connection.url == f"redis://{host}:{port}/0"
        assert pubsub.listener_object().running  # listen=True: live events
        calls = Calls()
        pubsub.register_handler("create_notice", calls.handler("create"))
        pubsub.create_feed("live", {"max_length": 50})
        assert calls.next() == ("create", "live")
    finally:
        pubsub.close()
    quiet = Thoonk(host, port, 0, prefix=prefix)  # listen mode is off by default
    try:
        assert not quiet.listener_object().running
        assert quiet.feed_exists("live")
    finally:
        quiet.close()


def test_thoonk_url_client_and_bad_forms(broker_url: str, prefix: str) -> None:
    by_url = Thoonk(broker_url, prefix=prefix)
    try:
        by_url.create_feed("f")
        by_client = Thoonk(by_url.client, prefix=prefix)
        assert by_client.feed_exists("f")
    finally:
        by_url.close()
    unconnected = Thoonk("localhost", 6390, 3)  # connects on first use only
    assert unconnected.connection.url == "redis://localhost:6390/3"
    unconnected.close()
    with pytest.raises(ConfigError):
        Thoonk("redis://127.0.0.1:1/0", 6379)


# Creating and configuring a feed ---------------------------------------------------------------
def test_creating_a_feed(thoonk: Thoonk) -> None:
    thoonk.create_feed("feed_name", {"max_length": 50})
    assert thoonk.get_config("feed_name")["max_length"] == "50"
    assert thoonk.get_type("feed_name") == "feed"
    with pytest.raises(FeedExists):
        thoonk.create_feed("feed_name", {"max_length": 50})
    thoonk.create_feed("as_json", '{"max_length": 7}')
    assert thoonk.feed("as_json").max_length == 7
    thoonk.create_feed("a_queue", {"type": "queue"})
    with pytest.raises(WrongFeedType):
        thoonk.feed("a_queue")
    # OR an object referencing the feed, creating it if missing, reconfiguring it if given a config
    test_feed = thoonk.feed("feed_name")
    assert test_feed.max_length == 50
    assert thoonk.feed("feed_name", {"max_length": 10}).max_length == 10
    test_queue = thoonk.queue("queue name")
    test_job = thoonk.job("job channel name")
    test_sorted = thoonk.sorted_feed("sorted name")
    assert isinstance(test_job, Job)
    assert {thoonk.get_type(n) for n in ("queue name", "job channel name", "sorted name")} == {
        "queue",
        "job",
        "sorted_feed",
    }
    assert test_queue.name == "queue name" and test_sorted.name == "sorted name"


def test_configuring_a_feed(thoonk: Thoonk) -> None:
    thoonk.create_feed("feed_name")
    json_config = json.dumps({"max_length": 3, "title": "news"})
    thoonk.set_config("feed_name", json_config)
    assert thoonk.get_config("feed_name")["max_length"] == "3"
    thoonk.set_config("feed_name", {"max_length": 4, "type": "queue"})  # type stays what it is
    assert thoonk.get_config("feed_name") | {"schema": ""} == {
        "type": "feed",
        "max_length": "4",
        "title": "news",
        "schema": "",
    }
    with pytest.raises(ConfigError):
        thoonk.set_config("feed_name", "{not json")
    with pytest.raises(ConfigError):
        thoonk.set_config("feed_name", "[1, 2]")
    with pytest.raises(FeedDoesNotExist):
        thoonk.set_config("missing", {"max_length": 1})


def test_feed_registry(thoonk: Thoonk) -> None:
    thoonk.create_feed("a")
    thoonk.job("b")
    assert thoonk.feed_exists("a") and not thoonk.feed_exists("zzz")
    assert thoonk.get_feed_names() == {"a", "b"}
    thoonk.delete_feed("a")
    assert not thoonk.feed_exists("a") and thoonk.get_feed_names() == {"b"}
    with pytest.raises(FeedDoesNotExist):
        thoonk.delete_feed("a")


# Subscribing to a feed -------------------------------------------------------------------------
def test_subscribing_to_a_feed(thoonk: Thoonk) -> None:
    calls = Calls()
    for notice in (
        "create_notice",
        "delete_notice",
        "publish_notice",
        "retract_notice",
        "edit_notice",
        "position_notice",
        "finish_notice",
        "config_notice",
    ):
        thoonk.register_handler(notice, calls.handler(notice))
    thoonk.start_listener()
    feed = thoonk.feed("test_feed")
    calls.expect("create_notice", "test_feed")  # args: feedname
    calls.expect("config_notice", "test_feed")
    feed.publish("item contents", id="x")
    calls.expect("publish_notice", "test_feed", b"item contents", "x")  # feedname, item, id
    feed.publish("edited", id="x")
    calls.expect("edit_notice", "test_feed", b"edited", "x")
    feed.retract("x")
    calls.expect("retract_notice", "test_feed", "x")  # feedname, id
    job = thoonk.job("jobs")
    jid = job.put("work")
    job.get(timeout=5)
    job.finish(jid, "done", result=True)
    calls.expect("finish_notice", "jobs", jid, b"done")  # feedname, id, result
    thoonk.delete_feed("jobs")
    calls.expect("delete_notice", "jobs")  # args: feedname
    removed = Calls()
    handler = removed.handler("removed")
    thoonk.register_handler("publish_notice", handler)
    thoonk.remove_handler("publish_notice", handler)
    feed.publish("again", id="y")
    calls.expect("publish_notice", "test_feed", b"again", "y")
    feed.retract("y")
    calls.expect("retract_notice", "test_feed", "y")  # the publish was fully dispatched by now
    assert removed.q.empty()
    with pytest.raises(ValueError):
        thoonk.register_handler("publish", calls.handler("x"))
    with pytest.raises(TypeError):
        thoonk.register_handler("publish_notice", "not callable")  # type: ignore[arg-type]


def test_position_notice(thoonk: Thoonk) -> None:
    calls = Calls()
    thoonk.register_handler("position_notice", calls.handler("position"))
    deck = thoonk.sorted_feed("deck")
    thoonk.start_listener()
    deck.append("a")
    deck.append("b")
    deck.move(":1", "2")
    assert [calls.next() for _ in range(3)] == [
        ("position", "deck", "1", ":end"),
        ("position", "deck", "2", ":end"),
        ("position", "deck", "2", ":1"),
    ]  # feedname, id, relpos


# Using a feed ----------------------------------------------------------------------------------
def test_using_a_feed(thoonk: Thoonk) -> None:
    feed = thoonk.feed("test_feed")
    feed.publish("item contents", id="optional id")
    generated = feed.publish("another")
    feed.publish("third", id="3")
    assert feed.get_ids() == ["optional id", generated, "3"]
    # an edit replaces the item and moves it to the end of the feed
    feed.publish("edited contents", id="optional id")
    item_ids = feed.get_ids()
    assert item_ids == [generated, "3", "optional id"]
    items = feed.get_all()
    assert items == {generated: b"another", "3": b"third", "optional id": b"edited contents"}
    assert list(items) == item_ids  # a dict in feed order
    for id in feed.get_ids():  # iterating over items in published order
        assert items[id] == feed.get_item(id)
    item = feed.get_item("optional id")
    assert item == b"edited contents"
    feed.retract("optional id")
    assert feed.get_item("optional id") is None and "optional id" not in feed.get_all()
    with pytest.raises(ItemNotFound):
        feed.retract("optional id")
    with pytest.raises(TypeError):
        feed.retract(None)  # type: ignore[arg-type]


# Using a sorted feed ---------------------------------------------------------------------------
def test_inserting_in_a_sorted_feed(thoonk: Thoonk) -> None:
    sorted_feed = thoonk.sorted_feed("sortedfeed_name")
    sorted_feed.append("new last item")  # 1
    sorted_feed.prepend("new first item")  # 2
    sorted_feed.publish("another new last item")  # 3
    sorted_feed.publish_before("3", "new item")  # 4
    sorted_feed.publish_after("1", "new item after 1")  # 5
    assert sorted_feed.get_ids() == ["2", "1", "5", "4", "3"]
    assert list(sorted_feed.get_all().items()) == [
        ("2", b"new first item"),
        ("1", b"new last item"),
        ("5", b"new item after 1"),
        ("4", b"new item"),
        ("3", b"another new last item"),
    ]
    with pytest.raises(ItemNotFound):
        sorted_feed.publish_before("99", "x")
    with pytest.raises(ItemNotFound):
        sorted_feed.publish_after("99", "x")


def test_moving_an_item_in_a_sorted_feed(thoonk: Thoonk) -> None:
    sorted_feed = thoonk.sorted_feed("sortedfeed_name")
    for item in "abcd":
        sorted_feed.append(item)  # ids 1..4
    sorted_feed.move_first("3")
    assert sorted_feed.get_ids() == ["3", "1", "2", "4"]
    sorted_feed.move_last("3")
    assert sorted_feed.get_ids() == ["1", "2", "4", "3"]
    sorted_feed.move_before("1", "4")  # ('existing id', 'item id')
    assert sorted_feed.get_ids() == ["4", "1", "2", "3"]
    sorted_feed.move_after("2", "4")
    assert sorted_feed.get_ids() == ["1", "2", "4", "3"]
    sorted_feed.move(":2", "3")  # before existing item 2
    assert sorted_feed.get_ids() == ["1", "3", "2", "4"]
    sorted_feed.move("4:", "1")  # after existing item 4
    assert sorted_feed.get_ids() == ["3", "2", "4", "1"]
    sorted_feed.move("begin:", "1")
    assert sorted_feed.get_ids() == ["1", "3", "2", "4"]
    sorted_feed.move(":end", "1")
    assert sorted_feed.get_ids() == ["3", "2", "4", "1"]


def test_sorted_feed_old_move_order_warns(thoonk: Thoonk) -> None:
    sorted_feed = thoonk.sorted_feed("deck")
    for item in "abc":
        sorted_feed.append(item)
    with pytest.warns(DeprecationWarning, match="move\\(relpos, id\\)"):
        sorted_feed.move("3", "begin:")  # taskpipe's old (id, relpos) order
    assert sorted_feed.get_ids() == ["3", "1", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented order never warns
        sorted_feed.move(":end", "3")
    assert sorted_feed.get_ids() == ["1", "2", "3"]


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda sf: sf.move("middle", "1"), InvalidPosition),  # unknown relpos
        (lambda sf: sf.move("1:2", "1"), InvalidPosition),
        (lambda sf: sf.move(":1", "1"), InvalidPosition),  # relative to itself
        (lambda sf: sf.move(":99", "1"), ItemNotFound),  # missing pivot
        (lambda sf: sf.move(":end", "99"), ItemNotFound),  # missing item
        (lambda sf: sf.move_before("99", "1"), ItemNotFound),
        (lambda sf: sf.move_after("1", "99"), ItemNotFound),
        (lambda sf: sf.move_first("99"), ItemNotFound),
        (lambda sf: sf.move_last(None), TypeError),  # wrong object type
        (lambda sf: sf.move(None, "1"), InvalidPosition),
    ],
)
def test_sorted_feed_bad_input(thoonk: Thoonk, call: Any, error: type[Exception]) -> None:
    sorted_feed = thoonk.sorted_feed("deck")
    sorted_feed.append("a")
    sorted_feed.append("b")
    with pytest.raises(error):
        call(sorted_feed)
    assert sorted_feed.get_ids() == ["1", "2"]


# Using a queue ---------------------------------------------------------------------------------
def test_using_a_queue(thoonk: Thoonk) -> None:
    queue = thoonk.queue("queue_feed")
    try:
        queue.put("normal item")
        queue.put("priority item", priority=queue.HIGH)
        queue.put("another normal item", priority=queue.NORMAL)
        item = queue.get()
        assert item == b"priority item"
        timed_item = queue.get(timeout=5)
        assert timed_item == b"normal item"
        assert queue.get(timeout=5) == b"another normal item"
        with pytest.raises(Empty) as caught:
            queue.get(timeout=0.05)
        assert isinstance(caught.value, stdlib_queue.Empty)
        assert isinstance(caught.value, TaskpipeError)
    finally:
        queue.close()


def test_queue_get_blocks_forever_until_an_item(thoonk: Thoonk) -> None:
    queue = thoonk.queue("queue_feed")
    got: list[bytes] = []
    started = threading.Event()

    def consume() -> None:
        started.set()
        got.append(queue.get())  # no timeout: blocks until there is an item

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    started.wait(WATCHDOG)
    queue.put("late")
    t.join(WATCHDOG)
    assert got == [b"late"]
    queue.close()


# Using a job feed ------------------------------------------------------------------------------
def test_publishing_and_claiming_jobs(thoonk: Thoonk) -> None:
    job = thoonk.job("job_feed")
    job.put("job contents")
    job.put("priority job", priority=job.HIGH)
    data = job.get()
    assert isinstance(data, JobClaim)
    id, item, cancel_count = data  # thoonk.py 1.0.1's triple
    assert (item, cancel_count) == (b"priority job", 0)
    assert data.id == id and data.item == item and data.cancel_count == 0 and data.token
    timed_data = job.get(timeout=5)
    assert timed_data.item == b"job contents"
    with pytest.raises(Empty):
        job.get(timeout=0.05)
    job.finish(id)
    job.finish(timed_data.id)


def test_job_get_zero_blocks_forever(thoonk: Thoonk) -> None:
    job = thoonk.job("coolJobChannel")
    got: list[JobClaim] = []
    started = threading.Event()

    def work() -> None:
        started.set()
        got.append(job.get(0))  # Thoonk Jobs: get(0) waits for the next job

    t = threading.Thread(target=work, daemon=True)
    t.start()
    started.wait(WATCHDOG)
    jid = job.put("late")
    t.join(WATCHDOG)
    assert [c.id for c in got] == [jid]


def test_cancel_stall_retry_retract(thoonk: Thoonk) -> None:
    job = thoonk.job("job_feed")
    jid = job.put("job contents")
    job.get(timeout=5)
    job.cancel(jid)  # back in the queue, count +1
    again_id, _, cancel_count = job.get(timeout=5)
    assert (again_id, cancel_count) == (jid, 1)
    job.stall(jid)
    with pytest.raises(Empty):
        job.get(timeout=0.05)  # a stalled job is not dispatched
    job.retry(jid)
    assert job.get(timeout=5).id == jid
    job.retract(jid)
    assert job.info(jid).state == "unknown"
    for call in (job.cancel, job.stall, job.finish, job.retract):
        with pytest.raises(JobNotFound):
            call(jid)
    other = job.put("x")
    with pytest.raises(WrongJobState):
        job.finish(other)  # not claimed


def test_finishing_a_job(thoonk: Thoonk, prefix: str) -> None:
    job = thoonk.job("job_feed")
    ids = [job.put(f"query {i}") for i in range(4)]
    for _ in ids:
        job.get(timeout=5)
    job.finish(ids[0])  # a plain acknowledgement
    job.finish(ids[1], "result contents", result=True)  # a result for the owner
    job.finish(ids[2], "result contents", result=True, timeout=5)  # kept 5 s
    job.finish(ids[3], "taskpipe form")  # a result, taskpipe's form
    pttl = thoonk.client.pttl(job.keys.result(ids[2]))
    assert 0 < pttl <= 5000
    assert 0 < thoonk.client.pttl(job.keys.query(ids[2])) <= 5000
    assert thoonk.client.pttl(job.keys.result(ids[1])) > 5000  # the default: one day
    query, result = job.get_result(ids[1], timeout=5)
    assert (query, result) == (b"query 1", b"result contents")
    assert job.get_result(ids[2], timeout=5) == (b"query 2", b"result contents")
    assert job.get_result(ids[3], timeout=5) == (b"query 3", b"taskpipe form")
    assert thoonk.client.get(job.keys.result(ids[0])) is None  # nothing kept for a plain ack
    assert all(job.info(i).state == "finished" for i in ids)


def test_finish_result_false_and_old_keyword(thoonk: Thoonk) -> None:
    job = thoonk.job("job_feed")
    a, b = job.put("qa"), job.put("qb")
    job.get(timeout=5)
    job.get(timeout=5)
    job.finish(a, "dropped", result=False)  # thoonk.py: no result without result=True
    assert thoonk.client.get(job.keys.result(a)) is None
    with pytest.warns(DeprecationWarning, match="result=True"):
        job.finish(b, result=b"old form")
    assert job.get_result(b) == (b"qb", b"old form")


def test_get_result_waits_for_the_finish(thoonk: Thoonk) -> None:
    job = thoonk.job("job_feed")
    jid = job.put("the query")
    got: list[tuple[bytes | None, bytes]] = []
    waiting = threading.Event()

    def owner() -> None:
        waiting.set()
        got.append(job.get_result(jid, timeout=WATCHDOG))

    t = threading.Thread(target=owner, daemon=True)
    t.start()
    waiting.wait(WATCHDOG)
    claim = job.get(timeout=5)
    job.finish(claim.id, "the result", result=True)
    t.join(WATCHDOG)
    assert got == [(b"the query", b"the result")]
    with pytest.raises(ResultTimeout):
        job.get_result(job.put("never run"), timeout=0.05)


# Thoonk Jobs: publish ------------------------------------------------------------------------
def test_thoonk_jobs_publish_with_on_finish(thoonk: Thoonk) -> None:
    job_publisher = thoonk.job("coolJobChannel")
    finished: stdlib_queue.Queue[bytes | None] = stdlib_queue.Queue()
    jid = job_publisher.publish(b'{"whatever": "you need as json"}', on_finish=finished.put)
    custom = job_publisher.publish(b"custom", id="customId", priority=True, on_finish=finished.put)
    plain = job_publisher.publish(b"no callback")
    assert custom == "customId" and len(jid) == 32 and plain
    job_worker = thoonk.job("coolJobChannel")
    item_id, item, _ = job_worker.get(0)
    assert (item_id, item) == ("customId", b"custom")  # priority: the front of the queue
    job_worker.finish(item_id, "the results")
    assert finished.get(timeout=WATCHDOG) == b"the results"
    claim = job_worker.get(timeout=5)
    assert claim.id == jid
    job_worker.finish(claim.id, b"", result=True)  # an empty result still fires it
    assert finished.get(timeout=WATCHDOG) == b""
    assert finished.empty()
    with pytest.raises(TypeError):
        job_publisher.publish(b"x", on_finish="nope")  # type: ignore[arg-type]


# bad input keeps its typed errors ------------------------------------------------------------
def test_bad_input_to_the_documented_calls(thoonk: Thoonk) -> None:
    thoonk.create_feed("a_feed")
    with pytest.raises(WrongFeedType):
        thoonk.job("a_feed")  # wrong object type
    with pytest.raises(WrongFeedType):
        thoonk.create_feed("x", {"type": "list"})
    with pytest.raises(ConfigError):
        thoonk.create_feed("y", "not json")
    job = thoonk.job("job_feed")
    jid = job.put("q")
    job.get(timeout=5)
    with pytest.raises(TypeError):
        job.finish(jid, 5, result=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        job.finish(jid, "r", result=True, timeout=-1)
    with pytest.raises(ValueError):
        job.get(timeout=-1)
    with pytest.raises(JobNotFound):
        job.finish("missing id", "r", result=True)
    assert job.info(jid).state == "claimed"  # none of the refused calls changed it
    queue = thoonk.queue("q")
    with pytest.raises(SerializationError):
        queue.put(None)  # type: ignore[arg-type]
    with pytest.raises(FeedDoesNotExist):
        thoonk.set_config("nope", '{"max_length": 1}')
    with pytest.raises(ItemNotFound):
        thoonk.feed("a_feed").retract("missing id")


@pytest.mark.parametrize("bad", [float("nan"), "soon", True, float("inf"), -1])
def test_bad_wait_timeouts_are_typed_errors(thoonk: Thoonk, bad: object) -> None:
    # get(timeout=nan) blocked forever; "soon" raised a bare TypeError from a comparison
    job, queue = thoonk.job("job_feed"), thoonk.queue("q")
    for call in (
        lambda: job.get(timeout=bad),  # type: ignore[arg-type]
        lambda: queue.get(timeout=bad),  # type: ignore[arg-type]
        lambda: job.get_result("some id", timeout=bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(DurationError):  # a ConfigError and a ValueError
            call()


def test_wait_timeouts_take_durations(thoonk: Thoonk) -> None:
    job, queue = thoonk.job("job_feed"), thoonk.queue("q")
    with pytest.raises(Empty):
        job.get(timeout="10ms")
    with pytest.raises(Empty):
        queue.get(timeout=0.01)
    jid = job.put("q")
    assert job.get(timeout="1s")[0] == jid


def test_job_items_of_a_wrong_type_are_serialization_errors(thoonk: Thoonk) -> None:
    # the job layer raised a plain TypeError (not a TaskpipeError) where feeds and queues raise
    # SerializationError, which is still a TypeError
    job = thoonk.job("job_feed")
    for bad in (None, {"a": 1}, 5):
        with pytest.raises(SerializationError, match="bytes or str"):
            job.put(bad)  # type: ignore[arg-type]
    jid = job.put("q")
    job.get(timeout=5)
    with pytest.raises(SerializationError):
        job.finish(jid, 5, result=True)  # type: ignore[arg-type]
    assert job.info(jid).state == "claimed"


def test_documented_calls_raise_broker_unavailable_when_redis_is_down() -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Thoonk("127.0.0.1", port, 0)
    try:
        for call in (
            lambda: down.feed_exists("f"),
            down.get_feed_names,
            lambda: down.create_feed("f"),
            lambda: down.delete_feed("f"),
            lambda: down.feed("f"),
            lambda: down.job("j"),
        ):
            with pytest.raises(BrokerUnavailable):
                call()
    finally:
        down.close()
