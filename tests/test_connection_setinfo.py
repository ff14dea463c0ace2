"""The clients taskpipe makes tell Redis who they are (CLIENT SETINFO lib-name / lib-ver) as
redis-py does by default, without redis-py looking its own version up again (``importlib``
metadata, ~1 ms of CPU) for every connection object its pools make."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.utils
from redis_server import RedisServer

from taskpipe.connection import Connection

driver_info = pytest.importorskip("redis.driver_info")  # redis-py < 7.1 reads it once, at import


@pytest.fixture
def conn(redis_server: RedisServer) -> Iterator[Connection]:
    c = Connection(redis_server.url)
    yield c
    c.close()


def test_connections_send_redis_pys_own_name_and_version(conn: Connection) -> None:
    default = driver_info.DriverInfo()  # what redis-py sends when not told otherwise
    other = conn.new_client()
    try:
        for client in (conn.client, other):
            client.ping()
            made = client.connection_pool.get_connection()
            try:
                assert made.driver_info.formatted_name == default.formatted_name == "redis-py"
                assert made.driver_info.lib_version == default.lib_version
            finally:
                client.connection_pool.release(made)
            info = client.client_info()
            if "lib-name" in info:  # Redis 7.2+ keeps what CLIENT SETINFO sent
                assert (info["lib-name"], info["lib-ver"]) == ("redis-py", default.lib_version)
    finally:
        other.close()


def test_connection_objects_do_not_look_the_version_up_each(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []

    def counted() -> str:
        lookups.append("lookup")
        return redis.__version__

    monkeypatch.setattr(redis.utils, "get_lib_version", counted)
    clients = [conn.new_client() for _ in range(3)]
    try:
        pool = conn.client.connection_pool
        held = [pool.get_connection() for _ in range(3)]  # three connection objects
        for made in held:
            pool.release(made)
        for client in clients:
            client.ping()
        assert lookups == []
        shared = {id(c.connection_pool.connection_kwargs["driver_info"]) for c in clients}
        assert len(shared) == 1
    finally:
        for client in clients:
            client.close()
