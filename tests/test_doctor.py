"""``taskpipe doctor`` and the eviction warnings, against real redis-servers started with the
settings under test (an evicting policy, no persistence, RDB only, CONFIG disabled, a replica)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from redis_server import RedisServer, free_port

from taskpipe import TaskPipe
from taskpipe.cli.main import _register, cli


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[..., RedisServer]]:
    started: dict[str, RedisServer] = {}

    def get(name: str, **kw: object) -> RedisServer:
        if name not in started:
            started[name] = RedisServer(**kw).start()  # type: ignore[arg-type]
        return started[name]

    yield get
    for server in started.values():
        server.cleanup()


def doctor(url: str, *args: str) -> Result:
    _register()
    return CliRunner().invoke(cli, ["doctor", "--broker", url, *args], catch_exceptions=False)


def levels(result: Result) -> dict[str, str]:
    data = json.loads(result.output)
    worst: dict[str, str] = {}
    order = ["ok", "warn", "unsafe"]
    for f in data["findings"]:
        if order.index(f["level"]) >= order.index(worst.get(f["check"], "ok")):
            worst[f["check"]] = f["level"]
    return worst


def test_safe_settings_pass(servers: Callable[..., RedisServer]) -> None:
    server = servers("aof", appendonly=True)
    result = doctor(server.url)
    assert result.exit_code == 0, result.output
    assert "UNSAFE" not in result.output and "0 unsafe" in result.output
    js = doctor(server.url, "--json")
    assert js.exit_code == 0 and json.loads(js.output)["unsafe"] is False
    assert levels(js) == {"version": "ok", "eviction": "ok", "persistence": "ok"}


def test_evicting_policy_and_no_persistence_are_unsafe(servers: Callable[..., RedisServer]) -> None:
    server = servers("lru", extra=["--maxmemory-policy", "allkeys-lru", "--maxmemory", "2mb"])
    client = server.client()
    for i in range(200):  # fill it past maxmemory: Redis evicts
        client.set(f"fill:{i}", "x" * 50_000)
    assert int(client.info("stats")["evicted_keys"]) > 0
    result = doctor(server.url)
    assert result.exit_code == 1, result.output
    assert "UNSAFE  eviction: maxmemory-policy is 'allkeys-lru'" in result.output
    assert "UNSAFE  persistence: no persistence" in result.output
    assert "UNSAFE  evicted: Redis has evicted" in result.output
    js = doctor(server.url, "--json")
    assert js.exit_code == 1 and json.loads(js.output)["unsafe"] is True
    assert levels(js)["eviction"] == levels(js)["persistence"] == "unsafe"


def test_rdb_only_is_unsafe_and_unlimited_lru_a_warning(
    servers: Callable[..., RedisServer],
) -> None:
    server = servers("rdb", extra=["--save", "3600 1", "--maxmemory-policy", "volatile-lru"])
    js = doctor(server.url, "--json")
    assert js.exit_code == 1
    found = {f["check"]: f for f in json.loads(js.output)["findings"]}
    assert (
        found["persistence"]["level"] == "unsafe"
        and "RDB snapshots only" in found["persistence"]["message"]
    )
    assert found["eviction"]["level"] == "warn" and "maxmemory is 0" in found["eviction"]["message"]


def test_config_disabled_is_a_warning_not_a_guess(servers: Callable[..., RedisServer]) -> None:
    server = servers("noconfig", appendonly=True, extra=["--rename-command", "CONFIG", ""])
    js = doctor(server.url, "--json")
    assert js.exit_code == 0, js.output
    found = {f["check"]: f for f in json.loads(js.output)["findings"]}
    assert found["eviction"]["level"] == "warn" and "cannot be read" in found["eviction"]["message"]
    assert found["persistence"]["level"] == "ok"  # aof_enabled comes from INFO


def test_a_replica_is_unsafe(servers: Callable[..., RedisServer]) -> None:
    primary = servers("aof", appendonly=True)
    replica = servers(
        "replica", appendonly=True, extra=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    result = doctor(replica.url)
    assert result.exit_code == 1 and "UNSAFE  role: this server is a replica" in result.output


def test_unreachable_and_memory_brokers() -> None:
    result = doctor(f"redis://127.0.0.1:{free_port()}/0")
    assert result.exit_code == 1 and "cannot reach the broker" in result.output
    result = doctor("memory://doc")
    assert result.exit_code == 0 and "WARN    broker: memory://" in result.output


def test_producer_and_status_warn_under_an_evicting_policy(
    servers: Callable[..., RedisServer], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = servers("lru-only", extra=["--maxmemory-policy", "allkeys-lfu"])
    caplog.set_level(logging.WARNING, logger="taskpipe")
    app = TaskPipe(broker=server.url, prefix=prefix)
    try:
        for _ in range(3):
            app.send("anything", (1,))
        app.send("anything", channel="other")
        warned = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(warned) == 1 and "'allkeys-lfu'" in warned[0].getMessage()  # once per app
    finally:
        app.close()
    _register()
    result = CliRunner().invoke(cli, ["status", "--broker", server.url, "--prefix", prefix])
    assert (
        result.exit_code == 0
        and "WARNING: Redis maxmemory-policy is 'allkeys-lfu'" in result.output
    )
    result = CliRunner().invoke(
        cli, ["status", "--broker", server.url, "--prefix", prefix, "--json"]
    )
    assert "allkeys-lfu" in json.loads(result.output)["warnings"][0]
    safe = servers("aof", appendonly=True)
    result = CliRunner().invoke(cli, ["status", "--broker", safe.url, "--prefix", prefix, "--json"])
    assert json.loads(result.output)["warnings"] == []
