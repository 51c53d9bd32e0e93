#!/usr/bin/env bash
# Set up the virtual environments and run edgebed's test suite (the README's test command).
#   .venv        runtime + test extra (no TensorFlow): lint, unit and live tests
#   .venv-train  + train extra (TensorFlow): the training-pipeline smoke test
# Extra arguments go to the main pytest run. EDGEBED_SKIP_TRAIN=1 skips the TensorFlow step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pipq() { "$1"/bin/pip install --disable-pip-version-check -q "${@:2}"; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pipq .venv -e '.[test]'

echo "== ruff, mypy"
.venv/bin/ruff check .
.venv/bin/mypy common models services netem orchestrator

if [ "${EDGEBED_SKIP_TRAIN:-0}" != 1 ]; then
  echo "== training smoke test (train extra, TensorFlow)"
  [ -x .venv-train/bin/python ] || "$PY" -m venv .venv-train
  pipq .venv-train -e '.[train,test]'
  .venv-train/bin/pytest -m train tests/models -p no:cacheprovider
fi

echo "== test suite"
.venv/bin/pytest -m "not train" "$@"
