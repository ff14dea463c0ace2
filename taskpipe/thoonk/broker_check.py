"""The broker settings that decide whether jobs are safe: what ``taskpipe doctor`` checks, and
the eviction-policy warning that producers, workers and ``taskpipe status`` give.

Each check returns ``Finding``s of level ``ok``, ``warn`` (works, but know this) or ``unsafe``
(jobs or results can be lost, or writes refused). A setting that cannot be read (``CONFIG`` or
``INFO`` disabled or renamed, as on some managed services) is a ``warn`` saying so, never a guess.
Thoonk layer (it was ``taskpipe.brokercheck``): it reads the server's settings, no key and nothing of
tasks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis

from taskpipe.connection import Connection
from taskpipe.errors import BrokerUnavailable

__all__ = [
    "Finding",
    "diagnose",
    "eviction_policy",
    "eviction_warning",
    "evicted_keys",
    "MIN_VERSION",
]

MIN_VERSION = (6, 2)  # RPOP with a count and ZMSCORE in the claim script
log = logging.getLogger("taskpipe")


@dataclass(frozen=True)
class Finding:
    """One check's verdict: ``level`` is ``ok``, ``warn`` or ``unsafe``; ``node`` names the
    server it is about (host:port, or ``""`` for the only one)."""

    level: str
    check: str
    message: str
    node: str = ""

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return asdict(self)


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _config(client: Any, name: str, **kw: Any) -> str | None:
    """One ``CONFIG GET`` value, or None if the server will not say."""
    try:
        reply = client.config_get(name, **kw)
    except redis.exceptions.ResponseError:
        return None
    for key, value in (reply or {}).items():
        if _s(key) == name:
            return _s(value)
    return None


def eviction_policy(client: Any) -> str | None:
    """The server's ``maxmemory-policy`` (None if ``CONFIG`` is disabled or refused)."""
    return _config(client, "maxmemory-policy")


def evicted_keys(client: Any) -> str:
    """``INFO stats`` ``evicted_keys`` as text (``"?"`` if the server does not report it)."""
    return _s(client.info("stats").get("evicted_keys", "?"))


