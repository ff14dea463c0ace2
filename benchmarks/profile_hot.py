"""Where the time goes in the two hot paths: publishing with ``.delay()``, and a worker draining.

    python benchmarks/profile_hot.py delay [--jobs N]     # cProfile, in this process
    python benchmarks/profile_hot.py bulk [--jobs N]      # cProfile of task.map, in this process
    python benchmarks/profile_hot.py drain [--jobs N]     # py-spy on a worker process (pip install py-spy)

Each starts its own redis-server on a free loopback port. ``delay``/``bulk`` print cProfile's top
functions and the share of time per area (taskpipe modules, redis-py, socket calls). ``drain``
samples a ``Worker(app, burst=True)`` process with ``py-spy record --gil`` (only the thread holding
the GIL is sampled: that is the Python CPU the process spends) and prints the same areas plus the
heaviest functions, self and inclusive.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_app import CHANNEL, NOOP, build_app  # noqa: E402
from run import _load_redis_server  # noqa: E402

__all__ = ["main", "area"]

_AREAS = (
    ("taskpipe/worker", "taskpipe worker (loop, runner, outcomes, pools)"),
    ("taskpipe/thoonk", "taskpipe thoonk (job.py: put/claim/finish args)"),
    ("taskpipe/serialization", "taskpipe serialization"),
    ("taskpipe/publishing", "taskpipe publishing (send/build/publish_many)"),
    ("taskpipe/", "taskpipe, other modules"),
    ("redis/", "redis-py (command plumbing, packing, parsing)"),
    ("hiredis", "redis-py (command plumbing, packing, parsing)"),
    ("msgpack", "msgpack"),
    ("threading.py", "thread hand-offs (threading, queue)"),
    ("queue.py", "thread hand-offs (threading, queue)"),
    ("socket", "socket send/recv (system calls)"),
    ("uuid", "uuid"),
    ("dataclasses", "dataclasses"),
)


def area(location: str) -> str:
    """The area a function belongs to, from its file (or built-in) name."""
    for needle, name in _AREAS:
        if needle in location:
            return name
    return "other (Python builtins, bench code)"


def _jobs_in(numkeys: int, args: tuple[Any, ...]) -> int:
    """How many jobs a ``job_put`` (n, then 5 per job) or ``job_put_fresh`` (flag, then 2 per
    job) call carries."""
    argv = args[numkeys:]
    return int(argv[0]) if len(argv) == 1 + 5 * int(argv[0]) else (len(argv) - 1) // 2


class _NullPipe:
    """A pipeline that answers every ``job_put`` / ``job_put_fresh`` with "published" at once."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> _NullPipe:
        self.counts.append(_jobs_in(numkeys, args))
        return self

    def execute_command(self, name: str, sha: str, numkeys: int, *args: Any) -> _NullPipe:
        return self.evalsha(sha, numkeys, *args)

    def execute(self) -> list[list[int]]:
        return [[1] * n for n in self.counts]


class _NullClient:
    """No network: what is left of ``delay()`` / ``map()`` is taskpipe's own Python."""

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> list[int]:
        return [1] * _jobs_in(numkeys, args)

    def execute_command(self, name: str, *args: Any, **options: Any) -> Any:
        return self.evalsha(*args) if name == "EVALSHA" else None

    def pipeline(self, transaction: bool = False) -> _NullPipe:
        return _NullPipe()

    def hget(self, *args: Any) -> bytes:
        return b"job"  # every channel exists

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def time_budget(url: str, what: str, jobs: int) -> None:
    """Wall time per job, next to the raw INCR round trip, the script's server time (from
    ``INFO commandstats``) and taskpipe's own Python time (against a client with no network)."""
    from taskpipe import TaskPipe

    app = build_app(url, f"prof{uuid.uuid4().hex[:6]}:")
    noop, r = app.tasks[NOOP], app.connection.client

    def publish() -> None:
        if what == "delay":
            for _ in range(jobs):
                noop.delay()
        else:
            noop.map([()] * jobs)

    noop.map([()] * 100)
    incr_n = 5000 if what == "delay" else 0
    t0 = time.perf_counter()
    for _ in range(incr_n):
        r.incr("prof:incr")
    incr_us = (time.perf_counter() - t0) / max(incr_n, 1) * 1e6
    r.config_resetstat()
    t0 = time.perf_counter()
    publish()
    wall = (time.perf_counter() - t0) / jobs * 1e6
    server = float(r.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)) / jobs
    app.close()
    null = TaskPipe("null", client=_NullClient(), default_channel=CHANNEL)
    null_noop = null.task(name=NOOP)(lambda: None)

    def publish_null() -> None:
        if what == "delay":
            for _ in range(jobs):
                null_noop.delay()
        else:
            null_noop.map([()] * jobs)

    publish_null()
    t0 = time.perf_counter()
    publish_null()
    python = (time.perf_counter() - t0) / jobs * 1e6
    print(f"{what}: {wall:.1f} us/job wall, no profiler")
    if incr_n:
        print(f"  raw redis-py INCR round trip:           {incr_us:6.1f} us")
    print(f"  job_put_fresh script on the server:      {server:6.1f} us/job (INFO commandstats)")
    print(f"  taskpipe Python (client with no network): {python:6.1f} us/job")
    print()


