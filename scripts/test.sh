#!/usr/bin/env bash
# Install taskpipe with its test extra and run the whole suite (lint, types, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
python -m ruff check taskpipe tests examples benchmarks
python -m mypy
python -m pytest -q
