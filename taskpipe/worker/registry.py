"""The live-worker registry: name, host, pid, channels, current jobs and counts, expiring on death.

Each worker refreshes ``taskpipe.worker:<name>`` (a hash with a TTL of three heartbeats) and its
score in ``taskpipe.workers`` (a sorted set of name -> expiry ms). A worker that dies stops
refreshing and drops out once its entry expires. Heartbeat deadlines use the Redis server clock
(``TIME``), like leases, so a worker whose clock is off neither hides the others (a fast clock
used to expire every other entry) nor looks dead itself; they are for display, never job safety.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["WorkerRegistry"]


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _server_ms(client: Any) -> int:
    """The Redis server clock in ms (the local clock if the server's cannot be read as one pair)."""
    reply = client.time()
    if isinstance(reply, (list, tuple)) and len(reply) == 2:
        return int(reply[0]) * 1000 + int(reply[1]) // 1000
    return int(time.time() * 1000)  # e.g. a cluster client answering per node


class WorkerRegistry:
    """Reads and writes the worker registry of one app."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self.keys = app.thoonk.keys

    def beat(self, worker: Any) -> None:
        """Refresh one worker's entry (called by the worker's keeper thread)."""
        ttl_ms = int(max(worker.heartbeat_interval * 3, 1.0) * 1000)
        now_ms = _server_ms(self.app.connection.client)
        info = {
            "name": worker.name, "host": socket.gethostname(), "pid": str(os.getpid()),
            "channels": ",".join(worker.channel_names), "pool": worker.pool_kind,
            "concurrency": str(worker.concurrency), "started": str(int(worker.started_at)),
            "heartbeat": str(now_ms // 1000),
            "jobs": json.dumps([f"{c.channel}/{c.id}" for c in worker.running][:100]),
            "stats": json.dumps(dict(worker.writer.stats)),
            "stopping": "1" if worker._stopping.is_set() else "0",
        }
        key = self.keys.worker_info(worker.name)
        pipe = self.app.connection.client.pipeline(transaction=False)
        pipe.hset(key, mapping=info)
        pipe.pexpire(key, ttl_ms)
        pipe.zadd(self.keys.workers_registry(), {worker.name: now_ms + ttl_ms})
        pipe.zremrangebyscore(self.keys.workers_registry(), "-inf", now_ms)
        pipe.execute()

    def remove(self, name: str) -> None:
        """Drop a worker's entry (on clean shutdown)."""
        try:
            pipe = self.app.connection.client.pipeline(transaction=False)
            pipe.delete(self.keys.worker_info(name))
            pipe.zrem(self.keys.workers_registry(), name)
            pipe.execute()
        except Exception:  # noqa: BLE001 - best effort; the entry expires anyway
            pass

    def live(self) -> list[dict[str, Any]]:
        """Every live worker's info (expired entries are skipped)."""
        client = self.app.connection.client
        now_ms = _server_ms(client)
        names = [_s(n) for n in client.zrangebyscore(self.keys.workers_registry(), now_ms, "+inf")]
        out = []
        for name in names:
            raw = client.hgetall(self.keys.worker_info(name))
            if not raw:
                continue
            info: dict[str, Any] = {_s(k): _s(v) for k, v in raw.items()}
            info["jobs"] = json.loads(info.get("jobs") or "[]")
            info["stats"] = json.loads(info.get("stats") or "{}")
            out.append(info)
        return out
