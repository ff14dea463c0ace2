"""Smoke test of ``benchmarks/flow.py``: it runs end to end and prints its figure (no speed is
checked: benchmarks measure, tests only see that they print)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_flow_benchmark_prints_its_ratio(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "flow.py"), "--jobs", "100", "--rounds", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rounds = re.findall(
        r"^round \d: plain +(\d+) jobs/s +flow +(\d+) jobs/s +flow/plain ([\d.]+) "
        r"+CPU ms/1000 jobs plain \d+ flow \d+ \([\d.]+x\)$",
        proc.stdout,
        re.MULTILINE,
    )
    assert len(rounds) == 2, proc.stdout
    assert all(float(p) > 0 and float(f) > 0 for p, f, _ in rounds)
    line = [ln for ln in proc.stdout.splitlines() if ln.endswith("[flow_drain_ratio]")]
    assert len(line) == 1 and re.search(r"median of 2: \d+\.\d{3}", line[0]), proc.stdout
    cpu = [ln for ln in proc.stdout.splitlines() if ln.endswith("[flow_cpu_ratio]")]
    assert len(cpu) == 1 and re.search(r"median of 2: \d+\.\d{3}", cpu[0]), proc.stdout
