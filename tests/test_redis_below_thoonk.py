"""Every Redis command is sent from the Thoonk layer (``taskpipe/thoonk/``) or the layer-1
connection modules; everything above goes through their objects (DESIGN §1, issue 19 item 1).

The scan reads each module with ``ast`` and flags a call of a redis-py command method (the
public methods of redis-py's client, pipeline and pub/sub classes: ``hset``, ``get``, ``eval``,
``evalsha``, ``pipeline``, ``pubsub``, ``execute_command``, ``publish``, ``zadd``...) on a
receiver that is a Redis client: a name or attribute called ``client``/``*_client``/``redis``,
``pipe``/``pipeline``/``pubsub``, a name the module binds to one (``c = app.thoonk.client``), or
what ``new_client()`` / ``.pipeline()`` / ``.pubsub()`` / another command call on such a receiver
returns (chained pipeline calls).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import redis
import redis.asyncio
import redis.asyncio.client
import redis.client
import redis.cluster

import taskpipe

PKG = Path(taskpipe.__file__).parent

#: modules allowed to talk to Redis directly, besides taskpipe/thoonk/ (layer 1: connecting and
#: retrying, with no key names)
LAYER_ONE = {"connection.py", "list_waiter.py", "broker_retry.py"}

_CLASSES = (
    redis.Redis,
    redis.client.Pipeline,
    redis.client.PubSub,
    redis.asyncio.Redis,
    redis.asyncio.client.Pipeline,
    redis.asyncio.client.PubSub,
    redis.cluster.RedisCluster,
    redis.cluster.ClusterPipeline,
)
COMMANDS = frozenset(
    name
    for cls in _CLASSES
    for name in dir(cls)
    if not name.startswith("_") and callable(getattr(cls, name, None))
) - {"close", "aclose"}

_CLIENT_NAME = re.compile(r"(^|_)(client|redis|pipe|pipeline|pubsub)$")
_CLIENT_FACTORIES = {"new_client", "pipeline", "pubsub"}


def _is_client(node: ast.expr, aliases: frozenset[str] = frozenset()) -> bool:
    if isinstance(node, ast.Name):
        return bool(_CLIENT_NAME.search(node.id)) or node.id in aliases
    if isinstance(node, ast.Attribute):
        return bool(_CLIENT_NAME.search(node.attr))
    if isinstance(node, ast.Await):
        return _is_client(node.value, aliases)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in _CLIENT_FACTORIES:
            return True
        # pipe.hget(..).get(..): a command on a pipeline returns the pipeline
        return node.func.attr in COMMANDS and _is_client(node.func.value, aliases)
    return False


def _aliases(tree: ast.AST) -> frozenset[str]:
    """Names bound to a client anywhere in the module (``c = app.thoonk.client``)."""
    names: set[str] = set()
    for _ in range(3):  # an alias of an alias
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and _is_client(node.value, frozenset(names))
            ):
                names.add(node.targets[0].id)
    return frozenset(names)


def redis_calls(source: str) -> list[tuple[int, str]]:
    """(line, call) of every Redis command call on a client in ``source``."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in COMMANDS
            and _is_client(node.func.value, aliases)
        ):
            found.append((node.lineno, ast.unparse(node.func)))
    return found


def _outside_thoonk() -> list[Path]:
    return [
        p
        for p in sorted(PKG.rglob("*.py"))
        if "thoonk" not in p.relative_to(PKG).parts[:1]
        and not (p.parent == PKG and p.name in LAYER_ONE)
    ]


def test_the_command_list_comes_from_redis_py() -> None:
    for name in (
        "hset",
        "get",
        "eval",
        "evalsha",
        "pipeline",
        "pubsub",
        "execute_command",
        "publish",
        "zadd",
        "time",
        "script_load",
        "config_get",
        "subscribe",
        "watch",
    ):
        assert name in COMMANDS, name
    assert len(COMMANDS) > 300


def test_no_redis_command_above_the_thoonk_layer() -> None:
    offenders = [
        f"{path.relative_to(PKG.parent)}:{line}: {call}"
        for path in _outside_thoonk()
        for line, call in redis_calls(path.read_text())
    ]
    assert offenders == [], (
        "Redis commands above the Thoonk layer: give each a home in taskpipe/thoonk/ (a method "
        "on JobChannel / Thoonk, or a store like CronStore; see docs/architecture.md) and call "
        "that instead:\n" + "\n".join(offenders)
    )


def test_the_scan_finds_direct_calls() -> None:
    source = """
def f(app, ch, self):
    app.thoonk.client.hset("k", "f", "v")
    pipe = app.connection.client.pipeline(transaction=False)
    pipe.hget("k", "a").zscore("z", "m")
    app.connection.new_client().pubsub()
    self._client.evalsha("abc", 0)
    c = app.thoonk.client
    c.zadd("z", {"m": 1})
    ch.info("id")                     # a JobChannel method, not a client
    options.get("x")                  # a dict
"""
    calls = sorted(call for _, call in redis_calls(source))
    assert calls == sorted(
        [
            "app.thoonk.client.hset",
            "app.connection.client.pipeline",
            "pipe.hget('k', 'a').zscore",
            "pipe.hget",
            "app.connection.new_client().pubsub",
            "self._client.evalsha",
            "c.zadd",
        ]
    )


def test_the_scan_covers_the_package() -> None:
    scanned = {p.relative_to(PKG).as_posix() for p in _outside_thoonk()}
    assert {
        "scheduler.py",
        "results.py",
        "callbacks.py",
        "aio.py",
        "worker/registry.py",
        "inspection/clean.py",
        "cli/cron_cmd.py",
        "contrib/dashboard/api.py",
    } <= scanned
    assert not any(p.startswith("thoonk/") for p in scanned)
