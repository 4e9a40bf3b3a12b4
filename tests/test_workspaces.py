"""Roles per MLflow workspace on a real server (Postgres + GCS emulator, MLFLOW_ENABLE_WORKSPACES),
driven by the stock client, and a curious colleague of team-a reaching for team-b's data:
by header (another, none, spoofed), by id, by artifact path, through GraphQL and searches.
Every refusal is the same whether the thing exists elsewhere or does not exist, and nothing of
team-b appears in any answer. Parity: the stock client's workspace calls give what stock
``mlflow server --enable-workspaces`` gives.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import uuid
from urllib.parse import quote, urlsplit

import pytest
import requests

from tests.conftest import ALICE
from tests.services import ROOT, Server, StockServer, base_env, run_client, wait_for

ANN = ("ann", "ann-team-a-password")  # editor in team-a, nothing elsewhere
BOB = ("bob", "bob-team-b-password")  # editor in team-b
VAL = ("val", "val-viewer-password")  # viewer in team-a, editor in team-c
USERS = (f"{ALICE[0]}:{ALICE[1]}\n"
         f"[editor team-a]\n{ANN[0]}:{ANN[1]}\n"
         f"[editor team-b]\n{BOB[0]}:{BOB[1]}\n"
         f"[viewer team-a]\n{VAL[0]}:{VAL[1]}\n"
         f"[editor team-c]\n{VAL[0]}\n"
         "[admin team-later]\nbob\n")  # a workspace that does not exist (yet)
SCRIPT = ROOT / "tests" / "workspace_script.py"
API = "/api/2.0/mlflow"
API3 = "/api/3.0/mlflow"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"
CLIENT_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"}


def script(url: str, user, *args: str) -> dict:
    done, out = run_client(SCRIPT, list(args), url, user, env=CLIENT_ENV)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def server(workdir, postgres, gcs):
    env = {**gcs.env(), "MLFLOW_AUTH_MAX_FAILURES": "100000", "MLFLOW_ENABLE_WORKSPACES": "true"}
    secrets = {"mlflow_backend_store_uri": postgres.create_database("mlflow_workspaces"),
               "mlflow_artifacts_destination": f"gs://{gcs.bucket}/workspaces-test", "mlflow_auth_users": USERS}
    server = Server(workdir / "server-workspaces", env, secrets).start()
    server.stores = {"MLFLOW_BACKEND_STORE_URI": secrets["mlflow_backend_store_uri"],
                     "MLFLOW_ARTIFACTS_DESTINATION": secrets["mlflow_artifacts_destination"], **gcs.env()}
    yield server
    server.stop()


@pytest.fixture(scope="module")
def teams(server) -> dict:
    tag = uuid.uuid4().hex[:6]
    setup = script(server.url, ALICE, "admin-setup", "team-a", "team-b", "team-c")
    assert {"default", "team-a", "team-b", "team-c"} <= set(setup["workspaces"])
    return {"a": script(server.url, ANN, "team", "team-a", tag), "b": script(server.url, BOB, "team", "team-b", tag),
            "tag": tag}


def call(server, user, method, path, workspace: str | None = "team-a", **kwargs) -> requests.Response:
    headers = {**({"X-MLFLOW-WORKSPACE": workspace} if workspace is not None else {}), **kwargs.pop("headers", {})}
    return requests.request(method, server.url + path, auth=user, headers=headers, timeout=30, **kwargs)


def leaks(response: requests.Response, team_b: dict, asked: str = "") -> list[str]:
    """Whatever of team-b's data the answer shows (beyond the value the request itself sent)."""
    text = response.text.replace(asked, "") if asked else response.text
    return [mark for mark in (team_b["run_id"], team_b["trace_id"], "team-b-") if mark in text]


def test_each_team_works_in_its_workspace_with_the_stock_client(teams):
    a, b = teams["a"], teams["b"]
    assert a["experiments"] == sorted([f"team-a-{teams['tag']}"] + [e for e in a["experiments"] if e == "Default"])
    assert not any(name.startswith("team-b") for name in a["experiments"])
    assert not any(name.startswith("team-a") for name in b["experiments"])


