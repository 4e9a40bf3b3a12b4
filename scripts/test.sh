#!/usr/bin/env bash
# The test command (README): prepares .venv when needed, checks style, runs the whole suite.
#   scripts/test.sh                 everything
#   scripts/test.sh -m reliability  one group (markers are listed in pyproject.toml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
.venv/bin/ruff check server tests bench scripts
# our package's bytecode, as the image compiles it (servers run with PYTHONDONTWRITEBYTECODE)
.venv/bin/python -m compileall -q server >/dev/null
# the internals verdict the image build makes (server/borrowed/verdict.py): the servers under
# test start from it, as the image's do
PYTHONPATH=. MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python -W ignore -m server.borrowed.verdict >/dev/null
exec .venv/bin/python -m pytest "$@"
