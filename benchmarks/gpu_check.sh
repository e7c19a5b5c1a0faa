#!/usr/bin/env bash
# The GPU check: benchmarks/gpu_check.py on this checkout, with the project's own set-up and nothing
# else installed.
#   benchmarks/gpu_check.sh             on a CUDA machine: writes results/gpu.md (within 8 minutes on an H100)
#   benchmarks/gpu_check.sh --dry-run   the same steps, small, on the CPU (CI)
# PY=<python> runs it with another interpreter than .venv's (which `make setup` creates when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then make setup; fi
# this checkout's lib/ and benchmarks/, whichever checkout the environment was installed from
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu_check "$@"
