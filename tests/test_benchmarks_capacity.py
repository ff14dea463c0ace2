"""Smoke test of ``benchmarks/capacity.py``: it runs end to end (small N) and prints every figure.

It starts its own redis-server on a free loopback port. Nothing here looks at how fast anything
was: only that every per-job figure, the per-shard-count Redis CPU (1, 3 and 6 shards, in one
run) and every row of the planning table are printed, and that the JSON copy holds a positive,
finite number for each.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIGURES = (
    "redis_cpu_publish",
    "redis_cpu_bulk_publish",
    "redis_cpu_claim",
    "redis_cpu_finish",
    "redis_cpu_worker",
    "mem_queued",
    "mem_finished",
    "net_publish",
    "net_claim",
    "net_finish",
    "net_worker",
    "worker_cpu",
    "worker_rate",
    "redis_cpu_1_shards",
    "redis_cpu_3_shards",
    "redis_cpu_6_shards",
    "redis_cpu_per_job",
    "jobs_per_primary",
    "jobs_per_worker",
    "plan_1000",
    "plan_10000",
    "plan_100000",
    "plan_1000000",
)


@pytest.mark.timeout(240)
def test_capacity_benchmark_prints_every_figure(tmp_path: Path) -> None:
    out_json = tmp_path / "capacity.json"
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "capacity.py"),
            "--jobs",
            "100",
            "--rounds",
            "1",
            "--json",
            str(out_json),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "127.0.0.1:" in out and "127.0.0.1:6379/" not in out  # its own server
    for key in FIGURES:
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, out)
        assert re.search(r"\d[\d,]*(\.\d+)? ?(us|B|/s|MB/s)\b", lines[0]), lines[0]
    for shards in (1, 3, 6):  # the per-shard Redis CPU, compared within the run
        line = next(
            ln for ln in out.splitlines() if ln.rstrip().endswith(f"[redis_cpu_{shards}_shards]")
        )
        assert re.search(r"\d+\.\d\dx 1 shard", line), line
    assert "assumptions" in out
    data = json.loads(out_json.read_text())
    for key, value in data["figures"].items():
        assert math.isfinite(value) and value > 0, (key, value)
    assert [row["rate"] for row in data["plan"]["rows"]] == [1_000, 10_000, 100_000, 1_000_000]
    for row in data["plan"]["rows"]:
        assert row["primaries"] >= 1 and row["workers"] >= 1
    # more jobs/s never needs fewer primaries or workers
    assert [r["primaries"] for r in data["plan"]["rows"]] == sorted(
        r["primaries"] for r in data["plan"]["rows"]
    )
