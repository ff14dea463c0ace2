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

On a loaded machine wall-clock rates swing with the scheduler, so each drain also reports its
CPU cost per job: this process's CPU time (the worker runs in it) plus redis-server's
(``INFO cpu``), and the flow/plain ratio of that cost, which the load disturbs far less (a
cost ratio of 1.05 is 5 % more CPU per job, i.e. a drain rate about 0.95x when CPU-bound).
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

import redis  # noqa: E402
from run import _load_redis_server  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402

__all__ = ["main", "drain"]


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drain(url: str, jobs: int, flow: bool) -> tuple[float, float]:
    """``(jobs per second, CPU ms per 1000 jobs)`` for one drain of ``jobs`` queued jobs
    (plain or flow-limited); CPU = this process (the worker) + redis-server."""
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
    client = app.connection.client
    cpu0, server0 = time.process_time(), _server_cpu(client)
    start = time.perf_counter()
    worker.run()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0 + _server_cpu(client) - server0
    done = ch.counts()["finished_total"]
    app.close()
    if done != jobs:
        raise RuntimeError(f"drained {done} of {jobs} jobs")
    return jobs / elapsed, cpu / jobs * 1_000_000  # CPU ms per 1000 jobs


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the figures (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    server = _load_redis_server()().start()
    try:
        ratios, costs = [], []
        for r in range(opts.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {kind: drain(server.url, opts.jobs, kind) for kind in order}
            ratio = got[True][0] / got[False][0]
            cost = got[True][1] / got[False][1]
            ratios.append(ratio)
            costs.append(cost)
            print(
                f"round {r + 1}: plain {got[False][0]:8.0f} jobs/s   flow {got[True][0]:8.0f} "
                f"jobs/s   flow/plain {ratio:.3f}   CPU ms/1000 jobs plain "
                f"{got[False][1]:.0f} flow {got[True][1]:.0f} ({cost:.3f}x)"
            )
        print(
            f"flow/plain drain ratio, median of {opts.rounds}: {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})  [flow_drain_ratio]"
        )
        print(
            f"flow/plain CPU cost per job, median of {opts.rounds}: "
            f"{statistics.median(costs):.3f} (min {min(costs):.3f}, max {max(costs):.3f})  "
            f"[flow_cpu_ratio]"
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
