"""Smoke test of ``benchmarks/run.py --smoke``: it runs end to end and prints every figure.

It starts its own redis-server on a free loopback port. Nothing here looks at how fast anything
was: only that each figure and each target verdict is printed, and that the JSON copy of the
figures holds a positive, finite number for each.
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
TARGETS = (
    "delay() >= 0.7x raw single round trips/s",
    "bulk >= 0.5x raw pipelined/s",
    "drain, 1 worker process >= 1.5x raw single round trips/s",
    "publish->start p99 <= 5 RTT",
    "memory per small queued job <= 400 bytes",
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_benchmark_prints_every_figure(tmp_path: Path) -> None:
    out_json = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    # the smallest run that still measures every figure (200 jobs, 10 latency samples, 1 round,
    # raw ceilings timed 0.02 s): this checks the script, not the speed
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--smoke",
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

    # where it ran: the machine line names the core count, Python, redis-server and redis-py
    for field in ("nproc: ", "cpu: ", "python: ", "redis-server: ", "redis-py: ", "date: "):
        assert field in out, field
    assert "127.0.0.1:" in out and "127.0.0.1:6379 " not in out

    # every figure has its own line, with a number and a unit or ratio
    for key in FIGURES:
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, out)
        assert re.search(r"\d[\d,]* (/s|us|B)\b", lines[0]), lines[0]
    for key in ("delay", "drain_1proc", "drain_2proc"):
        line = next(ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]"))
        assert re.search(r"\d+\.\d\dx single", line), line
    assert re.search(
        r"\d+\.\d\dx pipelined",
        next(ln for ln in out.splitlines() if ln.rstrip().endswith("[bulk]")),
    )
    for key in (
        "publish_start_p50",
        "publish_start_p99",
        "raw_wake_p50",
        "raw_wake_p99",
        "get_p50",
        "get_p99",
    ):
        line = next(ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]"))
        assert re.search(r"\d+\.\d RTT", line), line

    # worker and redis-server CPU per drained job, side by side
    assert re.search(r"worker CPU \(user\+sys\) per job: \d+ us with 1 process", out), out
    assert re.search(
        r"redis-server CPU \(user\+sys, INFO cpu\) per drained job: \d+\.\d us with 1 process, "
        r"\d+\.\d us with 2",
        out,
    ), out

    # one PASS/MISS verdict per target
    for target in TARGETS:
        verdicts = [
            ln
            for ln in out.splitlines()
            if re.match(rf"\s+(PASS|MISS)\s+{re.escape(target)}\s", ln)
        ]
        assert len(verdicts) == 1, (target, out)

    data = json.loads(out_json.read_text())
    for key in FIGURES:
        value = data["figures"][key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
        assert math.isfinite(data["ratios"][key]) and data["ratios"][key] > 0, key
    assert [t["target"] for t in data["targets"]] == list(TARGETS)
    assert all(isinstance(t["pass"], bool) for t in data["targets"])
    assert data["machine"]["nproc"] == str(os.cpu_count())
    for key in ("redis_cpu_us_per_job_1proc", "redis_cpu_us_per_job_2proc"):
        assert math.isfinite(data["extra"][key]) and data["extra"][key] >= 0, key
    # the memory breakdown covers the three keys a queued job lives in
    assert set(data["extra"]["mem_queued_by_key"]) == {"ids LIST", "items HASH", "published ZSET"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_server_cost_prints_the_servers_time_per_job_with_records_on_and_off(
    tmp_path: Path,
) -> None:
    """``benchmarks/server_cost.py`` (its own redis-server) prints, for records of successes on
    and off, the server's CPU, ``evalsha`` and nested command time per drained job."""
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "server_cost.py"), "--jobs", "200"]
        + ["--rounds", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for mode in ("on ", "off"):
        line = next(
            ln for ln in proc.stdout.splitlines() if ln.startswith(f"records of successes {mode}")
        )
        assert re.search(r"redis-server CPU \d+\.\d us/job, evalsha \d+\.\d us/job", line), line
    assert proc.stdout.count("nested commands, us/job: ") == 2, proc.stdout
