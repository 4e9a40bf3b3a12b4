"""Pure logic of roles: the users file's [role] sections, the IAP roles, what each role may do,
the route table against the routes MLflow really has, and IAP assertion checks in-process (keys
still served over HTTP on 127.0.0.1)."""

from __future__ import annotations

import time

import pytest

from server import config
from server.gate import iap, roles
from server.gate.users import UsersError, parse_htpasswd, parse_wsgi_auth_credentials
from tests.iap_tokens import AUDIENCE, KeyServer, SigningKey


def test_sections_give_roles_and_users_before_any_section_are_admins():
    users = parse_htpasswd("old:pw1\n[editor]\nci:pw:with:colons\n\n[viewer]\n# note\nboss:$argon2id$v=19$m=65536,t=3,"
                           "p=4$c2FsdHNhbHQ$ZmFrZWhhc2hmYWtlaGFzaGZha2VoYXNo\n[Admin]\nroot:x\n", "f")
    got = {u.name: (u.role, u.secret) for u in users}
    assert got["old"] == ("admin", "pw1")
    assert got["ci"] == ("editor", "pw:with:colons")
    assert got["boss"][0] == "viewer"
    assert got["root"] == ("admin", "x")
    assert {u.role for u in parse_wsgi_auth_credentials("a:b|c:d:e", "w")} == {"admin"}


@pytest.mark.parametrize("text", ["[viewers]\na:b", "[]\na:b", "[editor\na:b"])
def test_a_section_that_names_no_role_is_refused_without_echoing_lines(text):
    with pytest.raises(UsersError) as failure:
        parse_htpasswd(text, "f")
    assert "a:b" not in str(failure.value)


def test_a_bracketed_user_name_is_a_user_not_a_section():
    assert [(u.name, u.role) for u in parse_htpasswd("[x]:pw", "f")] == [("[x]", "admin")]


def test_what_each_role_may_do():
    table = {(r, lvl): roles.allows(r, lvl) for r in roles.ROLES for lvl in roles.LEVELS}
    assert [lvl for (r, lvl), ok in table.items() if r == "viewer" and ok] == ["read"]
    assert [lvl for (r, lvl), ok in table.items() if r == "editor" and ok] == ["read", "write"]
    assert all(ok for (r, _), ok in table.items() if r == "admin")
    assert "viewers may only read" in roles.refusal("u", "viewer", "POST", "/x")


def test_iap_roles_by_email_then_domain_then_anyone():
    table = iap.parse_roles("[admin]\nBoss@Example.com\n[editor]\n@example.com  # the team\n[viewer]\n*\n", "r")
    assert iap.role_for(table, "boss@example.com").server == "admin"
    assert iap.role_for(table, "ann@example.com").server == "editor"
    assert iap.role_for(table, "x@other.org").server == "viewer"
    assert not iap.role_for(iap.parse_roles("[viewer]\n@example.com", "r"), "x@other.org")
    for bad in ("alice@example.com", "[viewer]\nnot-an-email", "[viewer]\na@b.c\n[editor]\na@b.c", "[owner]\na@b.c"):
        with pytest.raises(ValueError):
            iap.parse_roles(bad, "r")


def test_iap_settings_fail_closed(tmp_path):
    base = {"MLFLOW_LOCAL_MODE": "true", "MLFLOW_LOCAL_DIR": str(tmp_path), "MLFLOW_SECRETS_DIR": ""}
    with pytest.raises(config.ConfigError) as failure:
        config.load_settings({**base, "MLFLOW_IAP_AUDIENCE": AUDIENCE})
    assert "MLFLOW_IAP_ROLES: not set" in str(failure.value)
    with pytest.raises(config.ConfigError) as failure:
        config.load_settings({**base, "MLFLOW_IAP_ROLES": "[viewer]\n*"})
    assert "MLFLOW_IAP_AUDIENCE is not" in str(failure.value)
    with pytest.raises(config.ConfigError) as failure:
        config.load_settings({**base, "MLFLOW_IAP_AUDIENCE": "my-client-id", "MLFLOW_IAP_ROLES": "[viewer]\n*"})
    assert "must look like /projects/" in str(failure.value)
    settings = config.load_settings({**base, "MLFLOW_IAP_AUDIENCE": AUDIENCE, "MLFLOW_IAP_ROLES": "[viewer]\n*"})
    assert settings.users == {} and settings.iap_roles == {"*": roles.Grants("viewer")}  # IAP alone: no Basic users


