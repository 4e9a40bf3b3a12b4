#!/usr/bin/env bash
# Rehearse an MLflow upgrade without touching the project's venv or locks:
#
#   scripts/try-mlflow.sh 3.18.0
#
# builds a throwaway venv from our locks with that MLflow (and its mlflow-skinny and
# mlflow-tracing twins at the same version), runs there the start-up check of what we borrow
# (server/borrowed/internals.py verify()), the internals contract test, the route-table test, the
# migration tests and the parity suite against stock `mlflow server` of that version, and writes
# one report: internals entries to re-read with their source diffs, new and removed routes with
# the level the table would give them, new migrations, changed requirements (and the lock pins
# they no longer allow), and every test that failed.
#
# Exit status: 0 nothing to re-read; 1 something to re-read (read the report); 3 the version
# cannot be installed from the package registry (said in one line, and in the report).
# Where: TRY_MLFLOW_DIR (default test-output/try-mlflow/VERSION) holds the report (report.md),
# the snapshots, the test log and the venv (removed at the end unless KEEP_VENV=1).
# Needs what the tests need (PostgreSQL binaries, the project's .venv for the pinned snapshot:
# scripts/setup-venv.sh); installs nothing outside its folder.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISTRIBUTIONS=(mlflow mlflow-skinny mlflow-tracing)
TESTS=(
	tests/test_internals.py
	"tests/test_roles_unit.py::test_every_route_mlflow_has_is_in_the_table_and_the_table_names_no_other"
	tests/test_migrations.py
	tests/test_parity.py
)

say() { echo "try-mlflow: $*" >&2; }

# lock_without_mlflow FILE: the lock's pins without hashes and without the MLflow distributions
lock_without_mlflow() {
	sed -e 's/[[:space:]]*\\$//' -e '/^[[:space:]]*--hash/d' -e '/^[[:space:]]*#/d' "$1" |
		grep -E '^[A-Za-z0-9_.-]+==' | grep -viE '^(mlflow|mlflow-skinny|mlflow-tracing)==' || true
}

# installable VERSION WHERE: whether the registry serves all three distributions at VERSION;
# on failure prints pip's reason in one line
installable() {
	local version=$1 where=$2 out
	if out=$(python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$where/wheels" \
		"${DISTRIBUTIONS[@]/%/==$version}" 2>&1); then
		return 0
	fi
	{ grep -m1 'No matching distribution' <<<"$out" || grep -m1 'ERROR' <<<"$out" || echo "pip download failed"; } |
		sed 's/^ERROR: //'

	return 1
}

# build_venv VERSION VENV: our locks, then the three distributions at VERSION in place of ours,
# then whatever they require that the locks lack (held to the locks' pins): the bump as we would
# make it, with no lock pin moved behind our back; pip check then names every requirement the
# new version puts on a lock pin
build_venv() {
	local version=$1 venv=$2 missing
	python3 -m venv "$venv"
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
	lock_without_mlflow "$ROOT/requirements.txt" >"$venv/lock.txt"
	lock_without_mlflow "$ROOT/requirements-dev.txt" >>"$venv/lock.txt"
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$venv/lock.txt"
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${DISTRIBUTIONS[@]/%/==$version}"
	missing=$("$venv/bin/python" -m pip check --disable-pip-version-check 2>/dev/null |
		sed -n 's/^.* requires \([^,]*\), which is not installed\.$/\1/p' | sort -u || true)
	if [ -n "$missing" ]; then
		# shellcheck disable=SC2086 # one requirement per word
		"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$venv/lock.txt" $missing
	fi
}

# run_checks VENV DIR: verify() and the tests, in the candidate venv; never fails the script
run_checks() {
	local venv=$1 dir=$2
	(cd "$ROOT" && PYTHONPATH="$ROOT" "$venv/bin/python" -c '
from server.borrowed import internals
problems = {e.name: e.problems() for e in internals.ENTRIES if e.problems()}
print("verify(): " + ("every entry fits" if not problems else "; ".join(f"{n}: {p}" for n, p in problems.items())))
') >"$dir/verify.txt" 2>/dev/null || echo "verify(): could not run (see test.log)" >"$dir/verify.txt"
	(cd "$ROOT" && PYTHONPATH="$ROOT" "$venv/bin/python" -m pytest -p no:cacheprovider -q \
		--junitxml="$dir/junit.xml" "${TESTS[@]}") >"$dir/test.log" 2>&1 || true
}

_main() {
	local version=${1:?usage: scripts/try-mlflow.sh VERSION}
	local dir=${TRY_MLFLOW_DIR:-$ROOT/test-output/try-mlflow/$version}
	rm -rf "$dir" && mkdir -p "$dir"
	local why
	if ! why=$(installable "$version" "$dir"); then
		echo "mlflow $version cannot be installed from the package registry: $why" | tee "$dir/report.md"
		return 3
	fi
	say "building a venv with mlflow $version (a few minutes)"
	local venv="$dir/venv"
	build_venv "$version" "$venv"
	"$venv/bin/python" -m pip freeze --disable-pip-version-check >"$dir/freeze.txt"
	"$ROOT/.venv/bin/python" -m pip check --disable-pip-version-check >"$dir/pip-check-pinned.txt" 2>&1 || true
	"$venv/bin/python" -m pip check --disable-pip-version-check >"$dir/pip-check.txt" 2>&1 || true
	say "snapshots of what we borrow, routes, migrations and requirements"
	(cd "$ROOT" && PYTHONPATH="$ROOT" .venv/bin/python scripts/rehearsal.py snapshot) >"$dir/pinned.json" 2>/dev/null
	(cd "$ROOT" && PYTHONPATH="$ROOT" "$venv/bin/python" scripts/rehearsal.py snapshot) >"$dir/candidate.json" 2>"$dir/snapshot.log"
	say "verify() and the tests (log: $dir/test.log)"
	run_checks "$venv" "$dir"
	local status=0
	"$ROOT/.venv/bin/python" "$ROOT/scripts/rehearsal.py" report "$dir/pinned.json" "$dir/candidate.json" \
		--junit "$dir/junit.xml" --freeze "$dir/freeze.txt" --lock "$ROOT/requirements.txt" \
		--lock "$ROOT/requirements-dev.txt" --pip-check "$dir/pip-check-pinned.txt" "$dir/pip-check.txt" \
		--out "$dir/report.md" || status=$?
	# verify()'s line goes under the title
	sed -i "2r $dir/verify.txt" "$dir/report.md"
	[ -n "${KEEP_VENV:-}" ] || rm -rf "$venv" "$dir/wheels"
	say "report: $dir/report.md ($([ "$status" = 0 ] && echo "nothing to re-read" || echo "something to re-read"))"
	return "$status"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	_main "$@"
fi
