"""Roles per MLflow workspace, in-process: the users file's and the IAP roles' workspace
sections, the decision of server/gate/workspace_gate.py on MLflow's real routes, and the job
runner's credential narrowed to one workspace."""

from __future__ import annotations

import base64

import pytest

from server.gate import iap, roles
from server.gate.auth import BasicAuthMiddleware, job_credential
from server.gate.role_gate import DECISION, GRANTS, ROLE
from server.gate.users import User, UsersError, parse_htpasswd
from server.gate.workspace_gate import HEADER, WorkspaceGate


def test_a_users_file_gives_roles_per_workspace_and_keeps_its_old_meaning():
    users = {u.name: u for u in parse_htpasswd(
        "old:pw\n[editor]\nci:pw2\n[viewer team-a]\nann:pw3\nci\n[editor team-b]\nann\n[admin team-b]\nann\n", "f")}
    assert users["old"].grants == roles.Grants("admin")  # before any section: admin, as before
    assert users["ci"].grants == roles.Grants("editor", {"team-a": "viewer"})
    assert users["ci"].grants.in_workspace("team-a") == "editor"  # the stronger counts
    ann = users["ann"].grants
    assert ann.server is None and ann.workspaces == {"team-a": "viewer", "team-b": "admin"}
    assert ann.in_workspace("team-a") == "viewer" and ann.in_workspace("team-c") is None


@pytest.mark.parametrize("text", ["[editor Team_A]\nann:pw", "[editor a b]\nann:pw", "[owner team-a]\nann:pw",
                                  "[editor team-a]\nann\n", "ann:pw\nann:pw2", "[viewer]\nann pw"])
def test_malformed_workspace_files_are_refused_without_echoing_lines(text):
    with pytest.raises(UsersError) as failure:
        parse_htpasswd(text, "f")
    assert "pw" not in str(failure.value)


def test_iap_roles_per_workspace_by_email_then_domain_then_anyone():
    table = iap.parse_roles("[viewer]\n*\n[editor team-a]\n@acme.com\n[admin team-a]\nboss@acme.com\n"
                            "[viewer team-b]\nann@acme.com\n", "r")
    ann, boss, other = (iap.role_for(table, e) for e in ("ann@acme.com", "boss@acme.com", "x@other.org"))
    assert ann.in_workspace("team-a") == "editor" and ann.in_workspace("team-b") == "viewer"
    assert ann.in_workspace("team-c") == "viewer"  # * is a viewer everywhere
    assert boss.in_workspace("team-a") == "admin"
    assert other.in_workspace("team-a") == "viewer" and other.server == "viewer"
    only_team = iap.role_for(iap.parse_roles("[editor team-a]\n@acme.com\n", "r"), "x@acme.com")
    assert only_team and only_team.server is None and only_team.in_workspace("default") is None
    with pytest.raises(ValueError):
        iap.parse_roles("[editor team-a]\na@b.c\n[viewer team-a]\na@b.c\n", "r")


@pytest.fixture(scope="module")
def scopes():
    from mlflow.server import app as mlflow_app

    from server.borrowed.native_routes import RouteMatcher, mlflow_table
    from server.gate.route_access import scopes

    return scopes(mlflow_app, RouteMatcher(mlflow_table()))


def decide(gate_scopes, grants, path, method="GET", workspace=None, enabled=True):
    """(status, environ MLflow got) of one request through the gate."""
    seen, status = {}, []
    gate = WorkspaceGate(lambda environ, start: seen.update(environ) or [b"ok"], gate_scopes, enabled,
                         account_paths=frozenset({"/ajax-api/2.0/mlflow/users/current"}))
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, GRANTS: grants, "REMOTE_USER": "ann",
               "wsgi.input": None, **({HEADER: workspace} if workspace is not None else {})}
    gate(environ, lambda s, headers: status.append(s))
    return (status[0] if status else "200 OK"), seen


def test_every_route_of_no_workspace_is_one_mlflow_serves(scopes):
    assert scopes.stale == []


