"""An app's sharded channels: which physical shard a job goes to, and every shard a worker claims.

``TaskPipe(shards={"emails": 8})`` spreads the logical channel ``emails`` over 8 Thoonk job
channels (names and slots: ``taskpipe.thoonk.shards``). Publishing picks one shard per job:

- ``shard_key=`` given: ``crc32(shard_key) % N`` (every job of one key on one shard, in order);
- else a custom ``id=``: ``crc32(id) % N`` (a repeated publish of an id finds the first one);
- else round robin, from a random start (so many producers do not all begin on shard 0).

Channels not in ``shards`` have one shard: the plain channel, exactly as before. The first time
an app publishes to a sharded channel, and the first time a worker opens any channel, the shard
count recorded in Redis is checked: a different count is refused (``ShardCountChanged``) while
the channel holds jobs, else the new count is recorded. (Publishing to an unsharded channel
costs no extra round trip: the workers' check covers it.)
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskpipe.errors import ConfigError, ShardCountChanged
from taskpipe.thoonk.shards import (
    check_shard_count,
    check_shardable,
    holds_jobs,
    masters_of,
    record_count,
    shard_names,
    stored_count,
)

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe
    from taskpipe.thoonk.job import JobChannel

__all__ = ["Sharding", "shard_index"]


def shard_index(key: str | bytes, count: int) -> int:
    """The shard (0..count-1) of a ``shard_key`` or custom job id: ``crc32(key) % count``, the
    same in every process and language."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    return zlib.crc32(data) % count


class Sharding:
    """The shard layout of one app's channels (``app.sharding``)."""

    def __init__(self, app: TaskPipe, shards: Mapping[str, int] | None) -> None:
        self.app = app
        if shards is not None and not isinstance(shards, Mapping):
            raise ConfigError(f"shards must be a mapping of channel name to count, got {shards!r}")
        self.counts: dict[str, int] = {}
        for name, count in (shards or {}).items():
            n = check_shard_count(name, count)
            if n > 1:
                check_shardable(name)
            self.counts[name] = n
        self._checked: dict[str, list[JobChannel]] = {}  # opened, shard count checked
        self._plain: dict[str, list[JobChannel]] = {}  # opened unchecked (one shard, publishing)
        self._next: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, name: str) -> int:
        """The shard count this app uses for logical channel ``name`` (1 unless configured)."""
        return self.counts.get(name, 1)

    def names(self, name: str) -> list[str]:
        """The physical channel names of ``name`` (``[name]`` when it has one shard)."""
        return shard_names(name, self.count(name))

    def channels(self, name: str, check: bool = True) -> list[JobChannel]:
        """Every shard of logical channel ``name``, opened (created if needed), after checking
        the recorded shard count once per app (``ShardCountChanged`` if it differs and the
        channel holds jobs). ``check=False``: no check for a channel of one shard."""
        got = self._checked.get(name)
        if got is not None:
            return got
        count = self.count(name)
        if count == 1 and not check:
            plain = self._plain.get(name)
            if plain is None:
                plain = self._plain[name] = [self.app.channel(name)]
            return plain
        if count > 1 and name in self.app.raw_channels:
            raise ConfigError(
                f"channel {name!r} has a raw (Thoonk-native) task: legacy Thoonk "
                "clients know one channel per name, so it cannot be sharded"
            )
        self.app.broker_retry.call(
            f"check the shards of {name!r}", lambda _attempt: self._check_record(name, count)
        )
        opened = [self.app.channel(n) for n in shard_names(name, count)]
        if count > 1:
            self._check_spread(name, opened)
        with self._lock:
            self._checked.setdefault(name, opened)
            self._next.setdefault(name, random.randrange(count))
        return self._checked[name]

    def _check_spread(self, name: str, opened: list[JobChannel]) -> None:
        """Warn (logger ``taskpipe``) when a cluster's masters carry unequal numbers of shards:
        a count that is not a multiple of the master count loads some masters more."""
        try:
            masters = masters_of(self.app.thoonk, [ch.name for ch in opened])
        except Exception:  # noqa: BLE001 - advice only: never fail opening a channel for it
            return
        per_master = collections.Counter(masters)
        if per_master and len(set(per_master.values())) > 1:
            logging.getLogger("taskpipe").warning(
                "channel %r: %d shards are spread unevenly over %d masters (%s); use a multiple "
                "of the master count",
                name,
                len(opened),
                len(per_master),
                ", ".join(f"{m}: {n}" for m, n in sorted(per_master.items())),
            )

    def _check_record(self, name: str, count: int) -> None:
        thoonk = self.app.thoonk
        stored = stored_count(thoonk, name)
        if stored == count:
            return
        old = (
            [self.app.channel_name(n) for n in shard_names(name, stored)]
            if stored > 1
            else [self.app.channel_name(name)]
        )
        waiting = holds_jobs(thoonk, old)
        if waiting:
            raise ShardCountChanged(
                f"channel {name!r} was published with {stored} shard(s) and still holds "
                f"{waiting} job(s); this app is configured with {count}. Run the old layout's "
                "workers until it is empty, then change the shard count (docs/sharding.md)"
            )
        record_count(thoonk, name, count)

    def pick(self, name: str, job_id: str | None, shard_key: Any = None) -> JobChannel:
        """The shard a job goes to: by ``shard_key``, else by a custom ``job_id`` (pass None
        for a generated id), else round robin."""
        if shard_key is not None and not isinstance(shard_key, (str, bytes)):
            raise ConfigError(f"shard_key must be a str or bytes, got {type(shard_key).__name__}")
        shards = self.channels(name, check=False)
        if len(shards) == 1:
            return shards[0]
        if shard_key is not None:
            return shards[shard_index(shard_key, len(shards))]
        if job_id is not None:
            return shards[shard_index(job_id, len(shards))]
        with self._lock:
            i = self._next[name]
            self._next[name] = (i + 1) % len(shards)
        return shards[i]

    def expand(self, names: Sequence[str]) -> list[list[JobChannel]]:
        """The shards of each logical channel of ``names``, in order (a worker's ``-Q``)."""
        return [self.channels(n) for n in names]

    def result_channel(self, name: str, job_id: str) -> str:
        """The physical channel a job of logical channel ``name`` published with a custom id
        (and no ``shard_key``) lives in: where ``app.AsyncResult(id, name)`` looks."""
        count = self.count(name)
        if count == 1:
            return name
        return self.app.channel_name(shard_names(name, count)[shard_index(job_id, count)])
