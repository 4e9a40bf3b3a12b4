"""The upgrade rehearsal (scripts/try-mlflow.sh, scripts/rehearsal.py) and its weekly workflow:
the report's logic on two snapshots, the snapshot of the installed MLflow, the lock filter, a
version the registry cannot install, and the workflow's permissions."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess

import pytest
import yaml

from server.borrowed import internals
from tests.services import ROOT, VENV_BIN

_spec = importlib.util.spec_from_file_location("rehearsal", ROOT / "scripts" / "rehearsal.py")
rehearsal = importlib.util.module_from_spec(_spec)  # scripts/ is not a package
_spec.loader.exec_module(rehearsal)

SCRIPT = ROOT / "scripts" / "try-mlflow.sh"
WORKFLOW = ROOT / ".github" / "workflows" / "mlflow-rehearsal.yml"


@pytest.fixture(scope="module")
def pinned() -> dict:
    """The snapshot of the installed (pinned) MLflow, taken as the script takes it."""
    done = subprocess.run([str(VENV_BIN / "python"), str(ROOT / "scripts" / "rehearsal.py"), "snapshot"],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_snapshot_holds_what_a_bump_is_read_against(pinned):
    assert pinned["versions"]["mlflow"] == internals.WRITTEN_FOR["mlflow"]
    entry = pinned["internals"]["write-once artifacts"]
    assert entry["problems"] == [] and entry["used_by"] == "server/limits/write_once.py"
    assert "def _get_artifact_repo_mlflow_artifacts" in entry["sources"][
        "mlflow.server.handlers:_get_artifact_repo_mlflow_artifacts"]
    assert pinned["routes"]["DELETE /api/2.0/mlflow/registered-models/delete"] == "admin"
    assert pinned["routes"]["GET /api/2.0/mlflow/experiments/get"] == "read"
    assert not [r for r, level in pinned["routes"].items() if "not in the table" in level]
    assert len(pinned["migrations"]) > 50 and all(m.endswith(".py") for m in pinned["migrations"])
    assert any(r.startswith("mlflow-skinny==") for r in pinned["requires"]["mlflow"])


def test_the_same_version_has_nothing_to_re_read(pinned, tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite><testcase classname="t" name="a"/><testcase classname="t" name="b"/></testsuite>')
    text, something = rehearsal.report(pinned, pinned, junit, [])
    assert not something
    assert "| internals entries to re-read | 0 |" in text and "All 2 passed." in text


def test_a_candidate_that_moved_names_each_thing_to_re_read(pinned, tmp_path):
    candidate = copy.deepcopy(pinned)
    candidate["versions"]["mlflow"] = "9.0.0"
    target = "mlflow.server.handlers:_get_artifact_repo_mlflow_artifacts"
    entry = candidate["internals"]["write-once artifacts"]
    entry["sources"][target] = entry["sources"][target].replace("global _artifact_repo", "global _repo")
    entry["problems"] = ["mlflow.server.handlers:_artifact_repo is gone"]
    candidate["routes"]["DELETE /api/3.0/mlflow/skills/{name}"] = "admin (prepared)"
    candidate["routes"]["POST /api/3.0/mlflow/brand-new"] = "write (not in the table)"
    del candidate["routes"]["GET /api/2.0/mlflow/experiments/get"]
    candidate["migrations"].append("ffff_new_table.py")
    candidate["requires"]["mlflow-skinny"] = [*candidate["requires"]["mlflow-skinny"], "python-multipart<1"]
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite><testcase classname="tests.test_parity" name="test_x">'
                     '<failure message="assert 1 == 2">long</failure></testcase></testsuite>')
    text, something = rehearsal.report(pinned, candidate, junit, ["starlette 1.0 -> 1.1"])
    assert something
    assert "# MLflow 9.0.0: upgrade rehearsal against our pin 3.17.2" in text
    assert "### write-once artifacts (safety; server/limits/write_once.py)" in text
    assert "-    global _artifact_repo" in text and "+    global _repo" in text
    assert "problem: mlflow.server.handlers:_artifact_repo is gone" in text
    assert "| `DELETE /api/3.0/mlflow/skills/{name}` | admin (prepared) |" in text
    assert "| `POST /api/3.0/mlflow/brand-new` | write (not in the table) |" in text
    assert "- `GET /api/2.0/mlflow/experiments/get`" in text
    assert "- new: `ffff_new_table.py`" in text
    assert "mlflow-skinny now requires: `python-multipart<1`" in text
    assert "lock pin moved: starlette 1.0 -> 1.1" in text
    assert "FAILED `tests.test_parity::test_x`: assert 1 == 2" in text


def test_only_requirement_conflicts_the_candidate_adds_are_reported():
    pinned = 'mlflow 3.17.2 has requirement gunicorn<27; platform_system != "Windows", but you have gunicorn 27.0.1.\n'
    candidate = ('mlflow 3.18.0 has requirement gunicorn<27; platform_system != "Windows", but you have gunicorn 27.0.1.\n'
                 "mlflow-skinny 3.18.0 has requirement protobuf<7, but you have protobuf 7.36.2.\n")
    assert rehearsal.new_conflicts(pinned, candidate) == [
        "mlflow-skinny 3.18.0 has requirement protobuf<7, but you have protobuf 7.36.2."]
    assert rehearsal.new_conflicts(pinned, pinned.replace("3.17.2", "3.17.1")) == []


def test_the_twins_pinning_each_other_is_not_a_change(pinned):
    candidate = copy.deepcopy(pinned)
    candidate["requires"]["mlflow"] = [r.replace("3.17.2", "3.17.1") for r in pinned["requires"]["mlflow"]]
    assert rehearsal.requirement_changes(pinned, candidate) == {}


def test_lock_pins_the_candidate_moved(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("mlflow==3.17.2 \\\n    --hash=sha256:aa\nstarlette==1.0 \\\n    --hash=sha256:bb\nrich==14.0\n"
                    "ruamel-yaml==0.19.1\n")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("mlflow==3.17.1\nstarlette==1.1\nrich==14.0\npython_multipart==0.0.20\nruamel.yaml==0.19.1\n")
    assert rehearsal.freeze_moves([lock], freeze) == ["python-multipart (new) 0.0.20", "starlette 1.0 -> 1.1"]


def test_the_lock_is_installed_without_hashes_and_without_mlflow(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("# a comment\nmlflow==3.17.2 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
                    "mlflow-skinny==3.17.2 \\\n    --hash=sha256:cc\ngunicorn==27.0.1 \\\n    --hash=sha256:dd\n"
                    "MLflow-Tracing==3.17.2\nrich==14.0\n")
    done = subprocess.run(["bash", "-c", f'source "{SCRIPT}" && lock_without_mlflow "{lock}"'],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["gunicorn==27.0.1", "rich==14.0"]


def test_a_version_the_registry_does_not_have_is_one_line(tmp_path):
    done = subprocess.run([str(SCRIPT), "99.0.0"], capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
                               "TRY_MLFLOW_DIR": str(tmp_path / "out")})
    assert done.returncode == 3, done.stderr
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("mlflow 99.0.0 cannot be installed from the package registry: ")
    assert "mlflow" in done.stdout.split(": ", 1)[1]
    assert (tmp_path / "out" / "report.md").read_text() == done.stdout


def test_the_weekly_workflow_is_least_privilege_and_opens_one_issue():
    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow[True]  # YAML reads the key "on" as True
    assert triggers["schedule"][0]["cron"].split()[2:] == ["*", "*", "1"]  # weekly
    assert flow["permissions"] == {}
    (job,) = flow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "issues": "write"}
    steps = {step.get("name", step.get("uses")): step for step in job["steps"]}
    assert "scripts/try-mlflow.sh" in steps["rehearse"]["run"]
    issue = steps["open or update the rehearsal issue"]
    assert issue["if"] == "steps.rehearse.outputs.status == '1'"
    assert "gh issue edit" in issue["run"] and "gh issue create" in issue["run"]
    assert "persist-credentials" in json.dumps(job["steps"][0])
