#!/usr/bin/env bash
# Re-create the pinned, hashed dependency locks from requirements.in and requirements-dev.in.
#   scripts/lock.sh            (needs pip-tools: .venv/bin/pip install pip-tools)
# requirements.txt gets mlflow itself appended with --no-deps semantics: it is installed with
# `pip install --no-deps --require-hashes`, so its heavy optional dependencies never land.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp_header=$(mktemp)
python=${PYTHON:-.venv/bin/python}
mlflow_version=3.17.2

compile() {
	# ignore machine-local pip configuration (extra indexes, wheel folders): lock from PyPI only
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$python" -m piptools compile --quiet --resolver=backtracking \
		--no-emit-find-links \
		--strip-extras --allow-unsafe "$@"
}

compile --generate-hashes --output-file requirements.txt requirements.in
# what people type first is `pip install -r requirements.txt`: say at the top how this lock installs
{
	printf '# Install with:  pip install --no-deps --require-hashes -r requirements.txt\n'
	printf '# (scripts/setup-venv.sh does). A plain "pip install -r requirements.txt" fails on purpose:\n'
	printf "# mlflow's own dependency list (pyarrow, scipy, scikit-learn, gunicorn<27 ...) is left out.\n"
	cat requirements.txt
} >"$tmp_header"
mv "$tmp_header" requirements.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PIP_CONFIG_FILE=/dev/null "$python" -m pip download --quiet --no-deps --only-binary=:all: \
	-d "$tmp" "mlflow==${mlflow_version}"
{
	printf '# mlflow itself (server code and UI), installed without its data-science dependencies\n'
	printf 'mlflow==%s \\\n' "$mlflow_version"
	for whl in "$tmp"/*.whl; do
		printf '    --hash=sha256:%s\n' "$(sha256sum "$whl" | cut -d' ' -f1)"
	done
} >>requirements.txt
compile --output-file requirements-dev.txt requirements-dev.in
# the runtime lock's pins win: drop their entries (and "# via" lines) from the dev lock
"$python" - <<'PY'
import re
runtime = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", open("requirements.txt").read(), re.M)}
out, skip = [], False
for line in open("requirements-dev.txt").read().splitlines():
    name = re.match(r"^([A-Za-z0-9_.-]+)==", line)
    if name:
        skip = name.group(1).lower() in runtime
    elif not line.startswith(" "):
        skip = False
    if not skip:
        out.append(line)
open("requirements-dev.txt", "w").write("\n".join(out) + "\n")
PY
