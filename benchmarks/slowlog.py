"""How long taskpipe's Redis calls take at scale: SLOWLOG while 100,000 jobs drain, and while
10,000 delayed jobs fall due at once.

    python benchmarks/slowlog.py [--jobs N] [--delayed N] [--workers W] [--quick]

Starts its own ``redis-server`` on a free loopback port (never 6379) with
``slowlog-log-slower-than`` 10 ms, then:

1. publishes ``--jobs`` no-op jobs with ``publish_many`` and drains them with ``--workers``
   worker processes (``taskpipe worker --burst -c 16``);
2. puts ``--delayed`` jobs due at the same instant and lets two in-process burst workers (and
   an explicit ``JobChannel.promote`` loop) move and run them.

For each phase it prints the number of Redis calls over 10 ms and over 50 ms and the slowest
ones. Every Lua script is meant to do bounded work (promotion in batches of at most 1,000), so
on an idle machine nothing should pass 50 ms; on a loaded machine the figures say how much the
machine, not taskpipe, added. These used to be assertions in the test suite
(``test_100k_queued_jobs``, ``test_ten_thousand_delayed_jobs_due_at_once``), which failed on
loaded machines; the tests now check the bounded batches and print these figures. Nothing here
asserts; it prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskpipe import TaskPipe, Worker  # noqa: E402
from taskpipe.serialization import encode_envelope  # noqa: E402
from taskpipe.thoonk.job import PutRequest  # noqa: E402

TASK_MODULE = """
import os
from taskpipe import TaskPipe
app = TaskPipe("slowlog", broker=os.environ["SLOWLOG_BROKER"], prefix="slowlog:")

@app.task(name="noop")
def noop():
    return None
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _report(label: str, client: redis.Redis, started: float) -> None:
    entries: list[Any] = client.slowlog_get(1024)  # type: ignore[assignment]
    over50 = [e for e in entries if e["duration"] > 50_000]
    print(
        f"{label}: {time.monotonic() - started:.1f} s; Redis calls over 10 ms: {len(entries)}, "
        f"over 50 ms: {len(over50)}"
    )
    for e in sorted(entries, key=lambda e: -e["duration"])[:3]:
        command = (
            e["command"][:70].decode("utf-8", "replace")
            if isinstance(e["command"], bytes)
            else str(e["command"])[:70]
        )
        print(f"    {e['duration'] / 1000:7.1f} ms  {command}")
    client.slowlog_reset()


def drain_phase(url: str, client: redis.Redis, tmp: Path, jobs: int, workers: int) -> None:
    (tmp / "slowlog_tasks.py").write_text(TASK_MODULE)
    env = dict(os.environ, SLOWLOG_BROKER=url, PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT)]))
    app = TaskPipe("slowlog", broker=url, prefix="slowlog:")
    app.channel()
    client.slowlog_reset()
    started = time.monotonic()
    app.publish_many((app.signature("noop") for _ in range(jobs)), batch=1000)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskpipe",
                "worker",
                "-A",
                "slowlog_tasks:app",
                "--burst",
                "-c",
                "16",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.wait()
    counts = app.channel().counts()
    _report(
        f"{jobs:,} jobs published and drained by {workers} worker processes "
        f"(finished {counts['finished']:,})",
        client,
        started,
    )
    app.close()


def delayed_phase(url: str, client: redis.Redis, n: int) -> None:
    app = TaskPipe("slowlog-delayed", broker=url, prefix="slowlog-delayed:")

    @app.task(name="mark")
    def mark() -> None:
        return None

    ch = app.channel()
    sec, usec = client.time()
    due_ms = int(sec) * 1000 + int(usec) // 1000 + 3000
    item = encode_envelope("mark", (), {}, {}, serializer=app.serializer)
    ch.put_many(PutRequest(item, f"d{i}", False, 0, due_ms) for i in range(n))
    while True:
        sec, usec = client.time()
        if int(sec) * 1000 + int(usec) // 1000 > due_ms:
            break
        time.sleep(0.05)
    client.slowlog_reset()
    started = time.monotonic()
    runners = [
        Worker(app, concurrency=8, burst=True, heartbeat_interval=60, capture_logs=False)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=w.run) for w in runners]

    def promoter() -> None:
        while ch.promote()[0]:
            pass

    threads.append(threading.Thread(target=promoter))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _report(f"{n:,} delayed jobs due at once, promoted and run by 2 workers", client, started)
    app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--delayed", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="10,000 jobs and 2,000 delayed")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.delayed = 10_000, 2_000
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="taskpipe-slowlog-"))
    port = _free_port()
    server = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(tmp),
            "--save",
            "",
            "--appendonly",
            "no",
            "--slowlog-log-slower-than",
            "10000",
            "--slowlog-max-len",
            "1024",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        print(
            f"redis-server on 127.0.0.1:{port}; nproc {os.cpu_count()}; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        drain_phase(url, client, tmp, args.jobs, args.workers)
        delayed_phase(url, client, args.delayed)
    finally:
        client.close()
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
