"""The lean command path (``CommandLane``) for the hot script calls on one plain Redis.

Checks that it is used for the shared client's script calls, that replies and errors are what
``client.evalsha`` gives, that a connection left out of step is never reused, that it survives a
Redis restart, that ``fork`` children make their own connections, and that it is not used where
it must not be (memory://).
"""

from __future__ import annotations

import os

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import RedisServer

from taskpipe.connection import CommandLane, Connection
from taskpipe.thoonk.thoonk import Thoonk


def test_plain_redis_gets_a_lane_and_scripts_use_it(redis_server: RedisServer, prefix: str) -> None:
    conn = Connection(redis_server.url)
    try:
        assert isinstance(conn.lane, CommandLane)
        th = Thoonk(connection=conn, prefix=prefix)
        job = th.job("lane")
        jid = job.put(b"x")
        # the publish ran on a lane connection (made by the client's pool), not a pooled one
        assert len(conn.lane._idle) == 1
        assert conn.lane._idle[0] not in conn.client.connection_pool._available_connections
        claim = job.claim(1)[0]
        assert claim.id == jid and claim.item == b"x"
        job.finish(jid, b"r", result_ttl_ms=60_000, token=claim.token)
        assert job.get_result(jid, timeout=1) == (b"x", b"r")  # (query, result)
        assert len(conn.lane._idle) == 1  # one thread, one connection, reused
    finally:
        conn.close()
    assert conn.lane is not None and conn.lane._idle == []


def test_memory_and_given_clients_have_no_lane(redis_server: RedisServer) -> None:
    assert Connection("memory://lane").lane is None
    assert Connection(client=redis.Redis(port=redis_server.port)).lane is None


def test_error_reply_keeps_the_connection_and_raises_as_redis_py(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    lane = CommandLane(client)
    sha = client.script_load("return redis.error_reply('ERR boom')")
    with pytest.raises(redis.exceptions.ResponseError, match="boom"):
        lane.evalsha(sha, 0)
    with pytest.raises(redis.exceptions.NoScriptError):
        lane.evalsha("0" * 40, 0)
    assert len(lane._idle) == 1 and lane._idle[0]._sock is not None
    assert lane.execute("PING") in (b"PONG", True)
    assert lane.evalsha(client.script_load("return {1, 'a'}"), 0) == [1, b"a"]
    lane.close()


def test_interrupted_call_drops_the_connection(redis_server: RedisServer) -> None:
    # no retries: one timed-out try is the case (redis-py's default retries it ten times)
    client = redis.Redis(port=redis_server.port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    lane = CommandLane(client)
    client.delete("lane:list")
    with pytest.raises(redis.exceptions.TimeoutError):
        lane.execute("BLPOP", "lane:list", 5)  # the reply never comes in time
    conn = lane._idle[0]
    assert conn._sock is None  # disconnected: a late BLPOP reply can never answer a later call
    client.rpush("lane:list", "a")
    assert lane.execute("LLEN", "lane:list") in (0, 1)
    lane.close()


def test_lane_survives_a_redis_restart(prefix: str) -> None:
    server = RedisServer().start()
    try:
        conn = Connection(server.url)
        job = Thoonk(connection=conn, prefix=prefix).job("restart")
        job.put(b"before")
        server.restart(empty=True)
        jid = job.put(b"after")  # the stale lane connection is retried on a fresh one
        assert job.claim(1)[0].id == jid
        conn.close()
    finally:
        server.cleanup()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_makes_its_own_connections(redis_server: RedisServer, prefix: str) -> None:
    conn = Connection(redis_server.url)
    job = Thoonk(connection=conn, prefix=prefix).job("fork")
    job.put(b"parent")
    parent_conn = conn.lane._idle[0] if conn.lane else None
    pid = os.fork()
    if pid == 0:  # the child: publish, then leave without running atexit handlers
        try:
            job.put(b"child")
            ok = conn.lane is not None and parent_conn not in conn.lane._idle
            os._exit(0 if ok else 3)
        except BaseException:  # noqa: BLE001 - the forked child must always reach os._exit
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    job.put(b"parent again")  # the parent's connection is still in step
    assert sorted(c.item for c in job.claim(3)) == [b"child", b"parent", b"parent again"]
    conn.close()