def test_a_request_for_another_workspace_or_none_is_refused_alike(server, teams):
    path = f"{API}/experiments/search"
    answers = {ws: call(server, ANN, "POST", path, workspace=ws, json={"max_results": 10})
               for ws in ("team-b", "no-such-team", None, "default", "TEAM-A", "team-a, team-b", "team-b ")}
    for workspace, answer in answers.items():
        assert answer.status_code == 403, (workspace, answer.text)
        assert answer.json()["error_code"] == "PERMISSION_DENIED"
        assert "team-b" not in answer.text or workspace in ("team-b", "team-a, team-b", "team-b ")
    # the refusal for an existing workspace reads as the one for a missing one
    exists = answers["team-b"].json()["message"].replace("team-b", "X")
    missing = answers["no-such-team"].json()["message"].replace("no-such-team", "X")
    assert exists == missing
    assert call(server, ANN, "POST", path, json={"max_results": 10}).status_code == 200


def test_a_repeated_header_is_judged_as_mlflow_would_read_it(server, teams):
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(server.url).port, timeout=30)
    body = json.dumps({"max_results": 100})
    auth = "Basic " + base64.b64encode(f"{ANN[0]}:{ANN[1]}".encode()).decode()
    conn.putrequest("POST", f"{API}/experiments/search")
    for header, value in (("Authorization", auth), ("Content-Type", "application/json"),
                          ("Content-Length", str(len(body))), ("X-MLFLOW-WORKSPACE", "team-a"),
                          ("X-MLFLOW-WORKSPACE", "team-b")):
        conn.putheader(header, value)
    conn.endheaders(body.encode())
    answer = conn.getresponse()
    text = answer.read().decode()
    conn.close()
    assert answer.status in (400, 403) and teams["b"]["experiment_id"] not in text, text


def test_team_b_data_by_id_reads_as_missing_from_team_a(server, teams):
    b = teams["b"]
    missing = uuid.uuid4().hex
    probes = [
        ("GET", f"{API}/runs/get", {"params": {"run_id": "{id}"}}, b["run_id"]),
        ("GET", f"{API}/experiments/get", {"params": {"experiment_id": "{id}"}}, b["experiment_id"]),
        ("GET", f"{API}/registered-models/get", {"params": {"name": "{id}"}}, b["model"]),
        ("GET", f"{API}/model-versions/get", {"params": {"name": "{id}", "version": "1"}}, b["model"]),
        ("GET", f"{API}/metrics/get-history", {"params": {"run_id": "{id}", "metric_key": "secret_metric"}}, b["run_id"]),
        ("GET", f"{API}/artifacts/list", {"params": {"run_id": "{id}"}}, b["run_id"]),
        ("GET", "/get-artifact", {"params": {"run_id": "{id}", "path": "notes.txt"}}, b["run_id"]),
        ("GET", "/model-versions/get-artifact", {"params": {"name": "{id}", "version": "1", "path": "notes.txt"}},
         b["model"]),
        ("GET", f"{API3}/traces/{{id}}", {}, b["trace_id"]),
        ("GET", "/ajax-api/2.0/mlflow/get-trace-artifact", {"params": {"request_id": "{id}"}}, b["trace_id"]),
        ("GET", f"{API3}/traces/{{id}}/info", {}, b["trace_id"]),
        ("POST", f"{API}/runs/log-metric", {"json": {"run_id": "{id}", "key": "x", "value": 1, "timestamp": 0}},
         b["run_id"]),
        ("POST", f"{API}/runs/set-tag", {"json": {"run_id": "{id}", "key": "x", "value": "y"}}, b["run_id"]),
        ("POST", f"{API}/registered-models/set-tag", {"json": {"name": "{id}", "key": "x", "value": "y"}}, b["model"]),
        ("POST", f"{API}/registered-models/alias", {"json": {"name": "{id}", "alias": "x", "version": "1"}},
         b["model"]),
    ]

    def ask(method, path, options, value):
        filled = json.loads(json.dumps(options).replace("{id}", value))
        return call(server, ANN, method, path.replace("{id}", quote(value)), **filled)

    for method, path, options, value in probes:
        other = missing if not value.isdigit() else "987654321"
        there, nowhere = ask(method, path, options, value), ask(method, path, options, other)
        assert there.status_code == nowhere.status_code and there.status_code in (400, 403, 404), (path, there.text)
        # the same answer, but for the value asked about: existence elsewhere does not show
        assert there.text.replace(value, "V") == nowhere.text.replace(other, "V"), (path, there.text, nowhere.text)
        assert not leaks(there, b, asked=value), (path, there.text)
    # team-b's data is untouched, and its owners read it
    owned = call(server, BOB, "GET", "/model-versions/get-artifact", workspace="team-b",
                 params={"name": b["model"], "version": b["version"], "path": "notes.txt"})
    assert owned.text == f"team-b notes {teams['tag']}"
    run = call(server, BOB, "GET", f"{API}/runs/get", workspace="team-b", params={"run_id": b["run_id"]}).json()
    assert {m["key"] for m in run["run"]["data"]["metrics"]} == {"secret_metric"}
    assert not run["run"]["data"].get("tags") or all(t["key"] != "x" for t in run["run"]["data"]["tags"])


