"""What the extension points cost: drain rate with the job event stream followed or not, and
with a no-op middleware, as ratios to the plain drain rate of the same run.

    python benchmarks/extensions.py [--jobs N] [--rounds R] [--concurrency C]

Starts its own ``redis-server`` on a free loopback port. For each round, in this order, it
queues N no-op jobs and drains them with one burst worker (thread pool) in this process:

- ``plain``: no listener anywhere, so the worker announces nothing (it asks once a second);
- ``followed_elsewhere``: another process follows the stream (a pattern subscription that
  reads and drops every message), so every outcome is announced (one script call per
  batch of outcomes);
- ``followed_here``: an ``app.listen()`` thread in the worker's own process follows it with a
  ``complete`` callback (the events are also parsed and dispatched under the worker's GIL);
- ``middleware``: a middleware with no-op ``before_run`` / ``after_run`` hooks.

The reported ratio is the median over rounds of each mode's rate over ``plain``'s rate in the
same round. Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from taskpipe import Middleware, TaskPipe, Worker  # noqa: E402

MODES = ("plain", "followed_elsewhere", "followed_here", "middleware")

#: another process that follows every job event stream and discards the messages
FOLLOWER = """
import sys, redis
pubsub = redis.Redis.from_url(sys.argv[1]).pubsub(ignore_subscribe_messages=True)
pubsub.psubscribe(sys.argv[2] + "feed.jobevent:*")
print("ready", flush=True)
for _ in pubsub.listen():
    pass
"""


class Noop(Middleware):
    """Run-side hooks that do nothing: the cost of the hook machinery alone."""

    def before_run(self, job: Any) -> None:
        pass

    def after_run(self, job: Any, outcome: Any) -> None:
        pass


def drain(url: str, mode: str, jobs: int, concurrency: int) -> float:
    """Queue ``jobs`` no-op jobs, drain them, return jobs/s of the drain."""
    prefix = f"bx{uuid.uuid4().hex[:8]}:"
    app = TaskPipe(broker=url, prefix=prefix)
    seen = [0]
    follower = None

    @app.task(name="noop")
    def noop() -> None:
        return None

    noop.map([()] * jobs)  # published before any middleware: the drain is what is measured
    if mode == "middleware":
        app.use(Noop())
    if mode == "followed_here":
        app.on("complete", lambda job: seen.__setitem__(0, seen[0] + 1))
        app.listen(["default"])
    if mode == "followed_elsewhere":
        follower = subprocess.Popen(
            [sys.executable, "-c", FOLLOWER, url, prefix], stdout=subprocess.PIPE, text=True
        )
        assert follower.stdout is not None and follower.stdout.readline().strip() == "ready"
    worker = Worker(app, ["default"], concurrency=concurrency, burst=True, heartbeat_interval=60)
    started = time.perf_counter()
    worker.run()
    took = time.perf_counter() - started
    done = worker.writer.stats["finished"]
    if mode == "followed_here":
        app.events.stop()
    if follower is not None:
        follower.kill()
        follower.communicate()
    app.close()
    if done != jobs:
        raise SystemExit(f"{mode}: {done} of {jobs} jobs finished")
    return jobs / took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from run import _load_redis_server

    server = _load_redis_server()().start()
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        print(
            f"redis-server 127.0.0.1:{server.port}, {args.jobs} jobs a drain, "
            f"{args.rounds} rounds, concurrency {args.concurrency}"
        )
        for _ in range(args.rounds):
            for mode in MODES:
                rates[mode].append(drain(server.url, mode, args.jobs, args.concurrency))
    finally:
        server.cleanup()
    for mode in MODES:
        ratios = [r / p for r, p in zip(rates[mode], rates["plain"])]
        print(
            f"{mode:<18} {statistics.median(rates[mode]):>9,.0f} /s  "
            f"{statistics.median(ratios):.2f}x plain (rounds {min(ratios):.2f}-{max(ratios):.2f})"
            f"  [{mode}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
