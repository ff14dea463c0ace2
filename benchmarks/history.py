"""Job history benchmark: Redis memory per finished job with and without its record, and the
time to list and filter among many finished jobs (issue 14; figures in ``docs/performance.md``).

    python benchmarks/history.py [--jobs 100000] [--mem-jobs 20000] [--url redis://...]

Without ``--url`` it starts its own redis-server on a free loopback port (``tests/redis_server.py``).
Jobs are put, claimed and finished through the Thoonk layer (``finish_many`` in batches, as a
worker does), with a taskpipe envelope and result, so only the stored data is measured:

- ``mem_finished_plain``: a success finished without a record (what a finish kept before).
- ``mem_finished_record``: a success with its record (payload, counts, worker, times, indexes).
- ``mem_failed_record``: a failure (error + a short traceback) with its record.
- ``list_*``: ``app.jobs(...)`` among ``--jobs`` finished jobs (1 in 10 failed, 5 tasks), median
  of 5 calls, in ms: the newest 50; the newest 50 failed; 50 of one task; an error-text filter
  matching 1 in 1000 jobs; and the per-task breakdown.

Figures are printed one per line, ending with ``[name]``. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import _load_redis_server as _redis_server  # noqa: E402

from taskpipe import TaskPipe  # noqa: E402
from taskpipe.history import find_jobs, task_breakdown  # noqa: E402
from taskpipe.serialization import encode_envelope, encode_failure, encode_result  # noqa: E402
from taskpipe.thoonk.job import FinishRequest, PutRequest  # noqa: E402

TRACEBACK = (
    'Traceback (most recent call last):\n  File "app/tasks.py", line 42, in charge\n'
    '    raise ValueError(f"card declined: {order}")\nValueError: card declined\n'
)
DAY_MS = 86_400_000


def fill(
    app: TaskPipe,
    channel: str,
    n: int,
    kind: str,
    *,
    tasks: int = 1,
    fail_every: int = 0,
    needle_every: int = 0,
) -> None:
    """Put, claim and finish ``n`` jobs on ``channel``. ``kind``: plain (no record) or record;
    ``fail_every``: every k-th job fails (k=1: all); ``needle_every``: every k-th failure's
    message holds the word ``needle``."""
    ch = app.channel(channel)
    ok = encode_result(None)
    for start in range(0, n, 1000):
        size = min(1000, n - start)
        reqs = [
            PutRequest(
                encode_envelope(f"bench.task{(start + i) % tasks}", (start + i, "x" * 8), {}, {}),
                fresh=True,
            )
            for i in range(size)
        ]
        ch.put_many(reqs)
        claims = ch.claim(count=size, worker="bench-worker")
        fins = []
        for c in claims:
            num = len(fins) + start
            failed = bool(fail_every) and num % fail_every == 0
            msg = "card declined" + (
                " needle" if needle_every and num % (fail_every * needle_every) == 0 else ""
            )
            result = encode_failure("ValueError", msg, TRACEBACK) if failed else ok
            label = f"bench.task{num % tasks}"
            fins.append(
                FinishRequest(
                    c.id,
                    c.token,
                    result,
                    7 * DAY_MS if failed else DAY_MS,
                    failed,
                    outcome="" if kind == "plain" else ("failed" if failed else "succeeded"),
                    label=label,
                    runtime_ms=3,
                )
            )
        ch.finish_many(fins)


def per_job_memory(app: TaskPipe, n: int, kind: str, fail_every: int) -> float:
    client = app.connection.client
    name = "mem-" + uuid.uuid4().hex[:8]
    app.channel(name).put(b"warm")  # create the channel's fixed keys first
    client.execute_command("MEMORY", "PURGE")
    before = int(client.info("memory")["used_memory"])
    fill(app, name, n, kind, fail_every=fail_every)
    client.execute_command("MEMORY", "PURGE")
    after = int(client.info("memory")["used_memory"])
    return (after - before) / n


def timed(fn: Any, rounds: int = 5) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="finished jobs to list among")
    parser.add_argument("--mem-jobs", type=int, default=20_000, help="jobs per memory figure")
    parser.add_argument("--url", default=None, help="a Redis to use (default: start one)")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        server = _redis_server()().start()
        url = server.url
    app = TaskPipe(broker=url, prefix=f"hb{uuid.uuid4().hex[:6]}:")
    try:
        print(
            f"redis {url.rsplit('@', 1)[-1]}  jobs {args.jobs}  mem-jobs {args.mem_jobs}  "
            f"(figures on a shared, loaded machine: compare them within one run)"
        )
        plain = per_job_memory(app, args.mem_jobs, "plain", 0)
        rec = per_job_memory(app, args.mem_jobs, "record", 0)
        failed = per_job_memory(app, args.mem_jobs, "record", 1)
        print(f"memory per finished job, no record: {plain:,.0f} B  [mem_finished_plain]")
        print(
            f"memory per finished job with its record: {rec:,.0f} B "
            f"(+{rec - plain:,.0f} B)  [mem_finished_record]"
        )
        print(f"memory per failed job with its record: {failed:,.0f} B  [mem_failed_record]")

        t0 = time.perf_counter()
        fill(app, "hist", args.jobs, "record", tasks=5, fail_every=10, needle_every=100)
        print(f"filled {args.jobs:,} finished jobs in {time.perf_counter() - t0:.1f} s")
        for name, label, fn in (
            ("list_newest", "newest 50", lambda: find_jobs(app, "hist", limit=50)),
            (
                "list_failed",
                "newest 50 failed",
                lambda: find_jobs(app, "hist", state="failed", limit=50),
            ),
            (
                "list_task",
                "50 of one task",
                lambda: find_jobs(app, "hist", task="bench.task3", limit=50),
            ),
            (
                "list_error",
                "error text (1 in 1000 jobs)",
                lambda: find_jobs(app, "hist", state="failed", error="needle", limit=50),
            ),
            ("breakdown", "per-task breakdown", lambda: task_breakdown(app, "hist")),
        ):
            ms, out = timed(fn)
            print(f"{label} among {args.jobs:,}: {ms:,.1f} ms ({len(out)} found)  [{name}]")
    finally:
        app.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
