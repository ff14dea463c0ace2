"""Sharded channels: one logical channel spread over several job channels (on a Redis Cluster,
over several masters), with per-key order kept by ``shard_key``.

    python examples/sharding.py
"""

import os

from taskpipe import TaskPipe
from taskpipe.inspection import Inspector
from taskpipe.testing import run_until_idle

app = TaskPipe(
    "sharding",
    broker=os.environ.get("TASKPIPE_BROKER_URL", "memory://"),
    prefix="sharding:",
    shards={"events": 4},
)
seen: dict[str, list[int]] = {}


@app.task(channel="events")
def record(user: str, n: int) -> int:
    seen.setdefault(user, []).append(n)
    return n


def main() -> None:
    shards = {
        record.apply_async((user, n), shard_key=user).channel
        for n in range(5)
        for user in ("ann", "bob", "cyd")
    }  # one user, one shard
    spread = {record.delay("anon", n).channel for n in range(8)}  # round robin
    print(f"events has {len(app.sharding.names('events'))} shards; round robin used {len(spread)}")
    row = next(c for c in Inspector(app).overview() if c["channel"] == "events")
    print(f"status: events available={row['available']} over {len(row['shards'])} shards")
    run_until_idle(app, ["events"], concurrency=1)  # a worker claims every shard
    for user in ("ann", "bob", "cyd"):
        print(f"{user}: ran in order {seen[user]}")
    print(f"keyed jobs used {len(shards)} shard(s)")
    app.close()


if __name__ == "__main__":
    main()