def eviction_warning(policy: str | None) -> str | None:
    """The warning for an evicting policy (None for ``noeviction`` or unknown)."""
    if policy is None or policy == "noeviction":
        return None
    return (
        f"Redis maxmemory-policy is {policy!r}, not 'noeviction': under memory pressure Redis "
        "silently deletes jobs, leases and results. Set maxmemory-policy noeviction on the "
        "broker (run `taskpipe doctor` for every data-safety setting)."
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def _check_server(client: Any, node: str, **kw: Any) -> list[Finding]:
    """Every check that one Redis server answers for itself."""
    out: list[Finding] = []
    try:
        info = client.info(**kw)
    except redis.exceptions.ResponseError as exc:
        return [Finding("warn", "info", f"INFO is refused ({exc}): nothing could be checked", node)]
    version = _s(info.get("redis_version", "?"))
    if _version(version) < MIN_VERSION:
        out.append(
            Finding(
                "unsafe",
                "version",
                f"Redis {version} is older than "
                f"{'.'.join(map(str, MIN_VERSION))}: taskpipe's scripts need 6.2+",
                node,
            )
        )
    else:
        out.append(Finding("ok", "version", f"Redis {version}", node))
    if _s(info.get("role", "master")) not in ("master", "primary"):
        out.append(
            Finding(
                "unsafe",
                "role",
                "this server is a replica: it refuses writes "
                "(point taskpipe at the primary, or use redis+sentinel://)",
                node,
            )
        )
    # eviction
    policy = _config(client, "maxmemory-policy", **kw)
    maxmemory = _config(client, "maxmemory", **kw)
    evicted = int(info.get("evicted_keys", 0) or 0)
    if policy is None:
        out.append(
            Finding(
                "warn",
                "eviction",
                "maxmemory-policy cannot be read (CONFIG disabled "
                "or renamed): make sure it is 'noeviction'",
                node,
            )
        )
    elif policy != "noeviction":
        limited = maxmemory not in (None, "0")
        out.append(
            Finding(
                "unsafe" if limited else "warn",
                "eviction",
                f"maxmemory-policy is {policy!r}"
                + (
                    f" with maxmemory {maxmemory}: when memory is full Redis silently "
                    "deletes jobs, leases and results"
                    if limited
                    else " (maxmemory is 0, so nothing is evicted yet; it would be as soon as "
                    "a limit is set)"
                )
                + "; set maxmemory-policy noeviction",
                node,
            )
        )
    else:
        out.append(
            Finding(
                "ok",
                "eviction",
                "maxmemory-policy noeviction: a full Redis refuses "
                "writes (BrokerUnavailable) instead of deleting jobs",
                node,
            )
        )
    if evicted:
        out.append(
            Finding(
                "unsafe",
                "evicted",
                f"Redis has evicted {evicted} keys since it "
                "started: jobs or results may already be lost",
                node,
            )
        )
    # persistence
    aof = str(info.get("aof_enabled", 0)) == "1"
    save = _config(client, "save", **kw)
    fsync = _config(client, "appendfsync", **kw)
    if aof:
        if fsync == "no":
            out.append(
                Finding(
                    "warn",
                    "persistence",
                    "AOF on with appendfsync no: the OS decides "
                    "when writes reach the disk (a power loss can lose ~30 s)",
                    node,
                )
            )
        else:
            out.append(
                Finding(
                    "ok",
                    "persistence",
                    f"AOF on (appendfsync {fsync or '?'}): "
                    + (
                        "no acknowledged write is lost"
                        if fsync == "always"
                        else "a power loss can lose the last second of writes"
                    ),
                    node,
                )
            )
    elif save:
        out.append(
            Finding(
                "unsafe",
                "persistence",
                f"RDB snapshots only (save {save!r}): a restart "
                "or crash loses every job published since the last snapshot; set "
                "appendonly yes",
                node,
            )
        )
    elif save is None:
        out.append(
            Finding(
                "warn",
                "persistence",
                "AOF is off and the snapshot settings cannot be read: set appendonly yes",
                node,
            )
        )
    else:
        out.append(
            Finding(
                "unsafe",
                "persistence",
                "no persistence (AOF off, no RDB snapshots): a "
                "Redis restart loses every job; set appendonly yes",
                node,
            )
        )
    for field, what in (
        ("rdb_last_bgsave_status", "last RDB save"),
        ("aof_last_write_status", "last AOF write"),
    ):
        if _s(info.get(field, "ok")) != "ok":
            out.append(
                Finding(
                    "unsafe",
                    "persistence",
                    f"{what} failed: Redis may refuse writes "
                    "(MISCONF) until the disk problem is fixed",
                    node,
                )
            )
    return out


def _check_sentinels(connection: Connection) -> list[Finding]:
    master = connection.info["master"]
    reachable, quorum_ok, problems = 0, False, []
    for host, port in connection.info["hosts"]:
        client = redis.Redis(
            host=host,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=2,
            **connection.info["sentinel_auth"],
        )
        try:
            reply = client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "CKQUORUM", master
            )
            reachable += 1
            quorum_ok = quorum_ok or _s(reply).startswith("OK")
        except redis.exceptions.ResponseError as exc:
            reachable += 1
            problems.append(f"{host}:{port}: {exc}")
        except redis.exceptions.RedisError as exc:
            problems.append(f"{host}:{port}: unreachable ({exc})")
        finally:
            client.close()
    hosts = len(connection.info["hosts"])
    if quorum_ok:
        return [
            Finding(
                "ok",
                "sentinel",
                f"{reachable} of {hosts} sentinels answer; the quorum "
                f"for {master!r} can be reached and a failover authorized",
            )
        ]
    return [
        Finding(
            "unsafe",
            "sentinel",
            f"no sentinel confirms a quorum for {master!r}: a "
            "failover would not happen. " + "; ".join(problems),
        )
    ]


def diagnose(connection: Connection) -> list[Finding]:
    """Every data-safety check for the broker of ``connection``. Raises ``BrokerUnavailable``
    if the broker cannot be reached."""
    try:
        return _diagnose(connection)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BrokerUnavailable(f"doctor: cannot reach the broker: {exc}") from exc


def _diagnose(connection: Connection) -> list[Finding]:
    if connection.is_memory:
        return [
            Finding(
                "warn",
                "broker",
                "memory:// is an embedded broker inside this process: "
                "nothing persists and no other process can reach it (tests and demos)",
            )
        ]
    client = connection.client
    if connection.is_cluster:
        out: list[Finding] = []
        state = client.cluster_info()
        if isinstance(state, dict) and _s(state.get("cluster_state", "ok")) != "ok":
            out.append(
                Finding(
                    "unsafe",
                    "cluster",
                    f"cluster_state is {_s(state.get('cluster_state'))}: some slots are not served",
                )
            )
        else:
            out.append(Finding("ok", "cluster", "cluster_state ok: every slot is served"))
        for node in client.get_primaries():
            out += _check_server(client, f"{node.host}:{node.port}", target_nodes=node)
        return out
    out = _check_server(client, "")
    if connection.scheme == "redis+sentinel":
        out += _check_sentinels(connection)
    return out
