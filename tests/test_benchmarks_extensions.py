"""Smoke test of ``benchmarks/extensions.py``: it runs end to end and prints a figure per mode
(how fast is never looked at)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_extensions_benchmark_prints_every_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "extensions.py"),
            "--jobs",
            "200",
            "--rounds",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for mode in ("plain", "followed_elsewhere", "followed_here", "middleware"):
        lines = [ln for ln in proc.stdout.splitlines() if ln.rstrip().endswith(f"[{mode}]")]
        assert len(lines) == 1, proc.stdout
        assert re.search(r"\d[\d,]* /s\s+\d+\.\d\dx plain", lines[0]), lines[0]
