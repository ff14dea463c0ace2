"""Smoke test of ``benchmarks/history.py``: it runs end to end (its own redis-server) and prints
every figure with a number. Nothing here looks at the values."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "mem_finished_plain",
    "mem_finished_record",
    "mem_failed_record",
    "list_newest",
    "list_failed",
    "list_task",
    "list_error",
    "breakdown",
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_history_benchmark_prints_every_figure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "history.py"),
            # two fill batches (1000 + 1 jobs) and two error-text needles; the figures' values
            # are not looked at, so the memory ones need no more than a few jobs
            "--jobs",
            "1001",
            "--mem-jobs",
            "100",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for key in FIGURES:
        lines = [ln for ln in proc.stdout.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, proc.stdout)
        assert re.search(r"\d[\d,]*(\.\d+)? (B|ms)\b", lines[0]), lines[0]
