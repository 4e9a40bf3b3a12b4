#!/usr/bin/env bash
# What the image build does to our server beyond installing the lock, done for a venv of this
# checkout, so servers started from it start as the image's do: our package compiled to
# bytecode (they run with PYTHONDONTWRITEBYTECODE) and the internals verdict
# (server/borrowed/verdict.py). Used by scripts/test.sh and the benchmarks.
#   scripts/as-built.sh VENV_PYTHON
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=$1
"$python" -m compileall -q server >/dev/null
PYTHONPATH=. MLFLOW_DISABLE_TELEMETRY=true "$python" -W ignore -m server.borrowed.verdict >/dev/null
