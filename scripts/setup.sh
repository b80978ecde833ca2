#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project with its
# test extras. Needs only python3 (>= 3.10) on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# Byte-compile the package now: with PYTHONDONTWRITEBYTECODE set (as on CI machines) Python would
# otherwise recompile every module on each start, a tenth of a second of every conversion.
.venv/bin/python -m compileall -q dorobot_assets