def profile_publish(url: str, what: str, jobs: int) -> None:
    time_budget(url, what, jobs)
    app = build_app(url, f"prof{uuid.uuid4().hex[:6]}:")
    noop = app.tasks[NOOP]
    for _ in range(200):
        noop.delay()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    if what == "delay":
        prof.enable()
        for _ in range(jobs):
            noop.delay()
        prof.disable()
    else:
        prof.enable()
        noop.map([()] * jobs)
        prof.disable()
    elapsed = time.perf_counter() - t0
    print(
        f"{what}: {jobs} jobs, {jobs / elapsed:,.0f}/s under cProfile ({elapsed / jobs * 1e6:.1f} us/job; "
        "cProfile inflates many small Python calls, so read the shares, not the totals)"
    )
    stats = pstats.Stats(prof)
    by_area: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, dict[object, object]]] = (
        stats.stats
    )  # type: ignore[attr-defined]
    for (filename, _, func), (_, _, tottime, _, _) in raw.items():
        where = func if filename == "~" else filename
        by_area[area(where)] += tottime
        total += tottime
    print("\nself time by area:")
    for name, t in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * t / total:5.1f}%  {t / jobs * 1e6:6.1f} us/job  {name}")
    print()
    stats.sort_stats("tottime").print_stats(18)
    app.close()


def _parse_pyspy(
    path: Path,
) -> tuple[int, collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    frame = re.compile(r"(.*) \((.*?):\d+\)$")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if not any("Worker.run" in f or "Thread.run" in f for f in frames):
            continue  # start-up (imports, app set-up), before the worker runs
        n = int(count)
        total += n
        names = []
        for f in frames:
            m = frame.match(f)
            fn, loc = (m.group(1), m.group(2)) if m else (f, f)
            short = loc.split("site-packages/")[-1].split("/python3.")[-1]
            short = short.replace(str(HERE.parent) + "/", "")
            names.append(
                (f"{fn} ({short.split('/', 1)[-1] if short.startswith('1') else short})", loc)
            )
        self_fn[names[-1][0]] += n
        by_area[area(names[-1][1])] += n
        for name in {x[0] for x in names}:
            incl_fn[name] += n
    return total, by_area, self_fn, incl_fn


def profile_drain(url: str, jobs: int) -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("drain profiling needs py-spy: pip install py-spy")
    prefix = f"prof{uuid.uuid4().hex[:6]}:"
    app = build_app(url, prefix)
    app.tasks[NOOP].map([()] * jobs)
    out = Path(tempfile.mkdtemp(prefix="taskpipe-prof-")) / "drain.txt"
    env = dict(
        os.environ,
        TASKPIPE_BROKER_URL=url,
        TASKPIPE_BENCH_PREFIX=prefix,
        PYTHONPATH=str(HERE.parent),
    )
    args = [
        spy,
        "record",
        "--gil",
        "--nonblocking",
        "-r",
        "1000",
        "--format",
        "raw",
        "-o",
        str(out),
        "--",
        sys.executable,
        str(HERE / "bench_app.py"),
        CHANNEL,
        "--burst",
    ]
    proc = subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    while proc.stdout.readline().strip() not in ("ready", ""):
        pass
    t0 = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    report = [ln for ln in proc.communicate(timeout=300)[0].splitlines() if ln.startswith("{")]
    elapsed = time.perf_counter() - t0
    print(
        f"drain: {jobs} jobs in {elapsed:.2f} s under py-spy ({jobs / elapsed:,.0f}/s); "
        f"worker says {report[-1] if report else '?'}"
    )
    print(
        "(a C call such as SimpleQueue.put, which wakes a sleeping thread, counts as the self "
        "time of the Python function that made it)"
    )
    total, by_area, self_fn, incl_fn = _parse_pyspy(out)
    print(
        f"\n{total} samples of the GIL-holding thread ({total / elapsed / 10:.0f}% of wall time at "
        "1000 Hz)\n\nGIL time by area (self):"
    )
    for name, n in by_area.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\ntop functions, self:")
    for name, n in self_fn.most_common(20):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\ntop functions, inclusive:")
    for name, n in incl_fn.most_common(35):
        print(f"  {100 * n / total:5.1f}%  {name}")
    app.close()


def main(argv: list[str] | None = None) -> int:
    """Start redis-server, profile the chosen path, print the breakdown."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["delay", "bulk", "drain"])
    parser.add_argument(
        "--jobs", type=int, default=None, help="jobs to publish or drain (default 10000)"
    )
    opts = parser.parse_args(argv)
    jobs = opts.jobs or 10000
    server = _load_redis_server()().start()
    try:
        if opts.what == "drain":
            profile_drain(server.url, jobs)
        else:
            profile_publish(server.url, opts.what, jobs)
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
