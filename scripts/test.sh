#!/usr/bin/env bash
# Install everything taskpipe's tests need, then run lint, type checks and the whole test suite.
# Uses the active virtualenv, or makes .venv. The tests start their own redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || need="$need chromium chromium-driver"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need
  else
    echo "missing system packages:$need (install them with apt-get)" >&2
  fi
fi
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
bash scripts/install-thoonk-py2.sh || echo "original thoonk.py not installed: its interop tests skip" >&2
python -m ruff check taskpipe tests examples benchmarks
python -m ruff format --check taskpipe tests examples benchmarks
python -m mypy
# The suite starts hundreds of Python processes (workers, schedulers, examples): with
# PYTHONDONTWRITEBYTECODE set, each one compiles taskpipe from source again, and every xdist
# worker rewrites every test module again. Let them write __pycache__ (git ignores it).
unset PYTHONDONTWRITEBYTECODE
# compile once, on both cores, before six xdist workers (and their worker processes) would each
# compile the same modules at the same moment in a fresh checkout
python -m compileall -q -j 0 taskpipe tests examples benchmarks >/dev/null
# in parallel: pytest-xdist, each xdist worker with its own redis-server (docs/development.md).
# The suite mostly waits (subprocesses, leases, signals): 6 workers beat 4 and 2 on 2 cores
# (8 loaded the machine enough to break timing-bound guarantees; docs/development.md).
python -m pytest -q -n "${TASKPIPE_TEST_WORKERS:-6}" --dist worksteal
