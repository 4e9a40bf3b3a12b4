#!/usr/bin/env bash
# Create the secret files of the local docker compose stack, with random passwords.
#   scripts/init-local-secrets.sh [DIR]      (default ./secrets, git-ignored)
# Existing files are kept, so running it again changes nothing. Passwords are never printed:
# the MLflow login is written to DIR/login.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=${1:-${MLFLOW_SECRETS_DIR:-./secrets}}

random() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c "${1:-24}"; }

# write NAME VALUE: only when missing; 0644 inside a 0700 folder, because compose bind-mounts
# the file with its host mode and the server runs as UID 10001, not as the file's owner.
write() {
	local path="$dir/$1"
	[ -s "$path" ] && return 0
	printf '%s\n' "$2" >"$path"
	chmod 0644 "$path"
	created+=("$1")
}

main() {
	mkdir -p "$dir"
	chmod 0700 "$dir"
	created=()
	write postgres_password "$(random 32)"
	local pg_password
	pg_password=$(cat "$dir/postgres_password")
	write mlflow_backend_store_uri "postgresql://mlflow:${pg_password}@postgres:5432/mlflow"
	write aws_access_key_id "mlflow-$(random 8)"
	write aws_secret_access_key "$(random 40)"
	if [ ! -s "$dir/mlflow_auth_users" ]; then
		local password
		password=$(random 24)
		write mlflow_auth_users "admin:${password}"
		(umask 077; printf 'URL:      http://localhost:5000\nuser:     admin\npassword: %s\n' "$password" >"$dir/login.txt")
	fi
	if [ ${#created[@]} -gt 0 ]; then
		echo "init-local-secrets: created ${created[*]} in $dir" >&2
	else
		echo "init-local-secrets: all secrets already exist in $dir" >&2
	fi
	echo "init-local-secrets: your MLflow login is in $dir/login.txt" >&2
}

main "$@"
