"""Wire details found with the original Thoonk.js 0.5 client sharing channels with taskpipe
(issue 13), checked against a hand-written v1 client: plain Redis commands issued as thoonk.py
1.0 / thoonk.js 0.5 issue them (the originals are not installable here; thoonk.py is Python 2).

- a finish with an empty result publishes ``<id>\\0`` (only a plain acknowledgement is silent);
- a raw task that raises never publishes an error blob: the job is stalled with the reason;
- a feed edit moves the item to the end, as both original clients order a feed;
- ``taskpipe worker --poll-interval`` (legacy puts write no wake-up marker).
"""

from __future__ import annotations

import queue as stdlib_queue
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from polling import wait_for
from pubsub_probe import Sub
from worker_helpers import burst

from taskpipe import TaskPipe
from taskpipe.connection import Connection
from taskpipe.thoonk import Thoonk
from taskpipe.thoonk.keys import FeedKeys, JobKeys

WATCHDOG = 10.0


@pytest.fixture
def thoonk(conn: Connection, prefix: str) -> Iterator[Thoonk]:
    t = Thoonk(connection=conn, prefix=prefix)
    yield t
    t.stop_listener()


@pytest.fixture
def r(conn: Connection) -> Iterator[Any]:
    """The hand-written v1 client's own connection."""
    client = conn.new_client()
    yield client
    client.close()


# the hand-written v1 client (thoonk.py 1.0 / thoonk.js 0.5 command sequences) ------------------
def v1_create(r: Any, prefix: str, name: str, type: str) -> None:
    r.sadd(prefix + "feeds", name)
    r.hset(prefix + "feed.config:" + name, "type", type)


def v1_put(r: Any, k: JobKeys, item: bytes) -> str:
    jid = uuid.uuid4().hex
    pipe = r.pipeline(transaction=True)
    pipe.lpush(k.ids, jid)
    pipe.incr(k.publishes)
    pipe.hset(k.items, jid, item)
    pipe.zadd(k.published, {jid: int(time.time() * 1000)})
    pipe.execute()
    return jid


def v1_get(r: Any, k: JobKeys) -> tuple[str, bytes]:
    popped = r.brpop([k.ids], timeout=5)
    assert popped is not None
    jid = popped[1].decode()
    pipe = r.pipeline(transaction=True)
    pipe.zadd(k.claimed, {jid: int(time.time() * 1000)})
    pipe.hget(k.items, jid)
    _, item = pipe.execute()
    return jid, item


def v1_finish(r: Any, k: JobKeys, jid: str, result: bytes | None) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.zrem(k.claimed, jid)
    pipe.hdel(k.cancelled, jid)
    pipe.incr(k.finishes)
    if result is not None:  # both clients publish whenever a result is given, empty or not
        pipe.publish(k.ch_finish, jid.encode() + b"\0" + result)
    pipe.hdel(k.items, jid)
    pipe.zrem(k.published, jid)
    pipe.execute()


def v1_feed_publish(r: Any, k: FeedKeys, item_id: str, item: bytes) -> None:
    """thoonk.js 0.5 feed publish: ZADD (ms score, so an edit moves the item to the end), HSET,
    INCR, then PUBLISH publish or edit after EXEC."""
    pipe = r.pipeline(transaction=True)
    pipe.zadd(k.ids, {item_id: int(time.time() * 1000)})
    pipe.incr(k.publishes)
    pipe.hset(k.items, item_id, item)
    added, _, _ = pipe.execute()
    r.publish(k.ch_publish if added else k.ch_edit, item_id.encode() + b"\0" + item)


# 1. empty results --------------------------------------------------------------------------------
def test_empty_result_publishes_id_nul(thoonk: Thoonk, r: Any) -> None:
    job = thoonk.job_channel("jobs")
    k = job.keys
    sub = Sub(r, k.ch_finish)  # what a v1 producer listens to
    try:
        empty, ack, stored = job.put(b"a"), job.put(b"b"), job.put(b"c")
        claims = {c.id: c for c in job.claim(3)}
        job.finish(empty, b"", token=claims[empty].token)
        job.finish(ack, token=claims[ack].token)  # a plain acknowledgement: silent
        job.finish(stored, b"", result_ttl_ms=60_000, token=claims[stored].token)
        r.publish(k.ch_finish, b"marker")
        assert [d for _, d in sub.take(3)] == [
            empty.encode() + b"\0",
            stored.encode() + b"\0",
            b"marker",
        ]
    finally:
        sub.close()
    assert job.get_result(stored) == b""  # stored, and not "no result"
    assert job.get_result(ack) is None


def test_raw_task_returning_empty_bytes_reaches_a_v1_producer(app: TaskPipe, prefix: str) -> None:
    @app.task(raw=True, channel="legacy")
    def handle(item: bytes) -> bytes:
        return b""

    r = app.connection.new_client()
    k = app.thoonk.keys.job("legacy")
    v1_create(r, prefix, "legacy", "job")
    sub = Sub(r, k.ch_finish)
    try:
        jid = v1_put(r, k, b"legacy item")
        assert burst(app, ["legacy"]) == {"finished": 1}
        assert sub.take(1) == [(k.ch_finish, jid.encode() + b"\0")]
    finally:
        sub.close()
        r.close()