def test_team_b_genai_data_and_settings_by_id_read_as_missing_from_team_a(server, teams):
    b = script(server.url, BOB, "extras", "team-b", teams["tag"])
    secret = call(server, ALICE, "POST", f"{API3}/gateway/secrets/create", workspace="team-b", json={
        "secret_name": f"team-b-key-{teams['tag']}", "secret_value": {"api_key": "sk-team-b-secret"}, "provider": "openai"})
    assert secret.status_code == 200, secret.text
    mcp_name = f"com.team-b/mcp-{teams['tag']}"
    mcp = call(server, BOB, "POST", f"{API3}/mcp-servers", workspace="team-b", json={"name": mcp_name})
    assert mcp.status_code in (200, 201), mcp.text
    probes = [
        (f"{API}/logged-models/{{id}}", {}, b["logged_model_id"]),
        (f"{API3}/datasets/{{id}}", {}, b["dataset_id"]),
        (f"{API3}/traces/{b['trace_id']}/assessments/{{id}}", {}, b["assessment_id"]),
        (f"{API3}/scorers/get", {"params": {"experiment_id": b["experiment_id"], "name": "{id}"}}, b["scorer"]),
        (f"{API}/registered-models/get", {"params": {"name": "{id}"}}, b["prompt"]),
        (f"{API3}/gateway/secrets/get", {"params": {"secret_id": "{id}"}}, secret.json()["secret"]["secret_id"]),
        (f"{API3}/mcp-servers/{{id}}", {}, mcp_name),
    ]
    for path, options, value in probes:
        missing = f"com.example/{uuid.uuid4().hex}" if value == mcp_name else f"m-{uuid.uuid4().hex}"
        filled = json.loads(json.dumps(options).replace("{id}", value))
        there = call(server, ANN, "GET", path.replace("{id}", quote(value)), **filled)
        other = json.loads(json.dumps(options).replace("{id}", missing))
        nowhere = call(server, ANN, "GET", path.replace("{id}", quote(missing)), **other)
        assert there.status_code == nowhere.status_code and there.status_code in (400, 403, 404), (path, there.text)
        assert there.text.replace(value, "V") == nowhere.text.replace(missing, "V"), (path, there.text, nowhere.text)
        assert "team-b" not in there.text.replace(value, "") and "sk-team-b" not in there.text, (path, there.text)
    # their owners read them
    assert call(server, BOB, "GET", f"{API}/logged-models/{b['logged_model_id']}", workspace="team-b").status_code == 200
    assert call(server, BOB, "GET", f"{API3}/datasets/{b['dataset_id']}", workspace="team-b").status_code == 200


