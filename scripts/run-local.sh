#!/usr/bin/env bash
# Run the server on this machine without Docker or Postgres: SQLite and a local artifact
# folder under ./mlflow-local, on http://127.0.0.1:5000, behind the same login as production.
#   scripts/run-local.sh
# First run: makes .venv-server from the hashed lock, and a user "admin" with a random
# password whose login is written to .local/login.txt (never printed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv-server RUNTIME_ONLY=1 scripts/setup-venv.sh

if [ -z "${MLFLOW_AUTH_USERS:-}${MLFLOW_AUTH_USERS_FILE:-}${WSGI_AUTH_CREDENTIALS:-}" ]; then
	export MLFLOW_AUTH_USERS_FILE=.local/users
	if [ ! -s .local/users ]; then
		(umask 077; mkdir -p .local
		 password=$(.venv-server/bin/python -c 'import secrets; print(secrets.token_urlsafe(18))')
		 printf 'admin:%s\n' "$password" >.local/users
		 printf 'URL:      http://127.0.0.1:%s\nuser:     admin\npassword: %s\n' "${PORT:-5000}" "$password" >.local/login.txt)
		echo "run-local: created user 'admin'; the login is in .local/login.txt" >&2
	fi
fi
export PORT=${PORT:-5000} MLFLOW_HOST=${MLFLOW_HOST:-127.0.0.1} PYTHON=.venv-server/bin/python
exec ./entry-point.sh --local "$@"
