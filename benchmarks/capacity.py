"""Capacity model: what one job costs Redis and a worker, and what that means for planning.

Starts its own redis-server on a free loopback port (never ``127.0.0.1:6379``) and measures,
for ``--jobs`` small jobs (an int argument, an int result):

- Redis CPU time per job (``INFO cpu`` used_cpu_sys + used_cpu_user deltas of that server):
  publishing one call per job (``delay()``), publishing in bulk (``Task.map``), claiming (batches
  of 100), finishing with a result (batches of 100, the worker's ``finish_many``), and a real
  worker's claim + run + finish;
- memory per queued job and per finished job (``INFO memory`` used_memory deltas; a finished
  job keeps its result, its finished-index entry and its item for ``result_ttl``);
- network bytes per job (``INFO stats`` total_net_input_bytes + total_net_output_bytes);
- worker CPU per job (this process's CPU time while an in-process ``Worker`` drains the jobs);
- Redis CPU per job of publish + worker drain for a channel of 1, 3 and 6 shards, in one run;

then prints jobs/s per primary and the planning table (primaries and worker processes for 1k,
10k, 100k and 1M jobs/s) under the assumptions it prints. ``docs/capacity.md`` explains it.
Figures vary with the machine and its load; compare them within one run.

    python benchmarks/capacity.py [--jobs 20000] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from run import _load_redis_server  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402
from taskpipe.serialization import encode_result  # noqa: E402
from taskpipe.thoonk.job import FinishRequest  # noqa: E402
from taskpipe.worker.worker import Worker  # noqa: E402

#: planning assumptions (printed with the table)
REDIS_BUDGET = 0.7  # fraction of one Redis core a primary may use (headroom for spikes,
# persistence, replication, clients' other commands)
WORKER_BUDGET = 0.8  # fraction of one core a worker process may use
RATES = (1_000, 10_000, 100_000, 1_000_000)
SHARD_COUNTS = (1, 3, 6)


class Probe:
    """Deltas of one redis-server's CPU, memory and network counters."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def snap(self) -> dict[str, float]:
        info: dict[str, Any] = self.client.info()
        return {
            "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "mem": float(info["used_memory"]),
            "net": float(info["total_net_input_bytes"]) + float(info["total_net_output_bytes"]),
            "proc": time.process_time(),
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        return {k: (after[k] - before[k]) / n for k in before}


def _app(url: str, shards: int = 1) -> TaskPipe:
    app = TaskPipe(
        broker=url,
        prefix=f"cap{uuid.uuid4().hex[:6]}:",
        shards={"cap": shards} if shards > 1 else None,
        result_ttl="1h",
    )

    @app.task(name="cap.echo", channel="cap")
    def echo(n: int) -> int:
        return n

    return app


def _drain(app: TaskPipe) -> int:
    worker = Worker(
        app,
        ["cap"],
        concurrency=4,
        burst=True,
        heartbeat_interval=60.0,
        capture_logs=False,
        max_block=0.05,
    )
    worker.run()
    return int(worker.writer.stats.get("finished", 0))


def measure(url: str, jobs: int, rounds: int = 3) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    probe = Probe(client)
    out: dict[str, float] = {}

    # 1. publish, one call per job; memory per queued job
    app = _app(url)
    echo = app.tasks["cap.echo"]
    app.channel("cap")
    client.execute_command("MEMORY", "PURGE")
    s0 = probe.snap()
    for i in range(jobs):
        echo.delay(i)
    s1 = probe.snap()
    d = Probe.delta(s0, s1, jobs)
    out["redis_cpu_publish_us"] = d["cpu"] * 1e6
    out["net_publish_B"] = d["net"]
    out["mem_queued_B"] = d["mem"]

    # 2. claim (batches of 100, as a worker does) and finish with a result (finish_many)
    ch = app.channel("cap")
    s2 = probe.snap()
    claims = []
    while len(claims) < jobs:
        got = ch.claim(count=100, lease_ms=600_000, worker="capacity")
        if not got:
            break
        claims += got
    s3 = probe.snap()
    d = Probe.delta(s2, s3, max(1, len(claims)))
    out["redis_cpu_claim_us"] = d["cpu"] * 1e6
    out["net_claim_B"] = d["net"]
    result = encode_result(12345, serializer=app.serializer)  # what a worker stores
    for start in range(0, len(claims), 100):
        chunk = claims[start : start + 100]
        ch.finish_many([FinishRequest(c.id, c.token, result, 3_600_000) for c in chunk])
    s4 = probe.snap()
    d = Probe.delta(s3, s4, max(1, len(claims)))
    out["redis_cpu_finish_us"] = d["cpu"] * 1e6
    out["net_finish_B"] = d["net"]
    out["mem_finished_B"] = (s4["mem"] - s0["mem"]) / max(1, len(claims))
    app.close()

    # 3. bulk publish (Task.map), then a real worker: claim + run + finish; worker CPU per job
    app = _app(url)
    echo = app.tasks["cap.echo"]
    app.channel("cap")
    s5 = probe.snap()
    for start in range(0, jobs, 1000):
        echo.map(range(start, min(jobs, start + 1000)))
    s6 = probe.snap()
    out["redis_cpu_bulk_publish_us"] = Probe.delta(s5, s6, jobs)["cpu"] * 1e6
    t0 = time.perf_counter()
    done = _drain(app)
    wall = time.perf_counter() - t0
    s7 = probe.snap()
    d = Probe.delta(s6, s7, max(1, done))
    out["redis_cpu_worker_us"] = d["cpu"] * 1e6
    out["net_worker_B"] = d["net"]
    out["worker_cpu_us"] = d["proc"] * 1e6
    out["worker_jobs_per_s"] = done / wall
    app.close()

    # 4. per shard count: publish (one call per job) + worker drain, Redis CPU per job; the
    # counts interleaved over `rounds` rounds, the median kept (the machine's load drifts)
    per_count: dict[int, list[float]] = {n: [] for n in SHARD_COUNTS}
    for _ in range(rounds):
        for shards in SHARD_COUNTS:
            app = _app(url, shards)
            echo = app.tasks["cap.echo"]
            app.sharding.channels("cap")
            a = probe.snap()
            for i in range(jobs):
                echo.delay(i)
            done = _drain(app)
            b = probe.snap()
            per_count[shards].append(Probe.delta(a, b, max(1, done))["cpu"] * 1e6)
            app.close()
    for shards, values in per_count.items():
        out[f"redis_cpu_{shards}_shards_us"] = statistics.median(values)
    client.close()
    return out


def plan(f: dict[str, float]) -> dict[str, Any]:
    per_job = f["redis_cpu_publish_us"] + f["redis_cpu_claim_us"] + f["redis_cpu_finish_us"]
    per_primary = REDIS_BUDGET * 1e6 / per_job
    per_worker = WORKER_BUDGET * 1e6 / f["worker_cpu_us"]
    rows = []
    for rate in RATES:
        rows.append(
            {
                "rate": rate,
                "primaries": math.ceil(rate / per_primary),
                "workers": math.ceil(rate / per_worker),
                "shards": max(1, math.ceil(rate / per_primary)),
                "backlog_1min_MB": rate * 60 * f["mem_queued_B"] / 1e6,
                "results_10min_MB": rate * 600 * f["mem_finished_B"] / 1e6,
                "network_MB_s": rate
                * (f["net_publish_B"] + f["net_claim_B"] + f["net_finish_B"])
                / 1e6,
            }
        )
    return {
        "redis_cpu_per_job_us": per_job,
        "jobs_per_s_per_primary": per_primary,
        "jobs_per_s_per_worker": per_worker,
        "rows": rows,
    }


def report(f: dict[str, float], p: dict[str, Any], url: str) -> None:
    print(
        f"machine: nproc: {os.cpu_count()}  python: {platform.python_version()}  "
        f"redis: {url}  (2 shared cores are noisy: compare figures within one run)"
    )
    print("per job (small int argument and result):")
    lines = [
        (
            "Redis CPU, publish (delay(), one call)",
            f["redis_cpu_publish_us"],
            "us",
            "redis_cpu_publish",
        ),
        (
            "Redis CPU, publish (Task.map, bulk)",
            f["redis_cpu_bulk_publish_us"],
            "us",
            "redis_cpu_bulk_publish",
        ),
        ("Redis CPU, claim (batches of 100)", f["redis_cpu_claim_us"], "us", "redis_cpu_claim"),
        (
            "Redis CPU, finish with result (batches of 100)",
            f["redis_cpu_finish_us"],
            "us",
            "redis_cpu_finish",
        ),
        ("Redis CPU, worker claim+run+finish", f["redis_cpu_worker_us"], "us", "redis_cpu_worker"),
        ("memory per queued job", f["mem_queued_B"], "B", "mem_queued"),
        ("memory per finished job (result kept)", f["mem_finished_B"], "B", "mem_finished"),
        ("network bytes, publish", f["net_publish_B"], "B", "net_publish"),
        ("network bytes, claim", f["net_claim_B"], "B", "net_claim"),
        ("network bytes, finish", f["net_finish_B"], "B", "net_finish"),
        ("network bytes, worker claim+finish", f["net_worker_B"], "B", "net_worker"),
        ("worker CPU (one process, thread pool)", f["worker_cpu_us"], "us", "worker_cpu"),
        (
            "worker drain rate (one process, loaded machine)",
            f["worker_jobs_per_s"],
            "/s",
            "worker_rate",
        ),
    ]
    for label, value, unit, key in lines:
        print(f"  {label:<50} {value:>12,.1f} {unit}  [{key}]")
    base = f["redis_cpu_1_shards_us"]
    print(
        "Redis CPU per job (publish + worker drain) by shard count, one Redis "
        "(median of the rounds):"
    )
    for shards in SHARD_COUNTS:
        v = f[f"redis_cpu_{shards}_shards_us"]
        print(
            f"  {shards} shard(s) {v:>10,.1f} us  {v / base:.2f}x 1 shard  [redis_cpu_{shards}_shards]"
        )
    print(
        f"Redis CPU per job, publish + claim + finish: {p['redis_cpu_per_job_us']:,.1f} us"
        f"  [redis_cpu_per_job]"
    )
    print(
        f"jobs/s per primary at {REDIS_BUDGET:.0%} of one core: "
        f"{p['jobs_per_s_per_primary']:,.0f} /s  [jobs_per_primary]"
    )
    print(
        f"jobs/s per worker process at {WORKER_BUDGET:.0%} of one core (no-op task): "
        f"{p['jobs_per_s_per_worker']:,.0f} /s  [jobs_per_worker]"
    )
    print(
        "planning (assumptions: small jobs as above, publish one call per job, claims and "
        "finishes in batches, one shard per primary, no-op tasks: add your task's own CPU "
        f"to the worker figure; primaries at {REDIS_BUDGET:.0%}, workers at "
        f"{WORKER_BUDGET:.0%} of a core; replicas not counted):"
    )
    print(
        f"  {'jobs/s':>10} {'primaries':>10} {'shards':>7} {'workers':>8} {'backlog 1 min':>14} "
        f"{'results 10 min':>15} {'network':>12}"
    )
    for r in p["rows"]:
        print(
            f"  {r['rate']:>10,} {r['primaries']:>10,} {r['shards']:>7,} {r['workers']:>8,} "
            f"{r['backlog_1min_MB']:>11,.0f} MB {r['results_10min_MB']:>12,.0f} MB "
            f"{r['network_MB_s']:>7,.1f} MB/s  [plan_{r['rate']}]"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the 1/3/6-shard comparison (median kept)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    server = _load_redis_server()().start()
    try:
        figures = measure(server.url, max(10, args.jobs), max(1, args.rounds))
    finally:
        server.stop()
    p = plan(figures)
    report(figures, p, server.url)
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "plan": p}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