def test_the_role_of_a_request_is_the_one_held_in_its_workspace(scopes):
    ann = roles.Grants(None, {"team-a": "editor"})
    status, seen = decide(scopes, ann, "/api/2.0/mlflow/runs/get", workspace="team-a")
    assert status == "200 OK" and seen[ROLE] == "editor" and seen[HEADER] == "team-a"
    for workspace in ("team-b", None, "", "team-a, team-b", "TEAM-A"):
        assert decide(scopes, ann, "/api/2.0/mlflow/runs/get", workspace=workspace)[0].startswith("403"), workspace
    status, seen = decide(scopes, ann, "/api/2.0/mlflow/runs/get", workspace="  team-a ")
    assert seen[HEADER] == "team-a"  # MLflow gets the workspace that was judged, as it trims it
    # a server-wide role holds in every workspace, the default one included
    assert decide(scopes, roles.Grants("viewer"), "/api/2.0/mlflow/runs/get")[1][ROLE] == "viewer"


def test_routes_of_no_workspace_are_judged_by_the_server_wide_role(scopes):
    ann = roles.Grants(None, {"team-a": "admin"})
    for method, path in (("GET", "/"), ("GET", "/ajax-api/3.0/mlflow/workspaces"), ("POST", "/api/3.0/mlflow/workspaces"),
                         ("DELETE", "/api/3.0/mlflow/workspaces/team-a"), ("GET", "/static-files/x.js"),
                         ("PUT", "/ajax-api/3.0/mlflow/assistant/config"), ("GET", "/ajax-api/3.0/mlflow/server-info")):
        status, seen = decide(scopes, ann, path, method, workspace="team-a")
        assert status == "200 OK" and seen[ROLE] == "viewer", (method, path)  # a team admin is no server admin
        assert seen.get(HEADER) == "team-a"  # left as sent: MLflow does not scope these
    assert decide(scopes, roles.Grants("admin"), "/api/3.0/mlflow/workspaces", "POST")[1][ROLE] == "admin"
    # the UI's account route answers with the role in the request's workspace, never refused
    assert decide(scopes, ann, "/ajax-api/2.0/mlflow/users/current", workspace="team-a")[1][ROLE] == "admin"
    assert decide(scopes, ann, "/ajax-api/2.0/mlflow/users/current", workspace="team-b")[1][ROLE] == "viewer"


def test_with_workspaces_off_only_server_wide_roles_count(scopes):
    assert decide(scopes, roles.Grants("editor", {"team-a": "admin"}), "/api/2.0/mlflow/runs/get", enabled=False
                  )[1][ROLE] == "editor"
    status, seen = decide(scopes, roles.Grants(None, {"team-a": "admin"}), "/api/2.0/mlflow/runs/get", enabled=False)
    assert status.startswith("403") and seen == {}


def test_an_open_path_has_no_grants_and_passes(scopes):
    seen = {}
    gate = WorkspaceGate(lambda environ, start: seen.update(environ) or [b"ok"], scopes, True)
    gate({"REQUEST_METHOD": "GET", "PATH_INFO": "/health", DECISION: "open"}, lambda *a: None)
    assert ROLE not in seen


def test_a_jobs_credential_is_admin_in_its_workspace_only():
    runner = ("mlflow-job-runner", "s3cret-of-this-start")
    seen = {}
    someone = User("someone", "a-password", "plain", "viewer")
    gate = BasicAuthMiddleware(lambda environ, start: seen.update(environ) or [b"ok"],
                               users=lambda: {"someone": someone}, internal=runner)

    def ask(credential, peer="127.0.0.1"):
        seen.clear()
        header = "Basic " + base64.b64encode(f"{credential[0]}:{credential[1]}".encode()).decode()
        status = []
        gate({"REQUEST_METHOD": "GET", "PATH_INFO": "/api/2.0/mlflow/runs/get", "HTTP_AUTHORIZATION": header,
              "REMOTE_ADDR": peer}, lambda s, h: status.append(s))
        return seen.get(GRANTS)

    assert ask(runner) == roles.Grants("admin")
    name, password = job_credential(runner, "team-a")
    assert name == "mlflow-job-runner@team-a" and runner[1] not in password
    assert ask((name, password)) == roles.Grants(None, {"team-a": "admin"})
    assert ask(("mlflow-job-runner@team-b", password)) is None  # the password is bound to its workspace
    assert ask((name, password), peer="10.0.0.8") is None  # and, as the runner's, to loopback
    assert job_credential(("mlflow-job-runner", "another-start"), "team-a")[1] != password
