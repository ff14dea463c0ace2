"""Flow-control overhead: drain rate with a rate limit and a concurrency cap configured but not
binding, against the plain drain rate, in the same run (docs/performance.md, "Flow control").

    python benchmarks/flow.py [--jobs N] [--rounds R]

Starts its own ``redis-server`` on a free loopback port (``tests/redis_server.py``, loaded as
``run.py`` does). Each round drains N queued no-op jobs twice with one in-process worker
(``Worker(app, burst=True)``, thread pool): once for a plain task, once for a task with
``rate_limit="1000000/s"`` and ``concurrency=100000`` and a channel with
``set_limits(rate_limit="1000000/s", concurrency=100000)`` (so every claim goes through the
flow-control path of ``job_claim`` and every job through ``job_put_flow``), alternating which
goes first. Publishing is not timed. The ratio flow/plain per round and its median are printed.
Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from run import _load_redis_server  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402

__all__ = ["main", "drain"]


def drain(url: str, jobs: int, flow: bool) -> float:
    """Jobs per second for one drain of ``jobs`` queued jobs (plain or flow-limited)."""
    from taskpipe.worker.worker import Worker

    prefix = f"bflow{uuid.uuid4().hex[:8]}:"
    app = TaskPipe("benchflow", broker=url, prefix=prefix, default_channel="bench")
    options = {"rate_limit": "1000000/s", "concurrency": 100000} if flow else {}

    @app.task(name="noop", **options)
    def noop(i: int) -> None:
        return None

    if flow:
        app.set_limits("bench", rate_limit="1000000/s", concurrency=100000)
    app.publish_many(noop.s(i) for i in range(jobs))
    ch = app.channel("bench")
    assert ch.counts()["available"] == jobs
    worker = Worker(app, ["bench"], burst=True, heartbeat_interval=60.0)
    start = time.perf_counter()
    worker.run()
    elapsed = time.perf_counter() - start
    done = ch.counts()["finished_total"]
    app.close()
    if done != jobs:
        raise RuntimeError(f"drained {done} of {jobs} jobs")
    return jobs / elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the figures (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    server = _load_redis_server()().start()
    try:
        ratios = []
        for r in range(opts.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            rates = {kind: drain(server.url, opts.jobs, kind) for kind in order}
            ratio = rates[True] / rates[False]
            ratios.append(ratio)
            print(f"round {r + 1}: plain {rates[False]:8.0f} jobs/s   flow {rates[True]:8.0f} "
                  f"jobs/s   flow/plain {ratio:.3f}")
        print(f"flow/plain drain ratio, median of {opts.rounds}: {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})  [flow_drain_ratio]")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
