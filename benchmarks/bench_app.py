"""The benchmark's app and tasks, and the worker-process entry point ``benchmarks/run.py`` starts.

``build_app(url, prefix)`` registers two tasks on a fresh app:

- ``bench.noop()``: does nothing (returns None, so a small result is stored);
- ``bench.stamp(i, key)``: records ``time.time()`` at its very start in the hash ``key``
  (field ``i``), to measure latency from publish to task start.

Run as a script (``python benchmarks/bench_app.py [--burst] [--concurrency N] [--prefetch N] CHANNEL``) it is one
worker process: it reads the broker URL and key prefix from ``TASKPIPE_BROKER_URL`` /
``TASKPIPE_BENCH_PREFIX``, prints ``ready``, waits for a line on stdin, then runs
``Worker(app, [CHANNEL], burst=...)`` and prints one JSON line with its stats when it ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from any directory: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskpipe import TaskPipe

__all__ = ["build_app", "CHANNEL", "NOOP", "STAMP", "main"]

#: The channel every benchmark job goes to.
CHANNEL = "bench"
#: Task names (fixed, so the publisher and the worker process agree whatever the module name).
NOOP = "bench.noop"
STAMP = "bench.stamp"


def build_app(url: str, prefix: str) -> TaskPipe:
    """A fresh app on ``url`` under ``prefix`` with the benchmark tasks registered."""
    app = TaskPipe("bench", broker=url, prefix=prefix, default_channel=CHANNEL)
    client = app.connection.client

    @app.task(name=NOOP)
    def noop() -> None:
        return None

    @app.task(name=STAMP)
    def stamp(i: int, key: str) -> None:
        started = time.time()
        client.hset(key, str(i), repr(started))

    del noop, stamp  # registered on the app; nothing kept at module level
    return app


def main(argv: list[str] | None = None) -> int:
    """One worker process (see the module docstring)."""
    from taskpipe.worker.worker import Worker

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("channel", nargs="?", default=CHANNEL)
    parser.add_argument("--burst", action="store_true", help="exit when the channel is empty")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--prefetch", type=int, default=None)
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app = build_app(os.environ["TASKPIPE_BROKER_URL"], os.environ["TASKPIPE_BENCH_PREFIX"])
    app.connection.client.ping()
    worker = Worker(
        app, [opts.channel], concurrency=opts.concurrency, burst=opts.burst, prefetch=opts.prefetch
    )
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu0 = time.time(), os.times()
    worker.run()
    ended, cpu1 = time.time(), os.times()
    print(
        json.dumps(
            {
                "started": started,
                "ended": ended,
                "claimed": worker.claimed_total,
                "cpu_user": cpu1.user - cpu0.user,
                "cpu_system": cpu1.system - cpu0.system,
                "stats": dict(worker.writer.stats),
            }
        ),
        flush=True,
    )
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