def test_searches_lists_and_graphql_show_nothing_of_team_b(server, teams):
    b = teams["b"]
    answers = [
        call(server, ANN, "POST", f"{API}/experiments/search", json={"max_results": 1000}),
        call(server, ANN, "POST", f"{API}/runs/search", json={"experiment_ids": [b["experiment_id"]]}),
        call(server, ANN, "GET", f"{API}/registered-models/search", params={"max_results": 1000}),
        call(server, ANN, "GET", f"{API}/model-versions/search", params={"filter": f"name='{b['model']}'"}),
        call(server, ANN, "POST", f"{API3}/traces/search", json={"locations": [
            {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": b["experiment_id"]}}]}),
        call(server, ANN, "POST", "/graphql", json={
            "query": "query q($id: String) { mlflowGetRun(input: {runId: $id}) { run { info { runName } } } }",
            "variables": {"id": b["run_id"]}}),
        call(server, ANN, "POST", "/graphql", json={"query": "mutation m($e: [String]) { mlflowSearchRuns("
             "input: {experimentIds: $e}) { runs { info { runId } } } }", "variables": {"e": [b["experiment_id"]]}}),
    ]
    for answer in answers:
        assert answer.status_code in (200, 400, 404), answer.text
        assert not leaks(answer, b, asked=b["run_id"] if b"mlflowGetRun" in (answer.request.body or b"") else ""), \
            answer.text
        assert "team-b" not in answer.text, answer.text


def test_artifact_paths_of_another_workspace_are_refused_in_every_spelling(server, teams):
    b = teams["b"]
    stored = f"workspaces/team-b/{b['experiment_id']}/{b['run_id']}/artifacts/notes.txt"
    assert call(server, BOB, "GET", f"{PROXY}/{stored}", workspace="team-b").text.startswith("team-b notes")
    missing = f"workspaces/team-b/{b['experiment_id']}/{uuid.uuid4().hex}/artifacts/notes.txt"
    for method in ("GET", "PUT", "DELETE"):
        for path in (stored, missing, stored.replace("/", "%2F", 2), "%77orkspaces/team-b/" + stored.split("/", 2)[2]):
            answer = call(server, ANN, method, f"{PROXY}/{path}", data=b"x" if method == "PUT" else None)
            assert answer.status_code in (403, 404), (method, path, answer.status_code, answer.text)
            assert "team-b notes" not in answer.text
    for route in ("/api/2.0/mlflow-artifacts/presigned", "/ajax-api/2.0/mlflow-artifacts/presigned"):
        for path in (stored, missing):
            answer = call(server, ANN, "GET", f"{route}/{path}")
            assert answer.status_code in (403, 404, 501), (route, path, answer.text)
            assert "team-b notes" not in answer.text and "X-Goog" not in answer.text
    listed = call(server, ANN, "GET", PROXY, params={"path": f"workspaces/team-b/{b['experiment_id']}"})
    assert listed.status_code in (403, 404) and b["run_id"] not in listed.text
    assert call(server, BOB, "GET", f"{PROXY}/{stored}", workspace="team-b").text.startswith("team-b notes")


def test_roles_hold_per_workspace(server, teams):
    a = teams["a"]
    # val: a viewer in team-a (reads, cannot write), an editor in team-c, nothing in team-b
    assert call(server, VAL, "GET", f"{API}/runs/get", params={"run_id": a["run_id"]}).status_code == 200
    denied = call(server, VAL, "POST", f"{API}/runs/set-tag", json={"run_id": a["run_id"], "key": "k", "value": "v"})
    assert denied.status_code == 403 and "viewer" in denied.json()["message"]
    made = call(server, VAL, "POST", f"{API}/experiments/create", workspace="team-c", json={"name": f"c-{uuid.uuid4().hex}"})
    assert made.status_code == 200, made.text
    assert call(server, VAL, "POST", f"{API}/experiments/search", workspace="team-b", json={}).status_code == 403
    # a team editor cannot delete experiments, nor manage workspaces; the server admin can
    assert call(server, ANN, "POST", f"{API}/experiments/delete", json={"experiment_id": a["experiment_id"]}
                ).status_code == 403
    assert call(server, ANN, "POST", f"{API3}/workspaces", json={"name": "ann-made"}).status_code == 403
    assert call(server, ANN, "DELETE", f"{API3}/workspaces/team-b").status_code == 403
    assert call(server, ALICE, "GET", f"{API3}/workspaces/team-b").status_code == 200


def test_users_see_only_their_workspaces(server, teams):
    def names(user):
        answer = call(server, user, "GET", f"{API3}/workspaces", workspace=None)
        assert answer.status_code == 200, answer.text
        return sorted(w["name"] for w in answer.json()["workspaces"])

    assert names(ANN) == ["team-a"]
    assert names(VAL) == ["team-a", "team-c"]
    assert {"default", "team-a", "team-b", "team-c"} <= set(names(ALICE))
    there = call(server, ANN, "GET", f"{API3}/workspaces/team-b", workspace=None)
    nowhere = call(server, ANN, "GET", f"{API3}/workspaces/no-such-team", workspace=None)
    assert there.status_code == nowhere.status_code == 404
    assert there.json()["message"].replace("team-b", "X") == nowhere.json()["message"].replace("no-such-team", "X")


def test_concurrent_requests_resolve_their_workspace_without_errors(server, teams):
    # every request makes MLflow look its workspace up; each worker must use its own connections
    from concurrent.futures import ThreadPoolExecutor

    def ask(i):
        path = f"{API3}/workspaces" if i % 2 else f"{API}/experiments/search"
        return call(server, ANN, "GET" if i % 2 else "POST", path, json=None if i % 2 else {"max_results": 5})

    with ThreadPoolExecutor(16) as pool:
        codes = [answer.status_code for answer in pool.map(ask, range(96))]
    assert codes == [200] * 96


def test_an_experiment_and_its_model_move_into_a_team_workspace(server, teams):
    tag = uuid.uuid4().hex[:6]
    old = script(server.url, ALICE, "team", "default", tag)  # made before the team had a workspace
    assert call(server, ANN, "GET", f"{API}/runs/get", params={"run_id": old["run_id"]}).status_code == 404
    command = [sys.executable, str(ROOT / "scripts" / "move_to_workspace.py"), "--workspace", "team-a",
               "--experiment", old["experiment_id"], "--model", old["model"], "--delete-source"]
    done = subprocess.run(command, env={**base_env(server.stores)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the team reads it all in its workspace: the run, its artifact, the model and its version's file
    run = call(server, ANN, "GET", f"{API}/runs/get", params={"run_id": old["run_id"]})
    assert run.status_code == 200 and run.json()["run"]["data"]["metrics"][0]["value"] == 0.42
    artifact = f"{PROXY}/{old['experiment_id']}/{old['run_id']}/artifacts/notes.txt"
    assert call(server, ANN, "GET", artifact).text == f"default notes {tag}", done.stdout
    assert call(server, ANN, "GET", f"{API}/registered-models/get", params={"name": old["model"]}).status_code == 200
    version_file = call(server, ANN, "GET", "/model-versions/get-artifact",
                        params={"name": old["model"], "version": old["version"], "path": "notes.txt"})
    assert version_file.text == f"default notes {tag}"
    # and it has left the default workspace, with the old copy of its files
    assert call(server, ALICE, "GET", f"{API}/experiments/get", workspace=None,
                params={"experiment_id": old["experiment_id"]}).status_code == 404
    assert call(server, ALICE, "GET", artifact, workspace=None).status_code == 404
    # a second run is refused, naming why, and changes nothing
    again = subprocess.run([*command[:-5], "--experiment", "999999"], env=base_env(server.stores),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "nothing was moved" in again.stderr


def test_a_job_runs_in_its_workspace(server, teams):
    done = script(server.url, ANN, "job", "team-a")
    assert done["status"] == "SUCCEEDED" and done["assessments"] == ["has_seven"], done
    # the job is team-a's: team-b reads it as missing
    assert call(server, BOB, "GET", f"/ajax-api/3.0/jobs/{done['job_id']}", workspace="team-b").status_code == 404


def test_a_role_in_a_workspace_that_does_not_exist_is_logged(server):
    # at start-up no team's workspace exists yet: the admin creates them afterwards
    lines = [line for line in server.log.read_text().splitlines() if "do not exist (yet)" in line]
    assert lines and "team-a, team-b, team-c, team-later" in lines[0], server.log.read_text()[:3000]


def test_a_rotated_users_file_applies_and_logs_its_unknown_workspaces(server, teams):
    path = f"{API}/experiments/search"
    assert call(server, BOB, "POST", path, workspace="team-a", json={"max_results": 5}).status_code == 403
    server.write_secret("mlflow_auth_users", USERS + "[viewer team-a]\nbob\n[viewer team-typo]\nbob\n")
    try:
        wait_for(lambda: call(server, BOB, "POST", path, workspace="team-a", json={"max_results": 5}).status_code == 200, 30,
                 "the rotated users file to apply")
        wait_for(lambda: any("do not exist (yet)" in line and "team-typo" in line
                             for line in server.log.read_text().splitlines()), 10, "the unknown workspace's line")
    finally:
        server.write_secret("mlflow_auth_users", USERS)
        wait_for(lambda: call(server, BOB, "POST", path, workspace="team-a", json={"max_results": 5}).status_code == 403, 30,
                 "the users file to be restored")


def test_the_stock_clients_workspace_calls_match_stock_mlflow_server(server, workdir, postgres, gcs):
    uri = postgres.create_database("mlflow_stock_workspaces").replace("postgresql://", "postgresql+psycopg2://")
    # no job runs here: stock's runner, whose consumers start just after its first answer, is
    # left off, so the client's 3 s probe of server-info does not meet a machine busy with it
    stock = StockServer(workdir / "stock-workspaces", uri, f"gs://{gcs.bucket}/stock-workspaces",
                        env={**gcs.env(), "MLFLOW_ENABLE_WORKSPACES": "true",
                             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    stock.args.append("--enable-workspaces")
    stock.start()
    try:
        tag = uuid.uuid4().hex[:6]
        theirs = script(stock.url, None, "parity", tag)
    finally:
        stock.stop()
    ours = script(server.url, ALICE, "parity", tag)
    assert ours == theirs
    assert theirs["inside"] == ["Default", f"in-ws-{tag}"] or theirs["inside"] == [f"in-ws-{tag}"]
    assert theirs["outside"] == []
