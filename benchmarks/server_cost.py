"""Redis server cost per drained job: CPU time, commands, and (optionally) instructions.

    python benchmarks/server_cost.py [--jobs N] [--rounds R] [--callgrind]

Publishes ``--jobs`` no-op jobs, then drains them with one in-process thread-pool worker
(``Worker(burst=True)``), with records of successes on (the default) and off
(``TaskPipe(record_successes=False)``), alternating, ``--rounds`` times each. Around each drain
it reads the server's ``INFO cpu`` and ``INFO commandstats`` (reset first) and prints, per job:
the drain rate, the worker's CPU (this process, ``getrusage``), the server's CPU (user + sys),
``evalsha`` microseconds (claim + finish scripts, nested commands included) and the nested
commands that cost most.

``--callgrind`` runs the redis-server under ``valgrind --tool=callgrind`` instead and prints the
instructions the server executed per drained job (counters zeroed after publishing, dumped
after the drain): a figure that does not move with the machine's load, unlike CPU time, so two
versions of the Lua scripts can be compared on a busy machine (docs/performance.md, round
three). Slow: use ``--jobs 3000``.

Starts its own redis-server on a free loopback port (never 6379). Nothing here asserts.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import _load_redis_server  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402
from taskpipe.worker import Worker  # noqa: E402


def _queue(url: str, jobs: int, records: bool) -> TaskPipe:
    app = TaskPipe(
        "cost",
        broker=url,
        prefix=f"cost{time.time_ns()}:",
        default_channel="bench",
        record_successes=records,
    )

    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    noop.map([(i,) for i in range(jobs)])
    return app


def _drain(app: TaskPipe) -> None:
    Worker(app, ["bench"], burst=True, heartbeat_interval=60.0).run()


def _server_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def measure(url: str, jobs: int, records: bool) -> dict[str, Any]:
    """One drain of ``jobs`` no-op jobs; figures per job."""
    app = _queue(url, jobs, records)
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    server0, usage0, t0 = (
        _server_cpu(client),
        resource.getrusage(resource.RUSAGE_SELF),
        time.perf_counter(),
    )
    _drain(app)
    elapsed = time.perf_counter() - t0
    usage1, server1 = resource.getrusage(resource.RUSAGE_SELF), _server_cpu(client)
    stats = client.info("commandstats")
    client.flushdb()
    client.close()
    app.close()
    worker = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    return {
        "rate": jobs / elapsed,
        "worker_us": worker / jobs * 1e6,
        "server_us": (server1 - server0) / jobs * 1e6,
        "evalsha_us": stats.get("cmdstat_evalsha", {}).get("usec", 0) / jobs,
        "commands": {k[8:]: v["usec"] / jobs for k, v in stats.items() if k != "cmdstat_evalsha"},
    }


def cpu_rounds(jobs: int, rounds: int) -> None:
    server = _load_redis_server()().start()
    try:
        by_mode: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for _ in range(rounds):
            for records in (True, False):
                by_mode[records].append(measure(server.url, jobs, records))
        for records, runs in by_mode.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "commands"}
            top = sorted(runs[-1]["commands"].items(), key=lambda kv: -kv[1])[:10]
            each = ", ".join(f"{r['server_us']:.1f}" for r in runs)
            print(
                f"records of successes {'on ' if records else 'off'}: {med['rate']:,.0f} jobs/s, "
                f"worker CPU {med['worker_us']:.1f} us/job, redis-server CPU "
                f"{med['server_us']:.1f} us/job, evalsha {med['evalsha_us']:.1f} us/job "
                f"(medians of {len(runs)}; server per round: {each})"
            )
            print("    nested commands, us/job: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    finally:
        server.stop()


def callgrind(jobs: int) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("--callgrind needs valgrind (apt-get install valgrind)")
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed")
    for records in (True, False):
        tmp = tempfile.mkdtemp(prefix="server-cost-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", exe]
        args += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            for _ in range(600):  # valgrind starts slowly
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.1)
            app = _queue(url, jobs, records)
            subprocess.run(
                ["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True
            )
            _drain(app)
            subprocess.run(
                ["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True
            )
            app.close()
            client.close()
            dump = max(glob.glob(f"{tmp}/cg.*.*"), key=os.path.getmtime)
            text = subprocess.run(
                ["callgrind_annotate", "--inclusive=yes", dump], capture_output=True, text=True
            ).stdout
            total = re.search(r"^([\d,]+) .*PROGRAM TOTALS", text, re.MULTILINE)
            evalsha = re.search(r"^\s*([\d,]+) .*:evalShaCommand ", text, re.MULTILINE)

            def per_job(m: re.Match[str] | None) -> str:
                return f"{int(m.group(1).replace(',', '')) / jobs:,.0f}" if m else "?"

            print(
                f"records of successes {'on ' if records else 'off'}: {per_job(total)} "
                f"instructions per drained job ({per_job(evalsha)} in EVALSHA)"
            )
        finally:
            proc.terminate()
            proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true")
    opts = parser.parse_args()
    print(f"loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {opts.jobs} no-op jobs")
    if opts.callgrind:
        callgrind(opts.jobs)
    else:
        cpu_rounds(opts.jobs, opts.rounds)


if __name__ == "__main__":
    main()
