"""Bulk publishing: ``Task.map`` (the fast path), ``app.publish_many`` and the envelope they write.

The fast path (``Task.map`` without options -> ``app.publish_calls`` -> ``args_encoder`` ->
``JobChannel.put_fresh_many`` -> ``job_put_fresh``) must write exactly what one ``delay()`` per
item writes, in order, check every item before anything is written, and run the same on real
Redis and ``memory://``.
"""

from __future__ import annotations

import datetime
import decimal
import random
from typing import Any

import pytest
from worker_helpers import burst

from taskpipe import PayloadTooLarge, SerializationError, TaskPipe
from taskpipe.serialization import args_encoder, decode_envelope, encode_envelope


def _random_args(rng: random.Random) -> tuple[Any, ...]:
    pool: list[Any] = [
        1,
        -7,
        2**70,
        1.5,
        "x",
        "ü" * 40,
        b"\x00bin",
        None,
        True,
        [1, [2, (3,)]],
        {"a": {"b": (1, 2)}},
        {1, 2},
        frozenset({"f"}),
        (),
        datetime.datetime(2026, 11, 23, 13, 0),
        datetime.timedelta(seconds=3),
        decimal.Decimal("1.25"),
        "y" * 300,
    ]
    return tuple(rng.choice(pool) for _ in range(rng.randrange(0, 5)))


@pytest.mark.parametrize("task", ["bench.noop", "a" * 300, "é.task"])
def test_args_encoder_writes_exactly_what_encode_envelope_writes(task: str) -> None:
    rng = random.Random(7)
    for serializer in ("msgpack", "json"):
        encode = args_encoder(task, serializer=serializer, max_size=None)
        for _ in range(300):
            args = _random_args(rng)
            if serializer == "json":
                args = tuple(
                    a for a in args if isinstance(a, (int, str, list, dict)) and a != 2**70
                )
            try:
                expected = encode_envelope(task, args, {}, {}, serializer=serializer, max_size=None)
            except SerializationError:
                with pytest.raises(SerializationError):
                    encode(args)
                continue
            assert encode(args) == expected
            assert decode_envelope(encode(args)).args == decode_envelope(expected).args


def test_args_encoder_errors_are_the_same_as_encode_envelope() -> None:
    encode = args_encoder("app.t", max_size=100)
    with pytest.raises(SerializationError, match=r"args\[1\]"):
        encode((1, object()))
    with pytest.raises(PayloadTooLarge):
        encode(("x" * 200,))
    assert len(encode(("x" * 60,))) <= 100  # under the limit: the fast path, same bytes
    assert encode(("x" * 60,)) == encode_envelope("app.t", ("x" * 60,), {}, {}, max_size=100)
    with pytest.raises(SerializationError, match="task name"):
        args_encoder("")(())


def test_map_publishes_in_order_with_the_tasks_options(app: TaskPipe) -> None:
    seen: list[Any] = []

    @app.task(channel="bulk", priority=False)
    def add(a: int, b: int = 0) -> int:
        seen.append(a)
        return a + b

    results = add.map([(i, 1) for i in range(1200)] + [5000])  # 3 batches of 500
    assert [r.channel for r in results] == [app.channel("bulk").name] * 1201
    assert len({r.id for r in results}) == 1201
    ch = app.channel("bulk")
    counts = ch.counts()
    assert counts["available"] == 1201 and counts["published_total"] == 1201
    burst(app, ["bulk"], concurrency=1)
    assert seen == [*range(1200), 5000]  # one thread: run in publish order
    assert results[7].get(timeout=5) == 8 and results[-1].get(timeout=5) == 5000


def test_map_of_a_priority_task_goes_to_the_head(app: TaskPipe) -> None:
    @app.task(channel="pq")
    def normal(x: int) -> int:
        return x

    @app.task(channel="pq", priority=True)
    def urgent(x: int) -> int:
        return x

    normal.map([1, 2])
    r = urgent.map([10, 11])
    claims = app.channel("pq").claim(4)
    assert [decode_envelope(c.item).args[0] for c in claims] == [11, 10, 1, 2]
    assert [c.id for c in claims[:2]] == [r[1].id, r[0].id]


def test_map_checks_every_item_before_writing(app: TaskPipe) -> None:
    @app.task(channel="checked")
    def t(x: Any) -> None:
        return None

    with pytest.raises(SerializationError, match=r"args\[0\]"):
        t.map([1, 2, object(), 4])
    with pytest.raises(PayloadTooLarge):
        t.map([1, "x" * (app.max_payload + 1)])
    assert app.channel("checked").counts()["published_total"] == 0
    assert t.map([]) == []


def test_map_with_options_and_publish_many_still_work(app: TaskPipe) -> None:
    @app.task(channel="opts")
    def t(x: int) -> int:
        return x * 2

    late = t.map([1, 2], delay=60)
    assert all(app.channel("opts").info(r.id).state == "delayed" for r in late)
    now = app.publish_many([t.s(3), t.s(4).set(id="fixed-4"), t.s(5)])
    assert now[1].id == "fixed-4"
    assert [decode_envelope(c.item).args[0] for c in app.channel("opts").claim(5)] == [3, 4, 5]


def test_map_on_a_json_app(broker_url: str, prefix: str) -> None:
    app = TaskPipe(broker=broker_url, prefix=prefix, serializer="json")
    try:

        @app.task(channel="js")
        def t(x: Any) -> Any:
            return x

        results = t.map([{"a": 1}, [1, 2], "s"])
        burst(app, ["js"], concurrency=2)
        assert [r.get(timeout=5) for r in results] == [{"a": 1}, [1, 2], "s"]
    finally:
        app.close()


def test_map_on_a_full_redis_is_broker_unavailable(prefix: str) -> None:
    from redis_server import RedisServer

    from taskpipe.errors import BrokerUnavailable

    server = RedisServer().start()
    app = TaskPipe(broker=server.url, prefix=prefix)
    try:

        @app.task(channel="full")
        def t(x: int) -> int:
            return x

        t.map([1])  # channel created, scripts loaded
        server.client().config_set("maxmemory", 1)  # noeviction: every write is refused (OOM)
        with pytest.raises(BrokerUnavailable, match="out of memory"):
            t.map(range(10))
        with pytest.raises(BrokerUnavailable):
            app.publish_many([t.s(1).set(id="x1")])
        server.client().config_set("maxmemory", 0)
        assert app.channel("full").counts()["published_total"] == 1
    finally:
        app.close()
        server.cleanup()


def test_publishing_to_a_broker_that_is_down_is_broker_unavailable(prefix: str) -> None:
    from redis_server import free_port

    from taskpipe.errors import BrokerUnavailable

    app = TaskPipe(
        broker=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix, publish_retry="0.3s"
    )  # retries briefly, then refuses
    try:

        @app.task(channel="down")
        def t(x: int) -> int:
            return x

        with pytest.raises(BrokerUnavailable, match="broker unavailable"):
            t.delay(1)  # the channel is opened (and created) first: that is where it fails
        with pytest.raises(BrokerUnavailable):
            t.map([1, 2])
        with pytest.raises(BrokerUnavailable):
            app.send("t", [1], id="fixed")
    finally:
        app.close()
