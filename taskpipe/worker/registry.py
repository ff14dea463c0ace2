"""The live-worker registry as the worker layer fills it: name, host, pid, channels, current jobs
and counts, expiring on death. Storage, server-time deadlines and presence live in the Thoonk
layer (``taskpipe/thoonk/workers.py``, which also stamps ``heartbeat`` and ``started`` with the
Redis server clock); this module only says what a worker puts there."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

from taskpipe.thoonk.workers import WorkerRegistry as _Store

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["WorkerRegistry"]


class WorkerRegistry:
    """Reads and writes the worker registry of one app."""

    def __init__(self, app: TaskPipe) -> None:
        self.app = app
        self.store = _Store(app.thoonk)

    def beat(self, worker: Any) -> None:
        """Refresh one worker's entry (called by the worker's keeper thread)."""
        ttl_ms = int(max(worker.heartbeat_interval * 3, 1.0) * 1000)
        self.store.beat(
            worker.name,
            {
                "name": worker.name,
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "channels": ",".join(worker.channel_names),
                "pool": worker.pool_kind,
                "concurrency": str(worker.concurrency),
                "jobs": json.dumps([f"{c.channel}/{c.id}" for c in worker.running][:100]),
                # held jobs split: running now, and prefetched (claimed ahead, waiting to start)
                "running": str(getattr(worker, "executing_count", 0)),
                "prefetched": str(getattr(worker, "prefetched_count", 0)),
                "stats": json.dumps(dict(worker.writer.stats)),
                "stopping": "1" if worker._stopping.is_set() else "0",
            },
            ttl_ms,
        )

    def remove(self, name: str) -> None:
        """Drop a worker's entry (on clean shutdown)."""
        self.store.remove(name)

    def live(self) -> list[dict[str, Any]]:
        """Every live worker's info (expired entries are skipped)."""
        out: list[dict[str, Any]] = []
        for fields in self.store.live():
            info: dict[str, Any] = dict(fields)
            info["jobs"] = json.loads(info.get("jobs") or "[]")
            info["stats"] = json.loads(info.get("stats") or "{}")
            out.append(info)
        return out
