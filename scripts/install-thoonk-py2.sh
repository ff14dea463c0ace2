#!/usr/bin/env bash
# Install the ORIGINAL thoonk.py 1.0.1 client (Python 2.7 only, with redis-py 2.4, whose PubSub its listener needs) into
# .thoonk-py2/, for tests/test_thoonk_original_client.py (skipped when this is missing).
# Needs a Python 2.7 interpreter: $TASKPIPE_PYTHON2, python2.7 on PATH, or pyenv's 2.7.x.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${TASKPIPE_PYTHON2:-}"
if [ -z "$py" ]; then
  for c in python2.7 "$HOME"/.pyenv/versions/2.7*/bin/python2.7; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then py="$c"; break; fi
  done
fi
if [ -z "$py" ]; then
  echo "no Python 2.7 found: the original-thoonk.py interop tests will be skipped" >&2
  exit 0
fi
if PYTHONPATH=.thoonk-py2 "$py" -c 'import thoonk, redis' >/dev/null 2>&1; then exit 0; fi
target="$(pwd)/.thoonk-py2"
# from / so that pip's dependency check does not see this checkout's own egg-info
(cd / && "$py" -m pip install -q --disable-pip-version-check \
  --target "$target" "thoonk==1.0.1.0" "redis==2.4.13")
