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
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import drain_ab  # noqa: E402  (benchmarks/drain_ab.py)
import peers  # noqa: E402  (benchmarks/peers.py)
from redis_server import RedisServer  # noqa: E402  (tests/redis_server.py)


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
            len([ln for ln in out.splitlines() if ln.startswith("  round ") and label in ln]) == 1
        )
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, out)
        assert re.search(r"\d[\d,]* /s \(\d[\d,]*-\d[\d,]*\)", lines[0]), lines[0]
        assert re.search(r"worker CPU \d[\d,]* us/job", lines[0]), lines[0]  # 1,125 us
    # every ratio, with its verdict and target
    for key, _label, _num, _den, target in peers.RATIOS:
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert len(lines) == 1, (key, out)
        assert re.match(r"\s+(PASS|MISS)\s", lines[0]), lines[0]
        assert re.search(r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)", lines[0]), lines[0]
        assert f"(>= {target:g}x)" in lines[0]

    data = json.loads(out_json.read_text())
    for key, *_ in peers.WORKERS:
        assert len(data["rates"][key]) == 1 and len(data["cpu_us_per_job"][key]) == 1
        assert all(math.isfinite(v) and v > 0 for v in data["rates"][key]), key
    for key, *_ in peers.RATIOS:
        assert all(math.isfinite(v) and v > 0 for v in data["ratios"][key]), key
    assert [v["ratio"] for v in data["verdicts"]] == [key for key, *_ in peers.RATIOS]
    assert data["peers"] == peers.PEERS


class FakeMeasure:
    """Stands in for ``PeerBench.measure``: the rates of the workers' runs, in order (run ``i``
    gives ``rates[i]`` jobs/s and ``i + 1`` us of CPU per job). It checks each command it is
    given is that worker's, as the real ``measure`` would run it."""

    def __init__(self, rates: list[float]) -> None:
        self.rates = rates
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(
        self, bench: peers.PeerBench, system: str, argv: list[str], timeout: float
    ) -> tuple[float, float]:
        assert timeout > 0 and bench.jobs > 0
        self.calls.append((system, argv))
        return self.rates[len(self.calls) - 1], float(len(self.calls))


