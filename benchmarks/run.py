"""taskpipe benchmark: one command, its own redis-server, figures as ratios to the raw ceiling.

    python benchmarks/run.py [--jobs N] [--quick] [--concurrency C] [--json FILE]

Starts ``redis-server`` on a free loopback port (never 6379) and measures, for a no-op task:

- the raw ceiling in the same run: redis-py single ``INCR`` round trips/s and pipelined INCR/s;
- ``.delay()`` one at a time, and bulk publishing (``task.map``, i.e. ``app.publish_many``);
- draining N queued jobs with one and with two worker processes (thread pool, burst mode);
- latency from publish to task start with an idle worker, and the ``delay().get()`` round trip;
- memory in Redis per queued job and per finished job with its stored result.

Every rate is also printed as a ratio to the raw single round-trip rate (machines differ; ratios
travel), every latency in round-trip times (RTT = 1 / raw single rate), and the targets of
``docs/performance.md`` as PASS/MISS. Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import redis  # noqa: E402

from bench_app import CHANNEL, NOOP, STAMP, build_app  # noqa: E402

__all__ = ["main", "FIGURES", "TARGETS"]

#: Every figure this script prints, by key (the smoke test checks they are all there).
FIGURES = (
    "raw_single", "raw_pipelined", "delay", "bulk", "drain_1proc", "drain_2proc",
    "publish_start_p50", "publish_start_p99", "get_p50", "get_p99",
    "mem_queued", "mem_result",
)
#: (name, figure, comparison, threshold, unit) of each target.
TARGETS = (
    ("delay() >= 0.7x raw single round trips/s", "delay", ">=", 0.7, "x single"),
    ("bulk >= 0.5x raw pipelined/s", "bulk", ">=", 0.5, "x pipelined"),
    ("drain, 1 worker process >= 1.5x raw single round trips/s", "drain_1proc", ">=", 1.5, "x single"),
    ("publish->start p99 <= 5 RTT", "publish_start_p99", "<=", 5.0, "RTT"),
    ("memory per small queued job <= 400 bytes", "mem_queued", "<=", 400.0, "bytes"),
)


def _load_redis_server() -> Any:
    """``tests/redis_server.py``'s RedisServer, loaded by path (the tests are not a package)."""
    spec = importlib.util.spec_from_file_location("_bench_redis_server", ROOT / "tests" / "redis_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RedisServer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Bench:
    """One benchmark run against one redis-server."""

    def __init__(self, url: str, jobs: int, samples: int, raw_seconds: float,
                 concurrency: int | None, out: Callable[[str], None]) -> None:
        self.url = url
        self.jobs = jobs
        self.samples = samples
        self.raw_seconds = raw_seconds
        self.concurrency = concurrency
        self.out = out
        self.prefix = f"bench{uuid.uuid4().hex[:6]}:"
        self.app = build_app(url, self.prefix)
        self.r = redis.Redis.from_url(url)
        self.figures: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.channel = self.app.channel(CHANNEL)

    # helpers ----------------------------------------------------------------------------------
    def used_memory(self) -> int:
        """Redis ``used_memory`` (after letting lazy frees settle)."""
        time.sleep(0.05)
        return int(self.r.info("memory")["used_memory"])

    def finished_total(self) -> int:
        return int(self.r.get(self.channel.keys.finishes) or 0)

    def spawn_worker(self, burst: bool) -> subprocess.Popen[str]:
        env = dict(os.environ, TASKPIPE_BROKER_URL=self.url, TASKPIPE_BENCH_PREFIX=self.prefix,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        args = [sys.executable, str(HERE / "bench_app.py"), CHANNEL]
        if burst:
            args.append("--burst")
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise RuntimeError(f"worker process did not start (said {line!r})")
        return proc

    @staticmethod
    def go(procs: list[subprocess.Popen[str]]) -> None:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    @staticmethod
    def collect(procs: list[subprocess.Popen[str]], timeout: float = 60) -> list[dict[str, Any]]:
        reports = []
        for p in procs:
            stdout, _ = p.communicate(timeout=timeout)
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            reports.append(json.loads(lines[-1]) if lines else {})
        return reports

    # measurements -----------------------------------------------------------------------------
    def raw(self) -> None:
        key = self.prefix + "raw"
        r = self.r
        for _ in range(200):
            r.incr(key)
        clock = time.perf_counter
        durations: list[float] = []
        end = clock() + self.raw_seconds
        while clock() < end:
            t0 = clock()
            r.incr(key)
            durations.append(clock() - t0)
        single = len(durations) / sum(durations)
        # the rate of a plain loop (no per-call timing), the ceiling .delay() is compared to
        n, t0 = 0, clock()
        end = t0 + self.raw_seconds
        while clock() < end:
            for _ in range(100):
                r.incr(key)
            n += 100
        single = max(single, n / (clock() - t0))
        batch, total = 1000, 0
        t0 = clock()
        end = t0 + self.raw_seconds
        while clock() < end:
            pipe = r.pipeline(transaction=False)
            for _ in range(batch):
                pipe.incr(key)
            pipe.execute()
            total += batch
        pipelined = total / (clock() - t0)
        r.delete(key)
        self.figures["raw_single"] = single
        self.figures["raw_pipelined"] = pipelined
        self.extra["rtt_us"] = 1e6 / single
        self.extra["rtt_p50_us"] = _pct(durations, 0.5) * 1e6
        self.extra["rtt_p99_us"] = _pct(durations, 0.99) * 1e6

    def bulk_and_drain_one(self) -> None:
        task = self.app.tasks[NOOP]
        task.map([()] * 10)  # warm up: scripts loaded, every per-channel key exists
        self.channel.claim(10)
        self._finish_claimed()
        base = self.used_memory()
        t0 = time.perf_counter()
        results = task.map([()] * self.jobs)
        elapsed = time.perf_counter() - t0
        assert len(results) == self.jobs
        self.figures["bulk"] = self.jobs / elapsed
        queued = self.used_memory()
        self.figures["mem_queued"] = (queued - base) / self.jobs
        k = self.channel.keys
        self.extra["mem_queued_by_key"] = {
            name: int(self.r.memory_usage(key, samples=0) or 0) / self.jobs
            for name, key in (("ids (LIST)", k.ids), ("items (HASH)", k.items),
                              ("published (ZSET)", k.published))}
        self.extra["payload_bytes"] = len(self.channel.get_item(results[0].id) or b"")
        self.figures["drain_1proc"] = self._drain(1)
        done = self.used_memory()
        self.figures["mem_result"] = (done - base) / self.jobs
        self.extra["mem_result_by_key"] = {
            "result (STRING with TTL)": int(self.r.memory_usage(k.result(results[0].id), samples=0) or 0),
            "finished index (ZSET)": int(self.r.memory_usage(k.finished, samples=0) or 0) / (self.jobs + 10),
        }

    def _finish_claimed(self) -> None:
        ch = self.channel
        for job_id in [x.decode() for x in self.r.zrange(ch.keys.claimed, 0, -1)]:
            ch.finish(job_id, b"x", result_ttl_ms=60_000)

    def _drain(self, nprocs: int) -> float:
        target = self.finished_total() + self.jobs
        procs = [self.spawn_worker(burst=True) for _ in range(nprocs)]
        t0 = time.perf_counter()
        self.go(procs)
        while self.finished_total() < target:
            time.sleep(0.005)
            if all(p.poll() is not None for p in procs) and self.finished_total() < target:
                raise RuntimeError("worker processes exited before the channel was drained")
        elapsed = time.perf_counter() - t0
        reports = self.collect(procs)
        self.extra[f"drain_{nprocs}proc_claims"] = [rep.get("claimed") for rep in reports]
        return self.jobs / elapsed

    def delay_and_drain_two(self) -> None:
        task = self.app.tasks[NOOP]
        delay = task.delay
        t0 = time.perf_counter()
        for _ in range(self.jobs):
            delay()
        self.figures["delay"] = self.jobs / (time.perf_counter() - t0)
        self.figures["drain_2proc"] = self._drain(2)

    def latency(self) -> None:
        proc = self.spawn_worker(burst=False)
        try:
            self.go([proc])
            noop, stamp = self.app.tasks[NOOP], self.app.tasks[STAMP]
            for _ in range(20):  # warm up: the worker is running and its scripts are loaded
                noop.delay().get(timeout=30)
            key = self.prefix + "stamps"
            published: list[float] = []
            for i in range(self.samples):
                time.sleep(0.002)  # the worker is idle (blocked) when the job arrives
                published.append(time.time())
                stamp.delay(i, key)
            deadline = time.monotonic() + 30
            while self.r.hlen(key) < self.samples and time.monotonic() < deadline:
                time.sleep(0.01)
            started = {int(f): float(v) for f, v in self.r.hgetall(key).items()}
            lat = [started[i] - published[i] for i in range(self.samples) if i in started]
            rtts: list[float] = []
            for _ in range(self.samples):
                time.sleep(0.002)
                t0 = time.perf_counter()
                noop.delay().get(timeout=30)
                rtts.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            self.collect([proc])
        self.figures["publish_start_p50"] = _pct(lat, 0.5) * 1e6
        self.figures["publish_start_p99"] = _pct(lat, 0.99) * 1e6
        self.figures["get_p50"] = _pct(rtts, 0.5) * 1e6
        self.figures["get_p99"] = _pct(rtts, 0.99) * 1e6
        self.extra["publish_start_mean_us"] = statistics.fmean(lat) * 1e6

    def run(self) -> None:
        steps = [("raw ceiling", self.raw), ("bulk publish + drain (1 process)", self.bulk_and_drain_one),
                 (".delay() + drain (2 processes)", self.delay_and_drain_two),
                 ("latency", self.latency)]
        for label, step in steps:
            t0 = time.perf_counter()
            step()
            print(f"  [{label}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)


# report ---------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """Where the figures were measured."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    exe = shutil.which("redis-server") or "redis-server"
    server = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()
    version = next((w[2:] for w in server if w.startswith("v=")), "?")
    try:
        import hiredis

        parser = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser = "pure-Python parser"
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "redis-server": version, "redis-py": f"{redis.__version__} ({parser})",
            "platform": platform.platform()}


def report(bench: Bench, out: Callable[[str], None]) -> list[tuple[str, bool, float]]:
    """Print the figures table and the targets; returns ``(target, passed, value)``."""
    f, x = bench.figures, bench.extra
    single, piped, rtt = f["raw_single"], f["raw_pipelined"], x["rtt_us"]
    ratios = {"raw_single": 1.0, "raw_pipelined": piped / single, "delay": f["delay"] / single,
              "bulk": f["bulk"] / piped, "drain_1proc": f["drain_1proc"] / single,
              "drain_2proc": f["drain_2proc"] / single}
    out(f"{'figure':<44}{'value':>16}  ratio")
    rows = [
        ("raw_single", "raw INCR, one at a time", f"{single:,.0f} /s", "1.00x single"),
        ("raw_pipelined", "raw INCR, pipelined (1000 per batch)", f"{piped:,.0f} /s",
         f"{ratios['raw_pipelined']:.2f}x single"),
        ("delay", ".delay(), one at a time", f"{f['delay']:,.0f} /s", f"{ratios['delay']:.2f}x single"),
        ("bulk", "bulk publish (task.map / publish_many)", f"{f['bulk']:,.0f} /s",
         f"{ratios['bulk']:.2f}x pipelined, {f['bulk'] / single:.2f}x single"),
        ("drain_1proc", "drain, 1 worker process", f"{f['drain_1proc']:,.0f} /s",
         f"{ratios['drain_1proc']:.2f}x single"),
        ("drain_2proc", "drain, 2 worker processes", f"{f['drain_2proc']:,.0f} /s",
         f"{ratios['drain_2proc']:.2f}x single"),
    ]
    for key in ("publish_start_p50", "publish_start_p99", "get_p50", "get_p99"):
        label = {"publish_start_p50": "publish -> task start, p50", "publish_start_p99":
                 "publish -> task start, p99", "get_p50": "delay().get() round trip, p50",
                 "get_p99": "delay().get() round trip, p99"}[key]
        ratios[key] = f[key] / rtt
        rows.append((key, label, f"{f[key]:,.0f} us", f"{ratios[key]:.1f} RTT"))
    ratios["mem_queued"] = f["mem_queued"]
    rows.append(("mem_queued", "memory per queued job", f"{f['mem_queued']:,.0f} B",
                 f"payload {x['payload_bytes']} B"))
    rows.append(("mem_result", "memory per finished job + stored result", f"{f['mem_result']:,.0f} B",
                 ""))
    for key, label, value, ratio in rows:
        out(f"{label:<44}{value:>16}  {ratio}   [{key}]")
    out(f"RTT = 1/raw single = {rtt:.1f} us (per-call p50 {x['rtt_p50_us']:.1f} us, "
        f"p99 {x['rtt_p99_us']:.1f} us)")
    out("memory per queued job by key: " + ", ".join(
        f"{k} {v:.0f} B" for k, v in x["mem_queued_by_key"].items()))
    out("memory per finished job by key: " + ", ".join(
        f"{k} {v:.0f} B" for k, v in x["mem_result_by_key"].items()))
    out("")
    out("targets")
    results = []
    for name, key, op, threshold, unit in TARGETS:
        value = ratios[key]
        passed = value >= threshold if op == ">=" else value <= threshold
        results.append((name, passed, value))
        out(f"  {'PASS' if passed else 'MISS'}  {name:<60} {value:,.2f} {unit}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start redis-server, run every measurement, print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None, help="queued jobs per drain (default 20000, quick 4000)")
    parser.add_argument("--samples", type=int, default=None, help="latency samples (default 1000, quick 200)")
    parser.add_argument("--quick", action="store_true", help="smaller run (well under a minute)")
    parser.add_argument("--concurrency", type=int, default=None, help="threads per worker process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    opts = parser.parse_args(argv)
    jobs = opts.jobs or (4000 if opts.quick else 20000)
    samples = opts.samples or (200 if opts.quick else 1000)
    if jobs < 100 or samples < 10:
        parser.error("--jobs must be >= 100 and --samples >= 10")
    server = _load_redis_server()().start()
    try:
        info = machine()
        print("taskpipe benchmark  " + "  ".join(f"{k}: {v}" for k, v in info.items()))
        print(f"jobs {jobs}, latency samples {samples}, redis-server on 127.0.0.1:{server.port}", flush=True)
        bench = Bench(server.url, jobs, samples, 0.5 if opts.quick else 2.0, opts.concurrency, print)
        bench.run()
        print()
        targets = report(bench, print)
        if opts.json is not None:
            opts.json.write_text(json.dumps({"machine": info, "jobs": jobs, "samples": samples,
                                             "figures": bench.figures, "extra": bench.extra,
                                             "targets": [{"target": n, "pass": p, "value": v}
                                                         for n, p, v in targets]}, indent=2))
        bench.app.close()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
