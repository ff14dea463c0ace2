"""A/B of taskpipe CLI workers on one Redis, in alternating rounds (``peers.py``'s measurement).

    python benchmarks/drain_ab.py                       # -c 8 against -c 1, 10000 jobs, 4 rounds
    python benchmarks/drain_ab.py --jobs 20000 --rounds 6 \\
        --variant 'c8:-c 8' --variant 'c8-t4:-c 8:taskpipe.worker.worker.TRIVIAL_THREADS=4'

Each ``--variant`` is ``LABEL:WORKER ARGS[:MODULE.NAME=VALUE,...]``: the arguments after
``taskpipe worker -A tp_app:app -Q bench -l warning``, and module constants set (``VALUE`` a Python
literal) before the CLI runs, in the worker process only. Every round runs each variant once, in
turn (so the machine's drift falls on all of them alike); each figure is the steady drain rate
between 10 % and 90 % of the jobs and the worker's CPU per job over the same span, as
``peers.py`` takes them (``PeerBench.measure``). Prints the medians of the rounds (min-max).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import PeerBench, _fmt, _load_redis_server  # noqa: E402

_PRELUDE = """
import ast, importlib, sys
for item in sys.argv[1].split(","):
    if item:
        name, value = item.split("=", 1)
        module, attr = name.rsplit(".", 1)
        mod = importlib.import_module(module)
        if not hasattr(mod, attr):
            raise SystemExit(f"drain_ab: {module} has no {attr} to override")
        setattr(mod, attr, ast.literal_eval(value))
from taskpipe.cli import main
sys.exit(main(sys.argv[2:]))
"""
_BASE = ["worker", "-A", "tp_app:app", "-Q", "bench", "-l", "warning"]
DEFAULT_VARIANTS = ("c8:-c 8", "c1:-c 1")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``LABEL:ARGS[:OVERRIDES]`` -> (label, argv after the interpreter)."""
    label, _, rest = text.partition(":")
    args, _, overrides = rest.partition(":")
    if not label:
        raise argparse.ArgumentTypeError(f"bad variant {text!r} (LABEL:ARGS[:OVERRIDES])")
    return label, ["-c", _PRELUDE, overrides, *_BASE, *args.split()]


def main(argv: list[str] | None = None) -> int:
    """Start redis-server, run the variants in alternating rounds, print the medians."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10000, help="jobs per variant and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    parser.add_argument(
        "--variant", action="append", default=None, help="LABEL:ARGS[:MODULE.NAME=VALUE,...]"
    )
    opts = parser.parse_args(argv)
    if opts.jobs < 100 or opts.rounds < 1:
        parser.error("--jobs must be >= 100 and --rounds >= 1")
    variants = [parse_variant(v) for v in (opts.variant or DEFAULT_VARIANTS)]
    rates: dict[str, list[float]] = {label: [] for label, _ in variants}
    cpus: dict[str, list[float]] = {label: [] for label, _ in variants}
    server = _load_redis_server()().start()
    print(f"loadavg before {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="taskpipe-ab-") as tmp:
            bench = PeerBench(server.port, Path(sys.executable).parent, Path(tmp), opts.jobs)
            for rnd in range(opts.rounds):
                for label, args in variants:
                    rate, cpu = bench.measure("taskpipe", args, timeout=max(120.0, opts.jobs / 50))
                    rates[label].append(rate)
                    cpus[label].append(cpu)
                    print(
                        f"  round {rnd + 1}: {label:<16} {rate:>9,.0f} /s  {cpu:>6.1f} us CPU/job",
                        flush=True,
                    )
            bench.close()
    finally:
        server.cleanup()
    print(
        f"\nmedians of {opts.rounds} rounds (min-max), {time.time() - started:.0f} s, loadavg "
        f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for label, _ in variants:
        med = statistics.median(rates[label])
        print(
            f"  {label:<16} {_fmt(rates[label], ' /s'):>28}  worker CPU "
            f"{_fmt(cpus[label], ' us/job', '.1f')}  ({med / statistics.median(rates[variants[0][0]]):.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
