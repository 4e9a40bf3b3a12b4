#!/usr/bin/env bash
# Container entrypoint: run the MLflow tracking server under gunicorn.
#
#   entry-point.sh [--local] [--check] [extra gunicorn options...]
#
#   --local   SQLite and a local artifact folder (MLFLOW_LOCAL_DIR, default ./mlflow-local),
#             for a laptop without Postgres; same as MLFLOW_LOCAL_MODE=true.
#   --check   validate the configuration, print the problems, exit (0 = OK, 2 = problems).
#
# All configuration is read by server/config/ (variables, NAME_FILE files, /run/secrets,
# sm:// Secret Manager references); this script only prepares the process and execs gunicorn,
# so gunicorn is PID 1 and receives SIGTERM directly.
# The functions below can be sourced by tests: `source entry-point.sh` runs nothing.
set -Eeuo pipefail

APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# True when this file is sourced rather than executed.
_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] &&
		[ "${FUNCNAME[0]}" = '_is_sourced' ] &&
		[ "${FUNCNAME[1]}" = 'source' ]
}

# Settings that must hold before Python starts: no telemetry, our package importable,
# nothing written next to the code (read-only root filesystem).
server_env() {
	export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
	export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
	export PYTHONPATH="${APP_DIR}${PYTHONPATH:+:${PYTHONPATH}}"
	# google-auth must never probe a metadata server when it is pointed at an emulator
	if [ -n "${STORAGE_EMULATOR_HOST:-}" ]; then export NO_GCE_CHECK=true; fi
}

_main() {
	local check=
	while [ $# -gt 0 ]; do
		case "$1" in
		--local) export MLFLOW_LOCAL_MODE=true; shift ;;
		--check) check=1; shift ;;
		*) break ;;
		esac
	done
	server_env
	local python=${PYTHON:-python3}
	if [ -n "$check" ]; then
		exec "$python" -m server.config
	fi
	exec "$python" -m gunicorn --config "$APP_DIR/server/gunicorn.conf.py" "$@"
}

if ! _is_sourced; then
	_main "$@"
fi
