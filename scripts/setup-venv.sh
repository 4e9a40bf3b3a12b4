#!/usr/bin/env bash
# Create or refresh .venv from the locks: the server's hashed runtime lock (installed exactly as
# the image installs it), then the pinned test and development tools on top.
# Idempotent: skipped when the locks have not changed since the last run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${VENV:-.venv}
stamp="$venv/.locks.sha256"
# RUNTIME_ONLY=1: the server's runtime lock only (what scripts/run-local.sh needs)
locks=(requirements.txt)
[ -n "${RUNTIME_ONLY:-}" ] || locks+=(requirements-dev.txt)
want=$(cat "${locks[@]}" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi
python=${PYTHON_FOR_VENV:-python3}
started=$SECONDS
count=$(cat "${locks[@]}" | grep -cE '^[A-Za-z0-9_.-]+==')
# the first run downloads and installs everything: say so, it is minutes of pip's silence
echo "setup-venv: installing ${count} pinned packages into ${venv} (first run or a lock changed; 1-4 minutes)..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements.txt
# --no-deps: the dev lock is complete, and must not replace the runtime lock's pins (gunicorn 27)
[ -n "${RUNTIME_ONLY:-}" ] || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-dev.txt
echo "$want" >"$stamp"
echo "setup-venv: ${venv} ready in $((SECONDS - started)) s" >&2
