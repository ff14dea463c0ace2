"""Peer comparison: taskpipe's workers against huey and dramatiq, on the same Redis, in one run.

    python benchmarks/peers.py              # 10000 jobs per worker and round, 3 rounds (~3-5 min)
    python benchmarks/peers.py --quick      # 1000 jobs, 3 rounds
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
between 10 % and 90 % of the total, over that time (should one poll see both, from the poll
before it); start-up and the tail are not timed. Worker CPU per job (user+sys of the worker's
process tree, from ``/proc``) is taken over the same span. Once all are done, the worker is killed
(SIGKILL to its process group: nothing is left to measure in a graceful stop) and its connections
are closed on the server's side.
Every rate and ratio printed is the median of the rounds (min-max in brackets); each ratio is
taken within a round (taskpipe's rate / the peer's rate in that same round), because the
machine's speed drifts between rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
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
#: The peers' publisher: one process for the run (in the peers' venv), which says the peers'
#: versions, then queues ``N`` jobs for each ``SYSTEM N`` line it reads and answers ``queued``.
_PUBLISH = """
import sys
import dramatiq
import huey
from dramatiq_app import noop as dramatiq_noop
from huey_app import noop as huey_noop
print(huey.__version__, dramatiq.__version__, flush=True)
for line in sys.stdin:
    kind, n = line.split()
    if kind == "huey":
        for _ in range(int(n)):
            huey_noop()
    else:
        for _ in range(int(n)):
            dramatiq_noop.send()
    print("queued", flush=True)
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
RATIOS: tuple[tuple[str, str, str, str, float], ...] = (
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


def _tree_pids(root: int) -> set[int]:
    """``root`` and all its live descendants (a scan of every process's ``/proc`` stat: this
    kernel may lack the per-thread ``children`` lists)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent[int(entry)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def _cpu_of(pids: set[int]) -> float:
    """User+sys CPU seconds of these processes (those that are gone count nothing)."""
    ticks = 0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """User+sys CPU seconds of ``root`` and all its live descendants (Linux ``/proc``)."""
    return _cpu_of(_tree_pids(root))


#: Before the window opens, every poll notes the worker's CPU from the processes found by the
#: last scan of ``/proc`` (a few reads), and scans again every this many polls.
_RESCAN_POLLS = 20


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
        self.r.ping()  # both connected before any worker starts (see drop_clients_since)
        self.r1.ping()
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
        os.environ["BENCH_URL"] = self.url
        # the same app module the taskpipe workers load (run afresh: not one cached for another)
        self.tp_app = runpy.run_path(str(workdir / "tp_app.py"))["app"]
        self.finishes_key = self.tp_app.channel("bench").keys.finishes
        self._publisher: subprocess.Popen[str] | None = None
        self._versions: list[str] = []

    def peer_versions(self) -> list[str]:
        """huey's and dramatiq's versions, as the peers' publisher imports them."""
        self._peer_publisher()
        return self._versions

    def _peer_publisher(self) -> subprocess.Popen[str]:
        """The peers' publisher process (started on first use, then kept for the run)."""
        if self._publisher is None:
            self._publisher = subprocess.Popen(
                [str(self.bindir / "python"), "publish.py"],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._publisher.stdout is not None
            self._versions = self._publisher.stdout.readline().split()
            if len(self._versions) != 2:
                raise RuntimeError(f"the peers' publisher did not start ({self._versions})")
        return self._publisher

    def close(self) -> None:
        """Stop the peers' publisher; close the taskpipe app and the Redis clients."""
        if self._publisher is not None:
            assert self._publisher.stdin is not None and self._publisher.stdout is not None
            self._publisher.stdin.close()
            self._publisher.wait(30)
            self._publisher.stdout.close()
            self._publisher = None
        self.tp_app.close()
        self.r.close()
        self.r1.close()

    def publish(self, system: str) -> None:
        """Queue ``jobs`` no-op jobs for ``system`` (not timed)."""
        if system == "taskpipe":
            noop = self.tp_app.tasks["bench.noop"]
            for start in range(0, self.jobs, 5000):
                noop.map([()] * min(5000, self.jobs - start))
            return
        publisher = self._peer_publisher()
        assert publisher.stdin is not None and publisher.stdout is not None
        publisher.stdin.write(f"{system} {self.jobs}\n")
        publisher.stdin.flush()
        if publisher.stdout.readline().strip() != "queued":
            raise RuntimeError(f"the peers' publisher failed (exit code {publisher.poll()})")

    def finished(self, system: str) -> int:
        """Results stored so far."""
        if system == "taskpipe":
            return int(self.r.get(self.finishes_key) or 0)
        if system == "huey":
            return int(self.r.hlen("huey.results.bench"))
        return int(self.r1.dbsize())

    def drop_clients_since(self, ours: set[str]) -> None:
        """Close, on the server's side, every connection but ``ours``: the killed worker's. Redis
        may not yet have seen them closed, and one blocked in a pop would be handed the next
        round's first job (written to a dead socket, and the job lost)."""
        for client in self.r.client_list():
            if client["id"] not in ours:
                try:
                    self.r.client_kill_filter(_id=client["id"])
                except redis.ResponseError:  # gone meanwhile
                    pass

    def measure(self, system: str, argv: list[str], timeout: float) -> tuple[float, float]:
        """Drain ``jobs`` queued jobs with one worker command: (jobs/s, worker CPU us per job)."""
        self.r.flushall()
        if system == "taskpipe":
            self.tp_app.channel("bench")  # re-create the channel's registration after FLUSHALL
        self.publish(system)
        ours = {c["id"] for c in self.r.client_list()}
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
        # (time, worker CPU, jobs finished) at the window's start and end; ``before`` is the
        # last poll below 10 % (the start itself at first), where the window opens if the poll
        # that first sees 10 % already sees 90 % (few jobs, or this process held off the CPU)
        before: tuple[float, float, int] = (time.perf_counter(), 0.0, 0)
        start: tuple[float, float, int] | None = None
        known, polls = {proc.pid}, 0
        deadline = time.monotonic() + timeout
        try:
            while True:
                done = self.finished(system)
                if start is None and done < lo:
                    polls += 1
                    if polls % _RESCAN_POLLS == 0:
                        known = _tree_pids(proc.pid)
                    before = (time.perf_counter(), _cpu_of(known), done)
                elif start is None:
                    sample = (time.perf_counter(), _tree_cpu(proc.pid), done)
                    if done >= hi:
                        start, end = before, sample
                        break
                    start = sample
                elif done >= hi:
                    end = (time.perf_counter(), _tree_cpu(proc.pid), done)
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
            # measured: its state goes with the next FLUSHALL, so no graceful stop is waited
            # for (a worker's took 0.2-2 s and measured nothing); the whole process group goes
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(15)
            if proc.stderr is not None:
                proc.stderr.close()
            self.drop_clients_since(ours)
        jobs = end[2] - start[2]
        return jobs / (end[0] - start[0]), (end[1] - start[1]) / jobs * 1e6


def run_rounds(
    bench: PeerBench,
    workers: list[tuple[str, str, str, list[str]]],
    ratio_rows: tuple[tuple[str, str, str, str, float], ...],
    rounds: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Each round, each worker in turn; printed as it goes. Per worker key, the rates and CPU
    per job of the rounds; per ratio key, the ratio taken within each round."""
    rates: dict[str, list[float]] = {key: [] for key, *_ in workers}
    cpus: dict[str, list[float]] = {key: [] for key, *_ in workers}
    ratios: dict[str, list[float]] = {key: [] for key, *_ in ratio_rows}
    for rnd in range(rounds):
        this: dict[str, float] = {}
        for key, label, system, args in workers:
            rate, cpu = bench.measure(system, args, timeout=max(120.0, bench.jobs / 50))
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
    return rates, cpus, ratios


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
    else:
        bindir = Path(sys.executable).parent
    server = _load_redis_server()().start()
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="taskpipe-peers-") as tmp:
            bench = PeerBench(server.port, bindir, Path(tmp), jobs)
            try:
                versions = bench.peer_versions() if opts.only is None else ["-", "-"]
                print(
                    "taskpipe vs peers: the same no-op task, results stored, one worker command "
                    "each"
                )
                print(
                    f"  python {sys.version.split()[0]}  nproc {os.cpu_count()}  huey "
                    f"{versions[0]}  dramatiq {versions[1]}  loadavg "
                    f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
                )
                print(
                    f"  {jobs} jobs per worker and round, {opts.rounds} rounds, redis-server on "
                    f"127.0.0.1:{server.port}",
                    flush=True,
                )
                rates, cpus, ratios = run_rounds(bench, workers, ratio_rows, opts.rounds)
            finally:
                bench.close()
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
