"""Roles and write-once artifacts on a real server (Postgres + GCS emulator), driven by the stock
client as each kind of user drives it: a training script (editor), a reviewer (viewer), an admin.

The users file mixes every password form: an unsectioned plain user (admin, as before roles), an
editor whose plain password holds ':', a viewer with a bcrypt hash, and a WSGI_AUTH_CREDENTIALS
user (admin)."""

from __future__ import annotations

import json
import time
import uuid

import bcrypt
import pytest
import requests

from tests.conftest import ALICE, CAROL
from tests.services import ROOT, Server, wait_for
from tests.test_training_flow import check_flow, run_script

EDITOR = ("ed", "ed:pass:with:colons")
VIEWER = ("vi", "vi-h4shed-password")
ADMIN = ALICE  # listed before any section
VIEWER_HASH = bcrypt.hashpw(VIEWER[1].encode(), bcrypt.gensalt(rounds=10)).decode()
USERS = (f"{ADMIN[0]}:{ADMIN[1]}\n[editor]\n{EDITOR[0]}:{EDITOR[1]}\n"
         f"[viewer]\n# a reviewer's account\n{VIEWER[0]}:{VIEWER_HASH}\n")
SCRIPT = ROOT / "tests" / "roles_script.py"
API = "/api/2.0/mlflow"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"


@pytest.fixture(scope="module")
def server(workdir, postgres, gcs):
    env = {**gcs.env(), "MLFLOW_AUTH_MAX_FAILURES": "100000", "WSGI_AUTH_CREDENTIALS": f"{CAROL[0]}:{CAROL[1]}"}
    secrets = {"mlflow_backend_store_uri": postgres.create_database("mlflow_roles"),
               "mlflow_artifacts_destination": f"gs://{gcs.bucket}/roles", "mlflow_auth_users": USERS}
    server = Server(workdir / "server-roles", env, secrets).start()
    yield server
    server.stop()


def script(server, user, command: str, name: str) -> dict:
    return run_script(server, user, command, name, script=SCRIPT)


@pytest.fixture(scope="module")
def session(server):
    """The editor's session, done once; the viewer and admin tests read and delete what it made."""
    name = f"roles-{uuid.uuid4().hex[:6]}"
    return name, script(server, EDITOR, "editor", name)


def call(server, user, method, path, **kwargs) -> requests.Response:
    return requests.request(method, server.url + path, auth=user, timeout=30, **kwargs)


def model_files(server, session) -> tuple[str, str]:
    """(proxy path of the registered model's folder, one of its files)."""
    name, _ = session
    location = call(server, ADMIN, "GET", f"{API}/model-versions/get-download-uri",
                    params={"name": name, "version": "1"}).json()["artifact_uri"]
    assert location.startswith("mlflow-artifacts:/"), location
    folder = location.removeprefix("mlflow-artifacts:").lstrip("/")
    return folder, f"{folder}/MLmodel"


def test_an_editor_trains_registers_traces_and_prompts(session):
    _, made = session
    assert made["delete_run"] == "deleted"  # editors delete runs
    assert made["trace_id"] and made["prompt_version"] == 1 and made["version"] == "1"
    assert made["overwrite"]["status"] == 409
    assert "write-once" in made["overwrite"]["message"]
    for refused in ("delete_experiment", "delete_model_version", "delete_registered_model"):
        assert made[refused]["status"] == 403, made[refused]
        assert "role 'editor'" in made[refused]["message"]


def test_an_editor_runs_the_whole_training_flow(server, gcs):
    # the stock client's log_artifact(s), 3 MiB upload, log_model, registry, alias, load by alias
    check_flow(server, EDITOR, lambda: gcs.list_objects("roles/"))


def test_a_viewer_reads_everything_and_every_write_is_refused(server, session):
    name, made = session
    seen = script(server, VIEWER, "viewer", name)
    assert seen["runs"] == 1 and seen["metric"] == 0.5 and seen["artifact"] == "first\n"  # not overwritten
    assert seen["predict"] == ["x"] and seen["versions"] == ["1"]
    assert seen["traces"] == [made["trace_id"]] and seen["span_names"] == ["answer"]
    assert seen["prompt"] == "Hi Ada!"
    for refused in ("create_experiment", "log_metric", "set_tag", "register_prompt"):
        assert seen[refused]["status"] == 403, seen[refused]
        assert "role 'viewer'" in seen[refused]["message"] and "viewers may only read" in seen[refused]["message"]