def run_in_process(
    args: list[str], fake: FakeMeasure, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> str:
    """``peers.main(args)`` in this process (its own redis-server), with ``fake`` measuring."""
    monkeypatch.setenv("BENCH_URL", "unset")  # PeerBench sets it; restored after the test

    def measure(
        self: peers.PeerBench, system: str, argv: list[str], timeout: float
    ) -> tuple[float, float]:
        return fake(self, system, argv, timeout)

    monkeypatch.setattr(peers.PeerBench, "measure", measure)
    assert peers.main(args) == 0
    out: str = capsys.readouterr().out
    return out


def test_only_taskpipe_runs_its_three_workers_without_the_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``--only taskpipe``: its three workers, each round, and no peers' venv, peer or ratio.
    The workers' real runs are the full benchmark's (above); here their figures are given, so
    that each round's, each median and each min-max can be checked to the digit."""
    taskpipe = [w for w in peers.WORKERS if w[2] == "taskpipe"]
    fake = FakeMeasure([1000.0, 2000.0, 3000.0, 1200.0, 2600.0, 2900.0])  # two rounds
    out = run_in_process(
        ["--only", "taskpipe", "--jobs", "300", "--rounds", "2"]
        + ["--venv", str(tmp_path / "never-made"), "--json", str(tmp_path / "tp.json")],
        fake,
        monkeypatch,
        capsys,
    )
    assert not (tmp_path / "never-made").exists()  # no peers' venv made
    assert fake.calls == [("taskpipe", argv) for *_, argv in taskpipe] * 2
    for key, label, system, _argv in peers.WORKERS:
        lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        if system != "taskpipe":
            assert lines == [] and label not in out, key
    rounds = [ln for ln in out.splitlines() if ln.startswith("  round ")]
    assert [ln.split(":")[0].strip() for ln in rounds] == ["round 1"] * 3 + ["round 2"] * 3
    expected = {  # median (min-max) of the two rounds; CPU us/job is the run's number
        "taskpipe_thread_c8": ("1,100 /s (1,000-1,200)", "2 us/job (1-4)"),
        "taskpipe_process_c2": ("2,300 /s (2,000-2,600)", "4 us/job (2-5)"),
        "taskpipe_thread_c1": ("2,950 /s (2,900-3,000)", "4 us/job (3-6)"),
    }
    for key, (rate, cpu) in expected.items():
        (line,) = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert rate in line and f"worker CPU {cpu}" in line, line
    assert "ratios" not in out and "PASS" not in out and "MISS" not in out
    data = json.loads((tmp_path / "tp.json").read_text())
    assert data["rates"]["taskpipe_thread_c8"] == [1000.0, 1200.0]
    assert data["ratios"] == {} and data["verdicts"] == []


def test_each_ratio_is_taken_within_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The full benchmark's rounds and ratios, with the figures given (the real run above has one
    round): each ratio is taskpipe's rate over the peer's in the same round ("best": the
    fastest peer of that round), and its median, min-max and verdict are printed."""
    monkeypatch.setattr(peers, "ensure_venv", lambda path, out: tmp_path / "bin")
    monkeypatch.setattr(peers.PeerBench, "peer_versions", lambda self: ["9.9", "8.8"])
    # per round: thread c8, process c2, thread c1, huey 2 proc, huey 1 thread, dramatiq
    fake = FakeMeasure(
        [6000.0, 3000.0, 2000.0, 1000.0, 500.0, 1200.0]
        + [5000.0, 2000.0, 3000.0, 1000.0, 1000.0, 800.0]
    )
    out_json = tmp_path / "peers.json"
    out = run_in_process(
        ["--jobs", "300", "--rounds", "2", "--json", str(out_json)], fake, monkeypatch, capsys
    )
    assert "huey 9.9  dramatiq 8.8" in out
    assert [s for s, _ in fake.calls] == [system for _k, _l, system, _a in peers.WORKERS] * 2
    expected = {  # round 1, round 2 -> median (min-max), verdict against the target
        "thread_vs_best_peer": ("PASS", "5.00x (5.00-5.00)"),  # 6000/1200, 5000/1000 (>= 5)
        "process_vs_huey_2proc": ("MISS", "2.50x (2.00-3.00)"),  # 3000/1000, 2000/1000 (>= 3)
        "c1_vs_huey_1thread": ("PASS", "3.50x (3.00-4.00)"),  # 2000/500, 3000/1000 (>= 2)
    }
    for key, (verdict, figure) in expected.items():
        (line,) = [ln for ln in out.splitlines() if ln.rstrip().endswith(f"[{key}]")]
        assert line.split()[0] == verdict and figure in line, line
    data = json.loads(out_json.read_text())
    assert data["ratios"]["process_vs_huey_2proc"] == [3.0, 2.0]
    assert [v["pass"] for v in data["verdicts"]] == [True, False, True]


DRAIN_AB_VARIANTS = ["c2:-c 2", "c2-t1:-c 2:taskpipe.worker.worker.TRIVIAL_THREADS=1"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drain_ab_prints_each_variant(tmp_path: Path) -> None:
    """Each variant's real worker (the second with a module constant overridden) drains and is
    measured; the rounds' bookkeeping is checked below, with the figures given."""
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "drain_ab.py"), "--jobs", "100"]
        + ["--rounds", "1"]
        + [arg for variant in DRAIN_AB_VARIANTS for arg in ("--variant", variant)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    for label in ("c2", "c2-t1"):
        assert len([ln for ln in out if re.match(rf"\s+round \d: {label}\s", ln)]) == 1, label
        (median,) = [ln for ln in out if re.match(rf"\s+{label}\s", ln)]
        assert re.search(r"\d[\d,]* /s \(\d[\d,]*-\d[\d,]*\)", median), median
        assert re.search(r"worker CPU \d[\d,]*\.\d us/job", median), median


def test_drain_ab_alternates_the_variants_round_by_round(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``drain_ab.py``'s rounds: each variant once per round, in turn, with its own command; the
    medians (min-max) of its rounds, and its rate relative to the first variant's."""
    fake = FakeMeasure([1000.0, 1500.0, 3000.0, 3500.0])  # c2, c2-t1, c2, c2-t1
    monkeypatch.setenv("BENCH_URL", "unset")  # PeerBench sets it; restored after the test
    monkeypatch.setattr(
        peers.PeerBench,
        "measure",
        lambda self, system, argv, timeout: fake(self, system, argv, timeout),
    )
    args = ["--jobs", "300", "--rounds", "2"]
    assert drain_ab.main(args + [a for v in DRAIN_AB_VARIANTS for a in ("--variant", v)]) == 0
    out = capsys.readouterr().out.splitlines()
    variants = [drain_ab.parse_variant(v) for v in DRAIN_AB_VARIANTS]
    assert fake.calls == [("taskpipe", argv) for _label, argv in variants] * 2
    assert variants[1][1][2] == "taskpipe.worker.worker.TRIVIAL_THREADS=1"  # the prelude's
    rounds = [ln.split()[:3] for ln in out if ln.startswith("  round ")]
    assert rounds == [["round", "1:", "c2"], ["round", "1:", "c2-t1"]] + [
        ["round", "2:", "c2"],
        ["round", "2:", "c2-t1"],
    ]
    (c2,) = [ln for ln in out if re.match(r"\s+c2\s", ln)]
    (t1,) = [ln for ln in out if re.match(r"\s+c2-t1\s", ln)]
    assert "2,000 /s (1,000-3,000)" in c2 and "worker CPU 2.0 us/job (1.0-3.0)" in c2, c2
    assert c2.endswith("(1.00x)"), c2
    assert "2,500 /s (1,500-3,500)" in t1 and "worker CPU 3.0 us/job (2.0-4.0)" in t1, t1
    assert t1.endswith("(1.25x)"), t1


def test_a_window_that_one_poll_spans_still_gives_a_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: when the poll that first sees 10 % of the jobs finished already sees 90 % (few
    jobs, or the benchmark's process held off the CPU by a busy machine), ``measure`` divided by
    the zero jobs of its empty window (ZeroDivisionError). The window then opens at the poll
    before. Here the finished count jumps from none to all between two polls; the worker is a
    real process (an idle interpreter) that the benchmark starts and stops."""
    monkeypatch.setenv("BENCH_URL", "unset")  # PeerBench sets it; restored after the test
    server = RedisServer().start()
    try:
        bench = peers.PeerBench(server.port, Path(sys.executable).parent, tmp_path, 100)
        counts = iter([0, 100])
        monkeypatch.setattr(bench, "finished", lambda system: next(counts, 100))
        rate, cpu = bench.measure("taskpipe", ["-c", "import time; time.sleep(60)"], timeout=60)
        bench.close()
    finally:
        server.cleanup()
    assert math.isfinite(rate) and rate > 0, rate
    assert math.isfinite(cpu) and cpu >= 0, cpu
