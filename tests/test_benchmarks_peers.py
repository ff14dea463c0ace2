"""Smoke test of ``benchmarks/peers.py``: it runs end to end and prints every figure and ratio.

It installs huey and dramatiq (pinned) into the peers' own venv, once (cached under the user's
cache directory), and starts its own redis-server on a free loopback port. Where the peers
cannot be installed (no package index), the test is skipped, saying so. Nothing here looks at
how fast anything was: only that each worker's rate and CPU figure and each ratio is printed,
and that the JSON copy holds a positive, finite number for each.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402  (benchmarks/peers.py)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_peer_benchmark_prints_every_figure(tmp_path: Path) -> None:
    out_json = tmp_path / "peers.json"
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "peers.py"),
            "--jobs",
            "400",
            "--rounds",
            "2",
            "--json",
            str(out_json),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    if proc.returncode == 3 and "cannot install the peers" in proc.stderr:
        pytest.skip(proc.stderr.strip()[-300:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "127.0.0.1:" in out and "127.0.0.1:6379 " not in out
    for name, version in (
        ("huey", peers.PEERS["huey"]),
        ("dramatiq", peers.PEERS["dramatiq[redis]"]),
    ):
        assert f"{name} {version}" in out, name

    # every worker: one line per round, and one median line with its rate and CPU per job
    for key, label, _system, _argv in peers.WORKERS:
        assert (
            len([ln for ln in out.splitlines() if ln.startswith("  round ") and label in ln]) == 2
        )
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, out)
        assert re.search(r"\d[\d,]* /s \(\d[\d,]*-\d[\d,]*\)", lines[0]), lines[0]
        assert re.search(r"worker CPU \d+ us/job", lines[0]), lines[0]
    # every ratio, with its verdict and target
    for key, _label, _num, _den, target in peers.RATIOS:
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, out)
        assert re.match(r"\s+(PASS|MISS)\s", lines[0]), lines[0]
        assert re.search(r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)", lines[0]), lines[0]
        assert f"(>= {target:g}x)" in lines[0]

    data = json.loads(out_json.read_text())
    for key, *_ in peers.WORKERS:
        assert len(data["rates"][key]) == 2 and len(data["cpu_us_per_job"][key]) == 2
        assert all(math.isfinite(v) and v > 0 for v in data["rates"][key]), key
    for key, *_ in peers.RATIOS:
        assert all(math.isfinite(v) and v > 0 for v in data["ratios"][key]), key
    assert [v["ratio"] for v in data["verdicts"]] == [key for key, *_ in peers.RATIOS]
    assert data["peers"] == peers.PEERS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_only_taskpipe_runs_its_three_workers_without_the_peers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--only", "taskpipe"]
        + ["--jobs", "300", "--rounds", "1", "--venv", str(tmp_path / "never-made")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert not (tmp_path / "never-made").exists()  # no peers' venv made
    for key, label, system, _argv in peers.WORKERS:
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        if system != "taskpipe":
            assert lines == [] and label not in out, key
            continue
        assert len(lines) == 1, (key, out)
        assert re.search(r"\d[\d,]* /s \(\d[\d,]*-\d[\d,]*\)", lines[0]), lines[0]
    assert "ratios" not in out and "PASS" not in out and "MISS" not in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drain_ab_prints_each_variant(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "drain_ab.py"), "--jobs", "300"]
        + ["--rounds", "2", "--variant", "c2:-c 2"]
        + ["--variant", "c2-t1:-c 2:taskpipe.worker.worker.TRIVIAL_THREADS=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    for label in ("c2", "c2-t1"):
        assert len([ln for ln in out if re.match(rf"\s+round \d: {label}\s", ln)]) == 2, label
        (median,) = [ln for ln in out if re.match(rf"\s+{label}\s", ln)]
        assert re.search(r"\d[\d,]* /s \(\d[\d,]*-\d[\d,]*\)", median), median
        assert re.search(r"worker CPU \d+\.\d us/job", median), median