def test_on_finish_fires_for_a_v1_worker(thoonk: Thoonk, r: Any) -> None:
    publisher = thoonk.job("jobs")
    finished: stdlib_queue.Queue[bytes | None] = stdlib_queue.Queue()
    jid = publisher.publish(b"work", on_finish=finished.put)
    got_id, item = v1_get(r, publisher.keys)  # a legacy worker claims it ...
    assert (got_id, item) == (jid, b"work")
    v1_finish(r, publisher.keys, jid, b"")  # ... and finishes with an empty result
    assert finished.get(timeout=WATCHDOG) == b""


# 2. a raw task that raises -------------------------------------------------------------------------
def test_failing_raw_task_is_stalled_never_finished_with_an_error_blob(
    app: TaskPipe, prefix: str
) -> None:
    calls: list[bytes] = []

    @app.task(raw=True, channel="legacy")
    def handle(item: bytes) -> bytes:
        calls.append(item)
        if len(calls) == 1:
            raise ValueError("cannot resize")
        return item.upper()

    r = app.connection.new_client()
    k = app.thoonk.keys.job("legacy")
    v1_create(r, prefix, "legacy", "job")
    sub = Sub(r, k.ch_finish)
    ch = app.channel("legacy")
    try:
        jid = v1_put(r, k, b"cat.png")
        assert burst(app, ["legacy"]) == {"stalled": 1}
        info = ch.info(jid)
        assert info.state == "stalled"
        assert info.reason == "failed: ValueError: cannot resize"
        assert ch.stalled_ids() == [jid] and r.hget(k.items, jid) == b"cat.png"
        ch.retry(jid)  # what the CLI / dashboard retry does
        assert burst(app, ["legacy"]) == {"finished": 1}
        # the only thing a v1 producer ever saw on job.finish is the real result
        assert sub.take(1) == [(k.ch_finish, jid.encode() + b"\0CAT.PNG")]
    finally:
        sub.close()
        r.close()


def test_failing_raw_task_retries_by_its_policy_then_stalls(app: TaskPipe, prefix: str) -> None:
    @app.task(raw=True, channel="legacy", retries=1, retry_backoff=0)
    def handle(item: bytes) -> bytes:
        raise RuntimeError("always")

    r = app.connection.new_client()
    k = app.thoonk.keys.job("legacy")
    v1_create(r, prefix, "legacy", "job")
    sub = Sub(r, k.ch_finish)
    try:
        jid = v1_put(r, k, b"x")
        stats = burst(app, ["legacy"])
        assert stats == {"retried": 1, "stalled": 1}
        assert app.channel("legacy").info(jid).reason == "failed: RuntimeError: always"
        r.publish(k.ch_finish, b"marker")
        assert [d for _, d in sub.take(1)] == [b"marker"]  # nothing was published before it
    finally:
        sub.close()
        r.close()


# 3. feed edit order ---------------------------------------------------------------------------
def test_feed_edit_order_agrees_with_a_v1_client(thoonk: Thoonk, r: Any) -> None:
    feed = thoonk.feed("news")
    k = feed.keys
    for name in ("a", "b", "c"):
        feed.publish(name.encode(), id=name)

    def after_newest() -> bool:  # the v1 client scores with its own ms clock: let it pass ours
        newest = float(r.zrange(k.ids, -1, -1, withscores=True)[0][1])
        return time.time() * 1000 > newest + 1

    wait_for(after_newest, what="the client clock to pass the newest score")
    v1_feed_publish(r, k, "a", b"a edited by v1")  # a legacy edit: a moves to the end
    assert feed.get_ids() == ["b", "c", "a"]
    feed.publish(b"b edited by taskpipe", id="b")  # a taskpipe edit: the same rule
    assert feed.get_ids() == ["c", "a", "b"]
    # the order a v1 reader sees (ZRANGE) and get_all's dict agree
    assert [i.decode() for i in r.zrange(k.ids, 0, -1)] == list(feed.get_all()) == ["c", "a", "b"]


# 4. the worker's poll interval -----------------------------------------------------------------
def test_worker_poll_interval_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import taskpipe.cli.worker_cmd  # noqa: F401  (registers the command)
    from taskpipe.cli import cli

    (tmp_path / "pollapp.py").write_text(
        "from taskpipe import TaskPipe\napp = TaskPipe(broker='memory://pollapp')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: dict[str, Any] = {}

    class FakeWorker:
        def __init__(self, app: Any, channels: Any, **options: Any) -> None:
            seen.update(options)

        def run(self) -> int:
            return 0

    monkeypatch.setattr("taskpipe.worker.Worker", FakeWorker)
    result = CliRunner().invoke(cli, ["worker", "-A", "pollapp:app", "--poll-interval", "0.25"])
    assert result.exit_code == 0, result.output
    assert seen["max_block"] == 0.25
    result = CliRunner().invoke(cli, ["worker", "-A", "pollapp:app"])
    assert seen["max_block"] == 1.0
    result = CliRunner().invoke(cli, ["worker", "-A", "pollapp:app", "--poll-interval", "0"])
    assert result.exit_code == 2 and "poll-interval" in result.output
    # NaN passed the range check and crashed the worker with a raw ResponseError from BLPOP
    result = CliRunner().invoke(cli, ["worker", "-A", "pollapp:app", "--poll-interval", "nan"])
    assert result.exit_code == 2 and "poll-interval" in result.output
    sys.modules.pop("pollapp").app.close()