# ------------------------------------------------------------ the route table


@pytest.fixture(scope="module")
def access():
    from mlflow.server import app as mlflow_app

    from server.borrowed.native_routes import RouteMatcher, mlflow_table
    from server.gate.route_access import RouteAccess

    return RouteAccess(mlflow_app, RouteMatcher(mlflow_table()))


def test_every_route_mlflow_has_is_in_the_table_and_the_table_names_no_other(access):
    # fails when an MLflow upgrade adds a route (classify it in server/gate/route_access.py) or drops one
    assert access.unclassified == []
    assert access.stale == []


@pytest.mark.parametrize(("method", "path", "level"), [
    ("POST", "/api/2.0/mlflow/runs/log-metric", "write"),
    ("POST", "/ajax-api/2.0/mlflow/runs/search", "read"),
    ("POST", "/graphql", "read"),
    ("GET", "/get-artifact", "read"),
    ("HEAD", "/api/2.0/mlflow-artifacts/artifacts/1/a/b.pkl", "read"),
    ("GET", "/ajax-api/2.0/mlflow/get-trace-artifact", "read"),
    ("POST", "/api/3.0/mlflow/traces/search", "read"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/a/b.pkl", "write"),
    ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/a/b.pkl", "write"),
    ("POST", "/v1/traces", "write"),
    ("POST", "/ajax-api/3.0/jobs/search", "read"),
    ("PATCH", "/ajax-api/3.0/jobs/cancel/j-1", "write"),
    ("POST", "/api/2.0/mlflow/experiments/delete", "admin"),
    ("DELETE", "/api/2.0/mlflow/registered-models/delete", "admin"),
    ("DELETE", "/api/2.0/mlflow/model-versions/delete", "admin"),
    ("POST", "/api/2.0/mlflow/runs/delete", "write"),
    ("POST", "/api/2.0/mlflow/registered-models/rename", "admin"),
    ("POST", "/api/2.0/mlflow/registered-models/alias", "write"),
    ("POST", "/ajax-api/3.0/mlflow/gateway/secrets/create", "admin"),
    ("GET", "/no/such/route", "write"),
    ("POST", "/api/2.0/mlflow/runs/search/", "write"),
    ("OPTIONS", "/api/2.0/mlflow/runs/log-metric", "read"),
    ("POST", "/api//2.0/mlflow/experiments/search", "write"),  # Flask would redirect; not a read
    ("POST", "//api/2.0/mlflow/experiments/create", "write"),  # Flask serves it as the route itself
    ("GET", "/api//2.0/mlflow/experiments/search", "read"),
])
def test_levels_of_routes(access, method, path, level):
    assert access.level(method, path) == level


def test_every_spelling_flask_routes_to_a_webhook_is_refused_by_the_route_guard():
    from mlflow.server import app as mlflow_app
    from werkzeug.exceptions import HTTPException

    from server.limits.route_guard import RouteGuard

    adapter = mlflow_app.url_map.bind("localhost")
    guard = RouteGuard(lambda environ, start: [b"reached MLflow"])
    tails = ["webhooks", "webhooks/", "webhooks/w-1", "webhooks/w-1/test"]
    spellings = [f"{lead}{prefix}/mlflow/{tail}" for lead in ("/", "//") for prefix in
                 ("api/2.0", "ajax-api/2.0", "api/3.0", "ajax-api/3.0") for tail in tails]
    spellings += ["/api/2.0/mlflow//webhooks", "/api/2.0//mlflow/webhooks/w-1"]
    routed = []
    for path in spellings:
        for method in ("GET", "POST", "PATCH", "DELETE"):
            try:
                endpoint, _ = adapter.match(path, method)
            except HTTPException:
                continue
            if "webhook" in endpoint:
                routed.append((method, path))
                answer = guard({"PATH_INFO": path, "REQUEST_METHOD": method}, lambda status, headers: None)
                assert answer != [b"reached MLflow"], (method, path)
    assert len(routed) >= 8  # the spellings really reach MLflow's webhook views


def test_every_graphql_mutation_of_mlflow_is_a_read():
    # POST /graphql is a read (route_access.py); a new mutation must be read before it is allowed
    from mlflow.server.graphql.graphql_schema_extensions import schema

    fields = schema.graphql_schema.mutation_type.fields
    assert sorted(fields) == ["mlflowSearchDatasets", "mlflowSearchRuns", "testMutation"]


def test_routes_a_later_mlflow_adds_are_classified_once_served():
    """The skill registry of MLflow 3.18, served by a FastAPI app as 3.18 serves it."""
    import flask

    from server.borrowed.native_routes import RouteMatcher
    from server.gate.route_access import PREPARED, TABLE, RouteAccess

    assert not set(PREPARED) & set(TABLE)
    prefix = "/ajax-api/3.0/mlflow/skills"
    served = [(prefix + path, tuple(sorted(methods))) for path, methods in [
        ("", {"GET", "POST"}), ("/{name}", {"GET", "PATCH", "DELETE"}),
        ("/@{organization}/{name}/versions/{version}", {"GET", "PATCH", "DELETE"}),
        ("/{name}/tags/{key:path}", {"DELETE"}), ("/{name}/unplanned", {"GET"})]]
    access = RouteAccess(flask.Flask("later", static_folder=None), RouteMatcher(served))
    assert access.level("GET", f"{prefix}/ada") == "read"
    assert access.level("PATCH", f"{prefix}/ada") == "write"
    assert access.level("DELETE", f"{prefix}/ada") == "admin"
    assert access.level("DELETE", f"{prefix}/@acme/ada/versions/2") == "admin"
    assert access.level("DELETE", f"{prefix}/ada/tags/a/b") == "write"
    assert access.level("POST", prefix) == "write" and access.level("GET", prefix) == "read"
    # a route neither table names is a write, and reported
    assert access.unclassified == [("GET", f"{prefix}/{{name}}/unplanned")]


def test_a_request_is_judged_by_the_route_that_serves_it():
    """A variable route before a literal one that also matches: Starlette serves the variable
    one (tests/test_native_routes.py), so the gate judges by it; in the other order, by the literal."""
    import flask

    from server.borrowed.native_routes import RouteMatcher
    from server.gate.route_access import RouteAccess

    prefix = "/api/3.0/mlflow/things"
    table = {("GET", "mlflow/things/{name:path}"): "read", ("GET", "mlflow/things/endpoints"): "admin"}
    served = [(prefix + "/{name:path}", ("GET", "HEAD")), (prefix + "/endpoints", ("GET", "HEAD"))]
    for order, expected in ((served, "read"), (served[::-1], "admin")):
        access = RouteAccess(flask.Flask("shadowed", static_folder=None), RouteMatcher(order), table=table, prepared={})
        assert access.level("GET", prefix + "/endpoints") == expected
        assert access.level("HEAD", prefix + "/endpoints") == expected
        assert access.level("GET", prefix + "/other") == "read"
        assert access.level("POST", prefix + "/other") == "write"  # no such route: a write
        assert access.unclassified == []


# ------------------------------------------------------------ IAP assertions in-process


@pytest.fixture
def keys():
    key = SigningKey("k1")
    server = KeyServer(key)
    yield key, server
    server.stop()


def verifier(server, table=None):
    return iap.IapVerifier(AUDIENCE, lambda: table or {"@example.com": roles.Grants("editor")}, iap.IapKeys(server.url))


def test_a_valid_assertion_and_its_role(keys):
    key, server = keys
    assert verifier(server).verify(key.sign("ann@example.com")) == ("ann@example.com", roles.Grants("editor"))
    assert verifier(server).verify(key.sign("x@other.org")) == ("x@other.org", roles.Grants())


@pytest.mark.parametrize("bad", ["missing", "expired", "audience", "issuer", "forged", "no email", "huge"])
def test_bad_assertions_are_refused(keys, bad):
    key, server = keys
    token = {
        "missing": "",
        "expired": key.sign("a@example.com", issued=time.time() - 7200),
        "audience": key.sign("a@example.com", audience=AUDIENCE + "x"),
        "issuer": key.sign("a@example.com", issuer="https://evil.example"),
        "forged": SigningKey("k1").sign("a@example.com"),
        "no email": key.sign(""),
        "huge": "x" * 10_000,
    }[bad]
    with pytest.raises(iap.IapError):
        verifier(server).verify(token)


def test_unknown_key_ids_refetch_at_most_once_a_minute(keys):
    key, server = keys
    now = [1000.0]
    checker = iap.IapVerifier(AUDIENCE, dict, iap.IapKeys(server.url, clock=lambda: now[0]))
    checker.verify(key.sign("a@example.com"))
    assert server.fetches == 1
    rotated = SigningKey("rotated")

    def unknown_key_tries(times: int) -> None:
        for _ in range(times):
            with pytest.raises(iap.IapError):
                checker.verify(rotated.sign("a@example.com"))

    unknown_key_tries(5)
    assert server.fetches == 1  # a forged key id right after a fetch costs no fetch
    now[0] += iap.KEYS_RETRY_SECONDS + 1
    unknown_key_tries(5)
    assert server.fetches == 2  # then one fetch, however many tokens name it
    server.keys.append(rotated)  # IAP published the new key
    now[0] += iap.KEYS_RETRY_SECONDS + 1
    assert checker.verify(rotated.sign("a@example.com"))[0] == "a@example.com"
    assert server.fetches == 3


def test_keys_that_cannot_be_fetched_are_unavailable_not_a_pass():
    checker = iap.IapVerifier(AUDIENCE, dict, iap.IapKeys("http://127.0.0.1:9/none"))
    with pytest.raises(iap.IapUnavailableError):
        checker.verify(SigningKey("k").sign("a@example.com"))


# ------------------------------------------------------------ write-once and the UI's account answers


def test_the_forms_a_model_version_may_record_its_folder_in():
    from server.limits.write_once import ancestors, location_forms

    assert ancestors("1/models/m-1/artifacts/MLmodel") == [
        "1", "1/models", "1/models/m-1", "1/models/m-1/artifacts", "1/models/m-1/artifacts/MLmodel"]
    forms = location_forms("1/models/m-1/artifacts", "gs://bucket/prefix/")
    assert "mlflow-artifacts:/1/models/m-1/artifacts" in forms  # what this server hands out
    assert "gs://bucket/prefix/1/models/m-1/artifacts" in forms  # the bucket's own URI
    assert all(f.endswith(("artifacts", "artifacts/")) for f in forms)


def test_local_and_listing_repositories_tell_what_exists(tmp_path):
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from server.limits.write_once import exists

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.txt").write_text("x")
    repo = LocalArtifactRepository(str(tmp_path))
    assert exists(repo, "a/b/f.txt") and exists(repo, "a/b") and not exists(repo, "a/b/g.txt")

    class Listing:  # a repository known only by its listing
        def list_artifacts(self, path):
            return repo.list_artifacts(path)

    assert exists(Listing(), "a/b/f.txt") and not exists(Listing(), "a/b/g.txt")


def test_every_write_of_the_store_in_a_request_is_held_whoever_calls_it(tmp_path):
    """The rule is in the repository: a handler MLflow adds later writes through the same methods."""
    from types import SimpleNamespace

    import flask
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from server.gate.role_gate import ROLE
    from server.limits.write_once import WriteOnce, WriteOnceConflict, WriteOnceRepository

    no_registry = SimpleNamespace(_get_model_registry_store=lambda: object())  # a store without SQL
    repo_class = type("Guarded", (WriteOnceRepository, LocalArtifactRepository),
                      {"rule": WriteOnce(no_registry, str(tmp_path / "store"))})
    repo = repo_class(str(tmp_path / "store"))
    (tmp_path / "store" / "1" / "run").mkdir(parents=True)
    kept = tmp_path / "store" / "1" / "run" / "kept.txt"
    kept.write_text("kept")
    (tmp_path / "src" / "run").mkdir(parents=True)
    upload = tmp_path / "src" / "run" / "kept.txt"
    upload.write_text("replaced")
    app = flask.Flask("write-once")
    for role in ("editor", "viewer", None):
        with app.test_request_context(environ_base={ROLE: role} if role else {}):
            for write in (lambda: repo.log_artifact(str(upload), "1/run"),
                          lambda: repo.delete_artifacts("1/run/kept.txt"), lambda: repo.delete_artifacts("1"),
                          lambda: repo.log_artifacts(str(tmp_path / "src"), "1")):
                with pytest.raises(WriteOnceConflict) as refused:
                    write()
                assert refused.value.get_http_status_code() == 409
            repo.log_artifact(str(upload), f"1/run/new-{role}")  # a new path is written
    assert kept.read_text() == "kept"
    with app.test_request_context(environ_base={ROLE: "admin"}):
        repo.log_artifact(str(upload), "1/run")  # an admin repairs
    assert kept.read_text() == "replaced"
    repo.delete_artifacts("1/run/kept.txt")  # outside a request: the server's own work
    assert not kept.exists()


def test_the_ui_gets_the_role_as_permissions():
    from server.gate import account

    assert account.permissions("viewer")["permissions"][0]["permission"] == "READ"
    assert account.permissions("editor")["permissions"][0]["permission"] == "EDIT"
    assert account.permissions("admin") == {"is_admin": True, "permissions": [
        {"resource_type": "experiment", "resource_pattern": "*", "permission": "MANAGE", "workspace": "default"}]}
    # MLflow's user-management pages stay off: users live in the users secret here
    assert account.current_user("ann", "admin", "basic")["user"]["is_admin"] is False


def test_with_iap_alone_only_assertions_and_the_job_runner_get_in(keys):
    import base64

    from server.gate.auth import BasicAuthMiddleware

    key, server = keys
    seen = []

    def app(environ, start_response):
        seen.append((environ["REMOTE_USER"], environ["mlflow_server.role"]))
        start_response("200 OK", [])
        return [b"in"]

    gate = BasicAuthMiddleware(app, users=dict, iap=verifier(server), internal=("job-runner", "s3cret-job"))

    def status(headers: dict, peer: str = "127.0.0.1") -> str:
        got = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/2.0/mlflow/experiments/search",
                   "REMOTE_ADDR": peer, **headers}
        gate(environ, lambda s, h: got.append(s))
        return got[0]

    job = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"job-runner:s3cret-job").decode()}
    assert status(job) == "200 OK" and seen[-1] == ("job-runner", "admin")
    assert status(job, peer="10.0.0.7").startswith("401")  # the job runner's credential is loopback-only
    assert status({}).startswith("401")
    assert status({"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"admin:admin").decode()}).startswith("401")
    assert status({"HTTP_X_GOOG_IAP_JWT_ASSERTION": key.sign("ann@example.com")}) == "200 OK"
    assert seen[-1] == ("ann@example.com", "editor")
    assert status({"HTTP_X_GOOG_IAP_JWT_ASSERTION": key.sign("x@other.org")}).startswith("403")
