"""Peer comparison: taskpipe's workers against huey and dramatiq, on the same Redis, in one run.

    python benchmarks/peers.py              # 10000 jobs per worker and round, 3 rounds (~3-5 min)
    python benchmarks/peers.py --quick      # 1000 jobs, 3 rounds (what the smoke test runs)
    python benchmarks/peers.py --jobs 20000 --json peers.json
    python benchmarks/peers.py --only taskpipe   # taskpipe's three workers only (no peers' venv)

Optional and self-contained: it installs the peers, at pinned versions (``PEERS``), into a venv
of their own (``--venv``, default ``~/.cache/taskpipe-bench/peers-<versions>``; made once, then
reused), starts its own ``redis-server`` on a free loopback port (``tests/redis_server.py``, no
persistence, never 6379), and runs the same no-op task with its result stored, for:

- taskpipe: thread pool ``-c 8``, process pool ``--pool process -c 2``, thread pool ``-c 1``
  (``taskpipe worker`` from this checkout);
- huey: ``huey_consumer -w 2 -k process`` and ``huey_consumer -w 1`` (``RedisHuey`` with
  ``results=True, store_none=True``);
- dramatiq: ``dramatiq -p 2 -t 8`` (``RedisBroker``, ``Results`` on a ``RedisBackend``).

Each round, for each worker: Redis is emptied, ``--jobs`` jobs are queued, the worker is started
by its own command line, and its **steady drain rate** is the jobs finished (results stored)
between 10 % and 90 % of the total, over that time; start-up and the tail are not timed. Worker
CPU per job (user+sys of the worker's process tree, from ``/proc``) is taken over the same span.
Every rate and ratio printed is the median of the rounds (min-max in brackets); each ratio is
taken within a round (taskpipe's rate / the peer's rate in that same round), because the
machine's speed drifts between rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Pinned peer versions, installed into the peers' venv.
PEERS = {"huey": "3.5.4", "dramatiq[redis]": "2.2.1", "redis": "8.1.0"}

_TASKPIPE_APP = """
import os
from taskpipe import TaskPipe
app = TaskPipe("bench", broker=os.environ["BENCH_URL"], default_channel="bench")

@app.task(name="bench.noop")
def noop():
    return None
"""
_HUEY_APP = """
import os
from huey import RedisHuey
huey = RedisHuey("bench", host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), results=True,
                 store_none=True)

@huey.task()
def noop():
    return None
"""
_DRAMATIQ_APP = """
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
port = int(os.environ["BENCH_PORT"])
broker = RedisBroker(host="127.0.0.1", port=port, db=0)
broker.add_middleware(Results(backend=RedisBackend(host="127.0.0.1", port=port, db=1)))
dramatiq.set_broker(broker)

@dramatiq.actor(store_results=True, queue_name="bench")
def noop():
    return None
"""
_PUBLISH = """
import sys
kind, n = sys.argv[1], int(sys.argv[2])
if kind == "huey":
    from huey_app import noop
    for _ in range(n):
        noop()
else:
    from dramatiq_app import noop
    for _ in range(n):
        noop.send()
"""

#: (key, label, system, argv after the interpreter; {py} = the peers' venv bin dir)
WORKERS: tuple[tuple[str, str, str, list[str]], ...] = (
    (
        "taskpipe_thread_c8",
        "taskpipe thread pool -c 8",
        "taskpipe",
        ["-m", "taskpipe", "worker", "-A", "tp_app:app", "-Q", "bench", "-c", "8", "-l", "warning"],
    ),
    (
        "taskpipe_process_c2",
        "taskpipe process pool -c 2",
        "taskpipe",
        [
            "-m",
            "taskpipe",
            "worker",
            "-A",
            "tp_app:app",
            "-Q",
            "bench",
            "--pool",
            "process",
            "-c",
            "2",
            "-l",
            "warning",
        ],
    ),
    (
        "taskpipe_thread_c1",
        "taskpipe thread pool -c 1",
        "taskpipe",
        ["-m", "taskpipe", "worker", "-A", "tp_app:app", "-Q", "bench", "-c", "1", "-l", "warning"],
    ),
    (
        "huey_2proc",
        "huey, 2 processes",
        "huey",
        ["{bin}/huey_consumer", "huey_app.huey", "-w", "2", "-k", "process", "-q"],
    ),
    (
        "huey_1thread",
        "huey, 1 thread",
        "huey",
        ["{bin}/huey_consumer", "huey_app.huey", "-w", "1", "-q"],
    ),
    (
        "dramatiq_2x8",
        "dramatiq, 2 processes x 8 threads",
        "dramatiq",
        ["{bin}/dramatiq", "dramatiq_app", "-p", "2", "-t", "8", "-Q", "bench"],
    ),
)
PEER_KEYS = ("huey_2proc", "huey_1thread", "dramatiq_2x8")
#: (key, label, numerator, denominator or "best" (the fastest peer of the round), target)
RATIOS = (
    ("thread_vs_best_peer", "thread pool -c 8 / best peer", "taskpipe_thread_c8", "best", 5.0),
    (
        "process_vs_huey_2proc",
        "process pool -c 2 / huey 2 processes",
        "taskpipe_process_c2",
        "huey_2proc",
        3.0,
    ),
    ("c1_vs_huey_1thread", "-c 1 / huey 1 thread", "taskpipe_thread_c1", "huey_1thread", 2.0),
)


def _load_redis_server() -> Any:
    """``tests/redis_server.py``'s RedisServer (``run.py`` loads it by path)."""
    sys.path.insert(0, str(HERE))
    from run import _load_redis_server as load

    return load()