def test_a_viewer_gets_the_uis_reads(server, session):
    name, made = session
    ok = [
        call(server, VIEWER, "POST", "/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 10}),
        call(server, VIEWER, "POST", "/ajax-api/2.0/mlflow/runs/search",
             json={"experiment_ids": [made["experiment_id"]]}),
        call(server, VIEWER, "POST", "/graphql", json={
            "query": "query q($id: String) { mlflowGetExperiment(input: {experimentId: $id}) "
                     "{ experiment { name } } }", "variables": {"id": made["experiment_id"]}}),
        call(server, VIEWER, "POST", "/ajax-api/3.0/mlflow/traces/search",
             json={"locations": [{"type": "MLFLOW_EXPERIMENT",
                                  "mlflow_experiment": {"experiment_id": made["experiment_id"]}}]}),
        call(server, VIEWER, "GET", "/get-artifact", params={"path": "notes.txt", "run_uuid": made["run_id"]}),
        call(server, VIEWER, "GET", "/ajax-api/2.0/mlflow/get-trace-artifact", params={"request_id": made["trace_id"]}),
        call(server, VIEWER, "GET", f"{API}/registered-models/alias", params={"name": name, "alias": "champion"}),
    ]
    assert [r.status_code for r in ok] == [200] * len(ok), [(r.url, r.text[:200]) for r in ok if r.status_code != 200]
    assert not ok[2].json()["errors"] and ok[2].json()["data"]["mlflowGetExperiment"]["experiment"]["name"]
    assert ok[4].content == b"first\n"
    who = call(server, VIEWER, "GET", "/ajax-api/2.0/mlflow/users/current").json()
    assert who["user"]["username"] == VIEWER[0] and who["user"]["role"] == "viewer"
    rights = call(server, VIEWER, "GET", "/ajax-api/3.0/mlflow/users/current/permissions").json()
    assert rights["permissions"][0]["permission"] == "READ" and rights["is_admin"] is False
    rights = call(server, EDITOR, "GET", "/ajax-api/3.0/mlflow/users/current/permissions").json()
    assert rights["permissions"][0]["permission"] == "EDIT"


def test_writes_the_ui_makes_are_refused_to_a_viewer(server, session):
    _, made = session
    refused = [
        call(server, VIEWER, "POST", "/ajax-api/2.0/mlflow/experiments/create", json={"name": "nope"}),
        call(server, VIEWER, "POST", "/ajax-api/2.0/mlflow/runs/delete", json={"run_id": made["run_id"]}),
        call(server, VIEWER, "POST", "/ajax-api/2.0/mlflow/upload-artifact",
             params={"run_uuid": made["run_id"], "path": "x.txt"}, data=b"x"),
        call(server, VIEWER, "PUT", f"{PROXY}/{made['experiment_id']}/new.txt", data=b"x"),
        call(server, VIEWER, "POST", "/v1/traces", data=b"", headers={"Content-Type": "application/x-protobuf"}),
        call(server, VIEWER, "POST", "/ajax-api/3.0/jobs/", json={}),
        call(server, VIEWER, "PATCH", f"/api/3.0/mlflow/traces/{made['trace_id']}/tags", json={"key": "k", "value": "v"}),
        call(server, VIEWER, "POST", "/api/2.0/mlflow/no-such-route", json={}),  # unknown: a write
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert all(r.json()["error_code"] == "PERMISSION_DENIED" for r in refused)
    runs = call(server, ADMIN, "GET", f"{API}/runs/get", params={"run_id": made["run_id"]}).json()
    assert runs["run"]["info"]["lifecycle_stage"] == "active"


def test_registered_model_files_and_stored_artifacts_are_write_once(server, session):
    _, made = session
    folder, existing = model_files(server, session)
    original = call(server, VIEWER, "GET", f"{PROXY}/{existing}").content
    assert b"flavors" in original
    # an editor can neither replace, delete nor add to a registered model's files
    for method, path in (("PUT", existing), ("DELETE", existing), ("PUT", f"{folder}/extra.py"),
                         ("POST", f"/api/2.0/mlflow-artifacts/mpu/create/{folder}/big.bin")):
        url = path if path.startswith("/") else f"{PROXY}/{path}"
        body = {"json": {"path": "big.bin", "num_parts": 1}} if method == "POST" else {"data": b"import os"}
        r = call(server, EDITOR, method, url, **body)
        assert r.status_code == 409, (method, path, r.text)
        assert "registered model" in r.json()["message"]
    assert call(server, ADMIN, "GET", f"{PROXY}/{existing}").content == original
    # a run's artifact: a new path is written once, then neither overwritten nor deleted
    fresh = f"{made['experiment_id']}/{made['run_id']}/artifacts/once-{uuid.uuid4().hex[:6]}.txt"
    assert call(server, EDITOR, "PUT", f"{PROXY}/{fresh}", data=b"v1").status_code == 200
    again = call(server, EDITOR, "PUT", f"{PROXY}/{fresh}", data=b"v2")
    assert again.status_code == 409 and again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    assert call(server, EDITOR, "DELETE", f"{PROXY}/{fresh}").status_code == 409
    ui = call(server, EDITOR, "POST", "/ajax-api/2.0/mlflow/upload-artifact",
              params={"run_uuid": made["run_id"], "path": fresh.rsplit("/", 1)[1]}, data=b"v3")
    assert ui.status_code == 409
    assert call(server, VIEWER, "GET", f"{PROXY}/{fresh}").content == b"v1"
    # an admin may repair: replace, then delete
    assert call(server, ADMIN, "PUT", f"{PROXY}/{fresh}", data=b"fixed").status_code == 200
    assert call(server, VIEWER, "GET", f"{PROXY}/{fresh}").content == b"fixed"
    assert call(server, ADMIN, "DELETE", f"{PROXY}/{fresh}").status_code == 200


def test_the_access_log_names_user_role_and_decision(server, session):
    _, made = session
    marker = f"/ajax-api/2.0/mlflow/runs/get?run_id={made['run_id']}&marker={uuid.uuid4().hex}"
    log = server.logs_after(lambda: call(server, VIEWER, "POST", f"{API}/experiments/create", json={"name": marker}),
                            "denied: user vi")
    assert '"severity": "WARNING"' in next(line for line in log.splitlines() if "denied: user vi" in line)
    log = server.logs_after(lambda: call(server, VIEWER, "GET", marker), marker)
    line = json.loads(next(line for line in log.splitlines() if marker in line))
    assert (line["user"], line["role"], line["decision"]) == ("vi", "viewer", "allowed")
    denied = [json.loads(x) for x in log.splitlines() if x.startswith("{") and '"decision": "denied"' in x]
    assert denied and denied[-1]["role"] == "viewer" and denied[-1]["httpRequest"]["status"] == 403
    conflicts = [json.loads(x) for x in log.splitlines() if x.startswith("{") and '"decision": "conflict"' in x]
    assert conflicts and {c["httpRequest"]["status"] for c in conflicts} == {409}


def test_admins_delete_and_old_style_users_are_admins(server, session):
    name, _ = session
    done = script(server, ADMIN, "admin", name)
    assert done == {"experiment_stage": "deleted", "models": []}
    # a WSGI_AUTH_CREDENTIALS user keeps full rights, as before roles
    made = call(server, CAROL, "POST", f"{API}/experiments/create", json={"name": f"carol-{uuid.uuid4().hex[:6]}"})
    gone = call(server, CAROL, "POST", f"{API}/experiments/delete", json={"experiment_id": made.json()["experiment_id"]})
    assert gone.status_code == 200


def test_a_new_role_takes_effect_when_the_users_secret_changes(server):
    name = f"promoted-{uuid.uuid4().hex[:6]}"
    assert call(server, VIEWER, "POST", f"{API}/experiments/create", json={"name": name}).status_code == 403
    server.write_secret("mlflow_auth_users", USERS.replace("[viewer]", "[editor]"))
    try:
        wait_for(lambda: call(server, VIEWER, "POST", f"{API}/experiments/create", json={"name": name}).status_code
                 == 200, 20, "the viewer promoted to editor")
    finally:
        server.write_secret("mlflow_auth_users", USERS)
    time.sleep(3)  # the next look at the file (every 2 s) restores the viewer
    wait_for(lambda: call(server, VIEWER, "POST", f"{API}/experiments/create",
                          json={"name": name + "-2"}).status_code == 403, 20, "the viewer again")
