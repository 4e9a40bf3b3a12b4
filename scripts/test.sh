#!/usr/bin/env bash
# The test command (README): prepares .venv when needed, checks style, runs the whole suite.
#   scripts/test.sh                 everything
#   scripts/test.sh -m reliability  one group (markers are listed in pyproject.toml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh
.venv/bin/ruff check server tests bench scripts
# the servers under test start as the image's do (bytecode, internals verdict)
scripts/as-built.sh .venv/bin/python
exec .venv/bin/python -m pytest "$@"
