"""taskpipe benchmark: one command, its own redis-server, figures as ratios to the raw ceiling.

    python benchmarks/run.py [--jobs N] [--quick | --smoke] [--rounds R] [--concurrency C] [--prefetch P] [--json FILE]

Starts ``redis-server`` on a free loopback port (never 6379) and measures, for a no-op task:

- the raw ceiling in the same run: redis-py single ``INCR`` round trips/s and pipelined INCR/s;
- ``.delay()`` one at a time, and bulk publishing (``task.map``, i.e. ``app.publish_many``);
- draining N queued jobs with one and with two worker processes (``Worker(app, burst=True)``,
  thread pool, each process its own GIL);
- latency from publish to task start with an idle worker (the task stores ``time.time()`` at its
  start in Redis; the publisher notes ``time.time()`` just before ``delay()``), and the
  ``delay().get()`` round trip;
- memory in Redis per queued job and per finished job with its stored result.

Ratios, not absolute numbers, are what travel between machines, and a shared machine is noisy:
so every figure is measured in ``R`` rounds, each round right next to its own raw-ceiling
measurement, and the reported ratio is the median of the per-round ratios (min-max shown).
Latencies are given in round-trip times (RTT = the median redis-py ``INCR`` round trip, timed
between the latency samples). The targets of ``docs/performance.md`` are printed as PASS/MISS.
Nothing here asserts; it prints.
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

__all__ = ["main", "FIGURES", "TARGETS", "Bench"]

#: Every figure this script prints, by key (the smoke test checks they are all there).
FIGURES = (
    "raw_single",
    "raw_pipelined",
    "delay",
    "bulk",
    "drain_1proc",
    "drain_2proc",
    "publish_start_p50",
    "publish_start_p99",
    "raw_wake_p50",
    "raw_wake_p99",
    "get_p50",
    "get_p99",
    "mem_queued",
    "mem_result",
)
#: (label, figure, comparison, threshold, unit) of each target; the value compared is the ratio.
TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    ("delay() >= 0.7x raw single round trips/s", "delay", ">=", 0.7, "x single"),
    ("bulk >= 0.5x raw pipelined/s", "bulk", ">=", 0.5, "x pipelined"),
    (
        "drain, 1 worker process >= 1.5x raw single round trips/s",
        "drain_1proc",
        ">=",
        1.5,
        "x single",
    ),
    ("publish->start p99 <= 5 RTT", "publish_start_p99", "<=", 5.0, "RTT"),
    ("memory per small queued job <= 400 bytes", "mem_queued", "<=", 400.0, "bytes"),
)
#: figure -> the raw ceiling its ratio is taken against
REFERENCE = {
    "delay": "single",
    "bulk": "pipelined",
    "drain_1proc": "single",
    "drain_2proc": "single",
}


def _load_redis_server() -> Any:
    """``tests/redis_server.py``'s RedisServer, loaded by path (the tests are not a package)."""
    spec = importlib.util.spec_from_file_location(
        "_bench_redis_server", ROOT / "tests" / "redis_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RedisServer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Bench:
    """One benchmark run against one redis-server; results land in ``figures`` / ``ratios``."""

    def __init__(
        self,
        url: str,
        jobs: int,
        samples: int,
        rounds: int,
        raw_seconds: float,
        concurrency: int | None,
        log: Callable[[str], None],
        prefetch: int | None = None,
    ) -> None:
        self.url = url
        self.jobs = jobs
        self.samples = samples
        self.rounds = rounds
        self.raw_seconds = raw_seconds
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.log = log
        self.prefix = f"bench{uuid.uuid4().hex[:6]}:"
        self.app = build_app(url, self.prefix)
        self.r = redis.Redis.from_url(url)
        self.channel = self.app.channel(CHANNEL)
        self.raw_key = self.prefix + "raw"
        self.figures: dict[str, float] = {}
        self.ratios: dict[str, float] = {}
        self.spread: dict[str, tuple[float, float]] = {}
        self.extra: dict[str, Any] = {}
        self._per_round: dict[str, list[tuple[float, float]]] = {}  # figure -> (value, reference)

    # raw ceiling ------------------------------------------------------------------------------
    def raw_single(self, seconds: float | None = None) -> float:
        """redis-py ``INCR`` one at a time for ``seconds``: round trips per second."""
        incr, key, clock = self.r.incr, self.raw_key, time.perf_counter
        n, t0 = 0, clock()
        end = t0 + (seconds or self.raw_seconds)
        while clock() < end:
            for _ in range(50):
                incr(key)
            n += 50
        rate = n / (clock() - t0)
        self._per_round.setdefault("raw_single", []).append((rate, rate))
        return rate

    def raw_pipelined(self, seconds: float | None = None) -> float:
        """redis-py ``INCR`` pipelined 1000 per batch for ``seconds``: commands per second."""
        key, clock = self.raw_key, time.perf_counter
        n, t0 = 0, clock()
        end = t0 + (seconds or self.raw_seconds)
        while clock() < end:
            pipe = self.r.pipeline(transaction=False)
            for _ in range(1000):
                pipe.incr(key)
            pipe.execute()
            n += 1000
        rate = n / (clock() - t0)
        self._per_round.setdefault("raw_pipelined", []).append((rate, rate))
        return rate

    def rtt_percentiles(self, count: int = 2000) -> tuple[float, float]:
        """Per-call INCR round trip p50 and p99, in seconds."""
        clock, incr, key = time.perf_counter, self.r.incr, self.raw_key
        durations = []
        for _ in range(count):
            t0 = clock()
            incr(key)
            durations.append(clock() - t0)
        return _pct(durations, 0.5), _pct(durations, 0.99)

    def _record(self, figure: str, value: float, reference: float) -> None:
        self._per_round.setdefault(figure, []).append((value, reference))

    # worker processes -------------------------------------------------------------------------
    def finished_total(self) -> int:
        return int(self.r.get(self.channel.keys.finishes) or 0)

    def spawn_worker(self, burst: bool) -> subprocess.Popen[str]:
        """A worker process, imported and connected, waiting for ``go`` on stdin."""
        return self.await_ready([self.start_worker(burst)])[0]

    def start_worker(self, burst: bool) -> subprocess.Popen[str]:
        """A worker process, started (``await_ready`` waits until it has imported and connected)."""
        env = dict(
            os.environ,
            TASKPIPE_BROKER_URL=self.url,
            TASKPIPE_BENCH_PREFIX=self.prefix,
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        args = [sys.executable, str(HERE / "bench_app.py"), CHANNEL]
        if burst:
            args.append("--burst")
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        if self.prefetch is not None:
            args += ["--prefetch", str(self.prefetch)]
        return subprocess.Popen(
            args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    @staticmethod
    def await_ready(procs: list[subprocess.Popen[str]]) -> list[subprocess.Popen[str]]:
        """Wait until each of these worker processes says ``ready`` (they start side by side)."""
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                for p in procs:
                    p.kill()
                    p.communicate()
                raise RuntimeError(f"worker process did not start (said {line!r})")
        return procs

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

    def drain(self, nprocs: int, n: int) -> float:
        """Start ``nprocs`` burst workers on ``n`` queued jobs; jobs per second until all finished."""
        target = self.finished_total() + n
        procs = self.await_ready([self.start_worker(burst=True) for _ in range(nprocs)])
        server_cpu = self.server_cpu_seconds()
        t0 = time.perf_counter()
        self.go(procs)
        while self.finished_total() < target:
            time.sleep(0.002)
            if all(p.poll() is not None for p in procs) and self.finished_total() < target:
                raise RuntimeError("worker processes exited before the channel was drained")
        rate = n / (time.perf_counter() - t0)
        server_cpu = self.server_cpu_seconds() - server_cpu
        reports = self.collect(procs)
        cpu = sum(rep.get("cpu_user", 0) + rep.get("cpu_system", 0) for rep in reports)
        self.extra.setdefault(f"worker_cpu_us_per_job_{nprocs}proc", []).append(cpu / n * 1e6)
        self.extra.setdefault(f"redis_cpu_us_per_job_{nprocs}proc", []).append(server_cpu / n * 1e6)
        return rate

    def server_cpu_seconds(self) -> float:
        """The redis-server's CPU time so far (user + sys, ``INFO cpu``): around a drain, the
        server time the claims and finishes cost (plus this script's polling, a GET per 2 ms)."""
        cpu = self.r.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    # phases -----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Scripts loaded, every per-channel key created, a worker process run once."""
        self.raw_single(min(0.1, self.raw_seconds))
        self._per_round.clear()
        self.app.tasks[NOOP].map([()] * 20)
        self.app.tasks[NOOP].delay()
        self.drain(1, 21)
        self.extra.clear()

    def publish_and_drain_one(self, rnd: int, n: int) -> None:
        """One round: ``delay()`` n jobs, bulk-publish n jobs, drain the 2n with one process."""
        noop = self.app.tasks[NOOP]
        delay = noop.delay
        base = self.used_memory()
        s1 = self.raw_single()
        t0 = time.perf_counter()
        for _ in range(n):
            delay()
        rate = n / (time.perf_counter() - t0)
        self._record("delay", rate, statistics.fmean([s1, self.raw_single()]))
        p1 = self.raw_pipelined()
        before = self.used_memory()
        t0 = time.perf_counter()
        results = noop.map([()] * n)
        rate = n / (time.perf_counter() - t0)
        after = self.used_memory()
        self._record("bulk", rate, statistics.fmean([p1, self.raw_pipelined()]))
        self._record("mem_queued", (after - before) / n, 0.0)
        if rnd == 0:
            self.memory_breakdown_queued(n, results[0].id)
        s1 = self.raw_single()
        rate = self.drain(1, 2 * n)
        self._record("drain_1proc", rate, statistics.fmean([s1, self.raw_single()]))
        done = self.used_memory()
        self._record("mem_result", (done - base) / (2 * n), 0.0)
        if rnd == 0:
            self.memory_breakdown_finished(results[0].id)

    def drain_two(self, n: int) -> None:
        """One round: bulk-publish 2n jobs (not timed), drain them with two processes."""
        self.app.tasks[NOOP].map([()] * (2 * n))
        s1 = self.raw_single()
        rate = self.drain(2, 2 * n)
        self._record("drain_2proc", rate, statistics.fmean([s1, self.raw_single()]))

    def latency(self) -> None:
        """Publish -> start and ``delay().get()`` with one idle worker process.

        One timed ``INCR`` goes before each sample, so the RTT they are divided by (the median
        INCR round trip) is measured under the very same conditions.
        """
        proc = self.start_worker(burst=False)  # it starts while the raw wake-up child does
        try:
            raw_wake = self.raw_wake_latency(before=lambda: self.await_ready([proc]))
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        clock, incr, raw_key = time.perf_counter, self.r.incr, self.raw_key
        incr_times: list[float] = []

        def timed_incr() -> None:
            t0 = clock()
            incr(raw_key)
            incr_times.append(clock() - t0)

        try:
            self.go([proc])
            noop, stamp = self.app.tasks[NOOP], self.app.tasks[STAMP]
            for _ in range(20):  # warm up: the worker is running and its scripts are loaded
                noop.delay().get(timeout=30)
            key = self.prefix + "stamps"
            published: list[float] = []
            for i in range(self.samples):
                time.sleep(0.001)  # the worker is idle (blocked on its wake-up list) when it lands
                published.append(time.time())
                stamp.delay(i, key)
                # this process keeps still while the job starts (an INCR now would compete with
                # the worker and Redis for the machine's cores), then times its INCR
                time.sleep(0.003)
                timed_incr()
            deadline = time.monotonic() + 30
            while self.r.hlen(key) < self.samples and time.monotonic() < deadline:
                time.sleep(0.01)
            started = {int(f): float(v) for f, v in self.r.hgetall(key).items()}
            lat = [started[i] - published[i] for i in range(self.samples) if i in started]
            rtts: list[float] = []
            for _ in range(self.samples):
                timed_incr()
                time.sleep(0.003)
                t0 = clock()
                noop.delay().get(timeout=30)
                rtts.append(clock() - t0)
        finally:
            proc.kill()  # its report is not needed: no graceful stop to wait for
            self.collect([proc])
        rtt = statistics.median(incr_times)
        self.extra.update(
            rtt_us=rtt * 1e6,
            rtt_p99_us=_pct(incr_times, 0.99) * 1e6,
            rtt_mean_us=statistics.fmean(incr_times) * 1e6,
            publish_start_mean_us=statistics.fmean(lat) * 1e6,
            latency_samples=len(lat),
        )
        for name, values in (("publish_start", lat), ("get", rtts), ("raw_wake", raw_wake)):
            for q in (50, 99):
                value = _pct(values, q / 100)
                self.figures[f"{name}_p{q}"] = value * 1e6
                self.ratios[f"{name}_p{q}"] = value / rtt

    def raw_wake_latency(self, before: Callable[[], object] = lambda: None) -> list[float]:
        """The floor under publish -> start: another process blocked in a redis-py ``BLPOP``
        notes ``time.time()`` as soon as this process's ``LPUSH`` wakes it; same pacing as the
        publish -> start samples. ``before`` is called once that process is blocked, before the
        samples. Returns the latencies in seconds."""
        key, woke = self.prefix + "rawwake", self.prefix + "rawwoke"
        child = (
            "import redis, sys, time\n"
            "r = redis.Redis.from_url(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "while r.blpop([sys.argv[2]], timeout=0)[1] != b'stop':\n"
            "    r.rpush(sys.argv[3], repr(time.time()))\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", child, self.url, key, woke], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the raw wake-up process did not start")
            before()
            deadline = time.monotonic() + 30
            while not any(c.get("cmd") == "blpop" for c in self.r.client_list()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the raw wake-up process did not block in BLPOP")
                time.sleep(0.001)
            published: list[float] = []
            for _ in range(self.samples):
                time.sleep(0.001)
                published.append(time.time())
                self.r.lpush(key, "1")
                time.sleep(0.003)
                self.r.incr(self.raw_key)
            self.r.lpush(key, "stop")
            proc.wait(30)
        finally:
            proc.kill()
        woken = [float(v) for v in self.r.lrange(woke, 0, -1)]
        self.r.delete(key, woke)
        return [w - p for w, p in zip(woken, published)]

    # memory -----------------------------------------------------------------------------------
    def used_memory(self) -> int:
        """Redis ``used_memory`` in bytes."""
        return int(self.r.info("memory")["used_memory"])

    def memory_breakdown_queued(self, n: int, job_id: str) -> None:
        k = self.channel.keys
        total = self.channel.counts()["available"]
        self.extra["payload_bytes"] = len(self.channel.get_item(job_id) or b"")
        self.extra["mem_queued_by_key"] = {
            name: int(self.r.memory_usage(key, samples=0) or 0) / total
            for name, key in (
                ("ids LIST", k.ids),
                ("items HASH", k.items),
                ("published ZSET", k.published),
            )
        }

    def memory_breakdown_finished(self, job_id: str) -> None:
        k = self.channel.keys
        finished = int(self.r.zcard(k.finished)) or 1
        self.extra["mem_result_by_key"] = {
            "result STRING+TTL": int(self.r.memory_usage(k.result(job_id), samples=0) or 0),
            "finished-index ZSET": int(self.r.memory_usage(k.finished, samples=0) or 0) / finished,
        }

    # the whole run ----------------------------------------------------------------------------
    def run(self) -> None:
        """Every phase, then the medians."""
        n = max(50, self.jobs // (2 * self.rounds))  # each round queues 2n jobs
        started = time.perf_counter()
        self.warm_up()
        for rnd in range(self.rounds):
            self.publish_and_drain_one(rnd, n)
        for _ in range(self.rounds):
            self.drain_two(n)
        self.latency()
        self.extra["jobs_per_drain"] = 2 * n
        self.extra["seconds"] = time.perf_counter() - started
        self._summarize()

    def _summarize(self) -> None:
        for figure, pairs in self._per_round.items():
            values = [v for v, _ in pairs]
            self.figures[figure] = statistics.median(values)
            if figure.startswith("mem_"):
                self.ratios[figure] = self.figures[figure]
                continue
            if figure.startswith("raw_"):
                ratios = [v / statistics.median(values) for v in values]
            else:
                ratios = [v / ref for v, ref in pairs]
            self.ratios[figure] = statistics.median(ratios)
            self.spread[figure] = (min(ratios), max(ratios))
        for figure in (
            "worker_cpu_us_per_job_1proc",
            "worker_cpu_us_per_job_2proc",
            "redis_cpu_us_per_job_1proc",
            "redis_cpu_us_per_job_2proc",
        ):
            if figure in self.extra:
                self.extra[figure] = statistics.median(self.extra[figure])


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
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis-server": version,
        "redis-py": f"{redis.__version__} ({parser})",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


LABELS = {
    "raw_single": "raw INCR, one at a time",
    "raw_pipelined": "raw INCR, pipelined 1000 per batch",
    "delay": ".delay(), one at a time",
    "bulk": "bulk publish (task.map / publish_many)",
    "drain_1proc": "drain, 1 worker process",
    "drain_2proc": "drain, 2 worker processes",
    "publish_start_p50": "publish -> task start, p50",
    "publish_start_p99": "publish -> task start, p99",
    "raw_wake_p50": "raw LPUSH -> BLPOP wakes a process, p50",
    "raw_wake_p99": "raw LPUSH -> BLPOP wakes a process, p99",
    "get_p50": "delay().get() round trip, p50",
    "get_p99": "delay().get() round trip, p99",
    "mem_queued": "memory per queued job",
    "mem_result": "memory per finished job + stored result",
}


def report(bench: Bench, out: Callable[[str], None]) -> list[tuple[str, bool, float]]:
    """Print the figures and the targets; returns ``(target, passed, ratio)`` per target."""
    f, ratio, x = bench.figures, bench.ratios, bench.extra
    out(f"{'figure':<42}{'value':>14}   {'ratio':<26}{'rounds min-max':<16}key")
    for key in FIGURES:
        if key.startswith("mem_"):
            value, rtext = f"{f[key]:,.0f} B", ""
        elif key.endswith(("_p50", "_p99")):  # latencies
            value, rtext = f"{f[key]:,.0f} us", f"{ratio[key]:.1f} RTT"
        else:
            ref = REFERENCE.get(key, key.removeprefix("raw_"))
            value, rtext = f"{f[key]:,.0f} /s", f"{ratio[key]:.2f}x {ref}"
        lo, hi = bench.spread.get(key, (None, None))
        spread = f"{lo:.2f}-{hi:.2f}" if lo is not None and not key.startswith("raw_") else ""
        out(f"{LABELS[key]:<42}{value:>14}   {rtext:<26}{spread:<16}[{key}]")
    out(
        f"raw pipelined = {ratio['raw_pipelined'] * f['raw_pipelined'] / f['raw_single']:.1f}x raw "
        f"single; bulk = {f['bulk'] / f['raw_single']:.2f}x raw single"
    )
    out(
        f"RTT = median INCR round trip, timed between the latency samples = {x['rtt_us']:.0f} us "
        f"(mean {x['rtt_mean_us']:.0f} us, p99 {x['rtt_p99_us']:.0f} us); publish->start mean "
        f"{x['publish_start_mean_us']:,.0f} us"
    )
    cpu1, cpu2 = x.get("worker_cpu_us_per_job_1proc"), x.get("worker_cpu_us_per_job_2proc")
    if cpu1 is not None and cpu2 is not None:
        out(f"worker CPU (user+sys) per job: {cpu1:.0f} us with 1 process, {cpu2:.0f} us with 2")
    rcpu1, rcpu2 = x.get("redis_cpu_us_per_job_1proc"), x.get("redis_cpu_us_per_job_2proc")
    if rcpu1 is not None and rcpu2 is not None:
        out(
            f"redis-server CPU (user+sys, INFO cpu) per drained job: {rcpu1:.1f} us with 1 "
            f"process, {rcpu2:.1f} us with 2"
        )
    out(
        f"queued job payload {x['payload_bytes']} B; per queued job by key: "
        + ", ".join(f"{k} {v:.0f} B" for k, v in x["mem_queued_by_key"].items())
    )
    out(
        "per finished job by key: "
        + ", ".join(f"{k} {v:.0f} B" for k, v in x["mem_result_by_key"].items())
    )
    out("")
    out("targets")
    results = []
    for label, key, op, threshold, unit in TARGETS:
        measured = ratio[key]
        passed = measured >= threshold if op == ">=" else measured <= threshold
        results.append((label, passed, measured))
        out(f"  {'PASS' if passed else 'MISS'}  {label:<58} {measured:,.2f} {unit}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start redis-server, run every measurement, print the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="jobs published and drained in all per phase (default 24000, quick 4000)",
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="latency samples (default 1000, quick 200)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per figure (default 3, quick 2)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run (well under a minute)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run that prints every figure (200 jobs, 10 samples, 1 round, raw "
        "ceilings timed 0.02 s): checks the script runs; its figures mean little",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="threads per worker process (default: the Worker default)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="jobs a worker claims ahead of free slots (default: the Worker default)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures to this file"
    )
    opts = parser.parse_args(argv)
    jobs = opts.jobs or (200 if opts.smoke else 4000 if opts.quick else 24000)
    samples = opts.samples or (10 if opts.smoke else 200 if opts.quick else 1000)
    rounds = opts.rounds or (1 if opts.smoke else 2 if opts.quick else 3)
    if jobs < 200 or samples < 10 or rounds < 1:
        parser.error("--jobs must be >= 200, --samples >= 10, --rounds >= 1")
    server = _load_redis_server()().start()
    try:
        info = machine()
        print("taskpipe benchmark")
        print("  " + "  ".join(f"{k}: {v}" for k, v in info.items()))
        print(
            f"  jobs {jobs} per phase in {rounds} rounds, {samples} latency samples, "
            f"redis-server on 127.0.0.1:{server.port}",
            flush=True,
        )
        bench = Bench(
            server.url,
            jobs,
            samples,
            rounds,
            0.02 if opts.smoke else 0.25 if opts.quick else 0.5,
            opts.concurrency,
            print,
            opts.prefetch,
        )
        bench.run()
        info["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"  ran {bench.extra['seconds']:.1f} s; loadavg after: {info['loadavg_after']}")
        busiest = max(float(info["loadavg"].split()[0]), float(info["loadavg_after"].split()[0]))
        if busiest > (os.cpu_count() or 1):
            print(
                f"  note: the machine was busy (load average {busiest:.1f} on "
                f"{os.cpu_count()} cores): the figures are rough"
            )
        print()
        targets = report(bench, print)
        sys.stdout.flush()
        if opts.json is not None:
            opts.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "jobs": jobs,
                        "samples": samples,
                        "rounds": rounds,
                        "figures": bench.figures,
                        "ratios": bench.ratios,
                        "spread": bench.spread,
                        "extra": bench.extra,
                        "targets": [{"target": t, "pass": p, "ratio": v} for t, p, v in targets],
                    },
                    indent=2,
                )
            )
        bench.app.close()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