def default_venv() -> Path:
    """Where the peers' venv lives unless ``--venv`` says otherwise."""
    tag = "-".join(f"{name.split('[')[0]}{v}" for name, v in sorted(PEERS.items()))
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "taskpipe-bench"
        / f"peers-{tag}"
    )


def ensure_venv(path: Path, out: Callable[[str], None]) -> Path:
    """Create the peers' venv and install the pinned peers into it (once); its bin dir."""
    bindir = path / "bin"
    marker = path / "installed.json"
    want = json.dumps(PEERS, sort_keys=True)
    if marker.exists() and marker.read_text() == want:
        return bindir
    out(f"installing {', '.join(f'{k}=={v}' for k, v in PEERS.items())} into {path} ...")
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run(
        [
            str(bindir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *(f"{k}=={v}" for k, v in PEERS.items()),
        ],
        check=True,
    )
    marker.write_text(want)
    return bindir


def _tree_cpu(root: int) -> float:
    """User+sys CPU seconds of ``root`` and all its live descendants (Linux ``/proc``)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


class PeerBench:
    """One Redis, the apps written to a temporary directory, and the measurement of one worker."""

    def __init__(self, port: int, bindir: Path, workdir: Path, jobs: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.bindir = bindir
        self.workdir = workdir
        self.jobs = jobs
        self.r = redis.Redis(host="127.0.0.1", port=port)
        self.r1 = redis.Redis(host="127.0.0.1", port=port, db=1)
        for name, text in (
            ("tp_app.py", _TASKPIPE_APP),
            ("huey_app.py", _HUEY_APP),
            ("dramatiq_app.py", _DRAMATIQ_APP),
            ("publish.py", _PUBLISH),
        ):
            (workdir / name).write_text(text)
        self.env = dict(
            os.environ,
            BENCH_URL=self.url,
            BENCH_PORT=str(port),
            PYTHONPATH=os.pathsep.join([str(workdir), str(ROOT)]),
        )
        self.env.pop("TASKPIPE_BROKER_URL", None)
        sys.path.insert(0, str(workdir))
        os.environ["BENCH_URL"] = self.url
        import tp_app  # the same app module the taskpipe workers load

        self.tp_app = tp_app.app
        self.finishes_key = self.tp_app.channel("bench").keys.finishes

    def publish(self, system: str) -> None:
        """Queue ``jobs`` no-op jobs for ``system`` (not timed)."""
        if system == "taskpipe":
            noop = self.tp_app.tasks["bench.noop"]
            for start in range(0, self.jobs, 5000):
                noop.map([()] * min(5000, self.jobs - start))
            return
        subprocess.run(
            [str(self.bindir / "python"), "publish.py", system, str(self.jobs)],
            cwd=self.workdir,
            env=self.env,
            check=True,
        )

    def finished(self, system: str) -> int:
        """Results stored so far."""
        if system == "taskpipe":
            return int(self.r.get(self.finishes_key) or 0)
        if system == "huey":
            return int(self.r.hlen("huey.results.bench"))
        return int(self.r1.dbsize())

    def measure(self, system: str, argv: list[str], timeout: float) -> tuple[float, float]:
        """Drain ``jobs`` queued jobs with one worker command: (jobs/s, worker CPU us per job)."""
        self.r.flushall()
        if system == "taskpipe":
            self.tp_app.channel("bench")  # re-create the channel's registration after FLUSHALL
        self.publish(system)
        exe = [a.replace("{bin}", str(self.bindir)) for a in argv]
        if system == "taskpipe":
            exe = [sys.executable, *exe]
        proc = subprocess.Popen(
            exe,
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        lo, hi = self.jobs // 10, self.jobs - self.jobs // 10
        t0 = c0 = n0 = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                done = self.finished(system)
                if t0 is None and done >= lo:
                    t0, c0, n0 = time.perf_counter(), _tree_cpu(proc.pid), done
                if t0 is not None and done >= hi:
                    t1, c1 = time.perf_counter(), _tree_cpu(proc.pid)
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise RuntimeError(
                        f"{' '.join(exe)}: {done}/{self.jobs} jobs done "
                        f"(exit code {proc.returncode}) {err}"
                    )
                time.sleep(0.002)
            while self.finished(system) < self.jobs and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        assert n0 is not None and c0 is not None
        jobs = done - n0
        return jobs / (t1 - t0), (c1 - c0) / jobs * 1e6


def _fmt(values: list[float], unit: str, fmt: str = ",.0f") -> str:
    med = statistics.median(values)
    return f"{med:{fmt}}{unit} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, make the peers' venv, start redis-server, run the rounds, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="jobs per worker and round (default 10000, quick 1000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1000 jobs per worker and round")
    parser.add_argument("--venv", type=Path, default=None, help="the peers' venv (made if missing)")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures to this file"
    )
    parser.add_argument(
        "--only",
        choices=("taskpipe",),
        default=None,
        help="run only these workers (taskpipe: its three workers, no peers, no ratios)",
    )
    opts = parser.parse_args(argv)
    jobs = opts.jobs or (1000 if opts.quick else 10000)
    if jobs < 100 or opts.rounds < 1:
        parser.error("--jobs must be >= 100 and --rounds >= 1")
    workers = [w for w in WORKERS if opts.only is None or w[2] == opts.only]
    ratio_rows = RATIOS if opts.only is None else ()
    if opts.only is None:
        try:
            bindir = ensure_venv(opts.venv or default_venv(), print)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"cannot install the peers ({exc}); nothing measured", file=sys.stderr)
            return 3
        versions = subprocess.run(
            [
                str(bindir / "python"),
                "-c",
                "import huey, dramatiq; print(huey.__version__, dramatiq.__version__)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    else:
        bindir, versions = Path(sys.executable).parent, ["-", "-"]
    server = _load_redis_server()().start()
    rates: dict[str, list[float]] = {key: [] for key, *_ in workers}
    cpus: dict[str, list[float]] = {key: [] for key, *_ in workers}
    ratios: dict[str, list[float]] = {key: [] for key, *_ in ratio_rows}
    started = time.time()
    try:
        print("taskpipe vs peers: the same no-op task, results stored, one worker command each")
        print(
            f"  python {sys.version.split()[0]}  nproc {os.cpu_count()}  huey {versions[0]}  "
            f"dramatiq {versions[1]}  loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(
            f"  {jobs} jobs per worker and round, {opts.rounds} rounds, redis-server on "
            f"127.0.0.1:{server.port}",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="taskpipe-peers-") as tmp:
            bench = PeerBench(server.port, bindir, Path(tmp), jobs)
            for rnd in range(opts.rounds):
                this: dict[str, float] = {}
                for key, label, system, args in workers:
                    rate, cpu = bench.measure(system, args, timeout=max(120.0, jobs / 50))
                    rates[key].append(rate)
                    cpus[key].append(cpu)
                    this[key] = rate
                    print(
                        f"  round {rnd + 1}: {label:<36} {rate:>9,.0f} /s  {cpu:>6.0f} us CPU/job",
                        flush=True,
                    )
                best = max((this[k] for k in PEER_KEYS if k in this), default=0.0)
                for key, _label, num, den, _target in ratio_rows:
                    ratios[key].append(this[num] / (best if den == "best" else this[den]))
            bench.tp_app.close()
    finally:
        server.cleanup()
    print(
        f"\nmedians of {opts.rounds} rounds (min-max), ran {time.time() - started:.0f} s, loadavg "
        f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for key, label, *_ in workers:
        print(
            f"  {label:<36} {_fmt(rates[key], ' /s'):>28}   worker CPU {_fmt(cpus[key], ' us/job')}"
            f"  [{key}]"
        )
    if ratio_rows:
        print("\nratios, taken within each round (target):")
    verdicts = []
    for key, label, _num, _den, target in ratio_rows:
        med = statistics.median(ratios[key])
        ok = med >= target
        verdicts.append({"ratio": key, "median": med, "target": target, "pass": ok})
        print(
            f"  {'PASS' if ok else 'MISS'}  {label:<38} {_fmt(ratios[key], 'x', '.2f'):>22}  "
            f"(>= {target:g}x)  [{key}]"
        )
    if opts.json is not None:
        opts.json.write_text(
            json.dumps(
                {
                    "jobs": jobs,
                    "rounds": opts.rounds,
                    "rates": rates,
                    "cpu_us_per_job": cpus,
                    "ratios": ratios,
                    "verdicts": verdicts,
                    "peers": PEERS,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
