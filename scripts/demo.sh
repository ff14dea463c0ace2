#!/usr/bin/env bash
# Set up a virtualenv, install taskpipe, and run the quickstart demo on the embedded memory:// broker.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
python examples/quickstart.py
