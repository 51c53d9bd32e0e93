#!/usr/bin/env bash
# Set up the virtual environment and run `edgebed demo` (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --disable-pip-version-check -q -e .
exec .venv/bin/edgebed demo "$@"
