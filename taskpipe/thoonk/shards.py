"""Sharded job channels: the physical channel names of a logical channel, and its shard record.

A logical channel ``emails`` with N > 1 shards is N ordinary Thoonk job channels named
``{emails~<i>.<k>}`` (``i`` = 0..N-1). The whole name is a Redis Cluster hash tag, and ``k`` is
the smallest number that puts shard ``i``'s tag in the ``i``-th of N equal windows of the 16384
slots, so the shards spread over the slot range (and so over the masters, which own contiguous
slot ranges). The names are the same on every topology (one Redis, Sentinel, Cluster,
``memory://``), so data moves between them unchanged. One shard (the default) is the plain
channel ``emails``: today's layout, shared with legacy Thoonk clients.

The shard count of every sharded channel is recorded in the ``taskpipe.shards`` HASH
(``Keyspace.shard_counts``), so a producer or worker configured with another count is refused
while the channel holds jobs (``ShardCountChanged``) instead of putting jobs where nobody claims.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from taskpipe.connection import key_slot
from taskpipe.errors import ConfigError

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = [
    "MAX_SHARDS",
    "SLOTS",
    "check_shard_count",
    "check_shardable",
    "shard_names",
    "parse_shard",
    "stored_count",
    "record_count",
    "holds_jobs",
    "masters_of",
]

#: Redis Cluster hash slots.
SLOTS = 16384
#: The largest shard count (a channel spread over more shards than a cluster has masters gains
#: nothing; 128 leaves room for big clusters and keeps the slot windows 128 slots wide).
MAX_SHARDS = 128

_SHARD = re.compile(r"^\{(?P<name>.+)~(?P<index>\d+)\.(?P<k>\d+)\}$")


def check_shard_count(name: str, count: Any) -> int:
    """``count`` as a shard count, or ``ConfigError``: an int from 1 to ``MAX_SHARDS``."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        raise ConfigError(
            f"shards for channel {name!r} must be an int from 1 to {MAX_SHARDS}, got {count!r}"
        )
    return count


def check_shardable(name: str) -> None:
    """``ConfigError`` unless ``name`` can be sharded: not empty, no ``{``/``}`` (the shards
    bring their own hash tags; a user tag would pin every shard to one slot), not a shard name."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a sharded channel needs a non-empty name, got {name!r}")
    if "{" in name or "}" in name:
        raise ConfigError(
            f"channel {name!r} has a brace: a sharded channel's shards carry their "
            "own hash tags, so its name may not"
        )


def _shard_name(name: str, index: int, count: int) -> str:
    low, high = index * SLOTS // count, (index + 1) * SLOTS // count
    for k in range(200 * SLOTS // max(1, high - low)):  # bounded: ~count tries expected
        tagged = f"{{{name}~{index}.{k}}}"
        if low <= key_slot(tagged) < high:
            return tagged
    raise ConfigError(f"no hash tag found for shard {index} of {name!r}")  # pragma: no cover


def shard_names(name: str, count: int) -> list[str]:
    """The physical channel names of ``name``'s ``count`` shards (``[name]`` for one shard).

    Shard ``i``'s hash tag lies in slot window ``[i*16384/count, (i+1)*16384/count)``.
    """
    if count == 1:
        return [name]
    check_shardable(name)
    return [_shard_name(name, i, count) for i in range(count)]


def parse_shard(physical: str) -> tuple[str, int] | None:
    """``(logical name, shard index)`` of a shard's physical channel name, else ``None``."""
    m = _SHARD.match(physical)
    if m is None or "{" in m.group("name") or "}" in m.group("name"):
        return None
    return m.group("name"), int(m.group("index"))


def stored_count(thoonk: Thoonk, name: str) -> int:
    """The shard count recorded for logical channel ``name`` (1 when none is recorded)."""
    raw = thoonk.client.hget(thoonk.keys.shard_counts(), name)
    return int(raw) if raw is not None else 1


def record_count(thoonk: Thoonk, name: str, count: int) -> None:
    """Record ``name``'s shard count (one shard: remove the record, the plain layout)."""
    if count == 1:
        thoonk.client.hdel(thoonk.keys.shard_counts(), name)
    else:
        thoonk.client.hset(thoonk.keys.shard_counts(), name, str(count))


def masters_of(thoonk: Thoonk, physical: list[str]) -> list[str]:
    """The master (``host:port``) serving each channel of ``physical`` on a Redis Cluster, by
    the client's slot map (``[]`` when not on a cluster)."""
    client = thoonk.client
    if not thoonk.connection.is_cluster or not hasattr(client, "get_node_from_key"):
        return []
    return [str(client.get_node_from_key(thoonk.keys.job(name).ids).name) for name in physical]


def holds_jobs(thoonk: Thoonk, physical: list[str]) -> int:
    """How many jobs (available, delayed, claimed or stalled) the channels ``physical`` hold
    (channels that do not exist hold none). Finished jobs do not count: they are history."""
    total = 0
    for name in physical:
        k = thoonk.keys.job(name)
        pipe = thoonk.client.pipeline(transaction=False)
        pipe.llen(k.ids).zcard(k.delayed).zcard(k.claimed).scard(k.stalled)
        total += sum(int(x) for x in pipe.execute())
    return total
