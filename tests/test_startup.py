"""Fail closed: bad or missing configuration stops entry-point.sh before gunicorn starts, with
every problem listed, each naming the setting and where it looked, never the value."""

from __future__ import annotations

import os

import requests

from tests.conftest import ALICE, USERS_FILE
from tests.services import Server, refuses_connections

SECRET_PW = "Zz-very-secret-db-pw-123"


def assert_refused(code: int, output: str, *expected: str, secrets: tuple[str, ...] = ()):
    assert code == 2, output
    assert "the server will not start" in output, output
    for text in expected:
        assert text in output, f"{text!r} missing from:\n{output}"
    for secret in secrets:
        assert secret not in output, "a secret value was printed"
    assert "Starting gunicorn" not in output and "Listening at" not in output


def test_no_users_refuses_to_start(tmp_path, postgres):
    uri = postgres.dsn("postgres")
    server = Server(tmp_path, {}, {"mlflow_backend_store_uri": uri, "mlflow_artifacts_destination": str(tmp_path / "a")})
    code, out = server.run_to_exit()
    assert_refused(code, out, "MLFLOW_AUTH_USERS: no users are configured", "fail closed",
                   "$MLFLOW_AUTH_USERS_FILE", str(server.secrets_dir / "mlflow_auth_users"),
                   secrets=(postgres.password,))
    assert refuses_connections(server.port)


def test_no_backend_refuses_to_start_unless_local_mode(tmp_path):
    server = Server(tmp_path, {"MLFLOW_AUTH_USERS": f"{ALICE[0]}:{ALICE[1]}"})
    code, out = server.run_to_exit()
    assert_refused(code, out, "MLFLOW_BACKEND_STORE_URI: not set", "--local",
                   "MLFLOW_ARTIFACTS_DESTINATION: not set", secrets=(ALICE[1],))


def test_local_mode_serves_sqlite_and_local_artifacts(tmp_path):
    server = Server(tmp_path, {"MLFLOW_AUTH_USERS": f"{ALICE[0]}:{ALICE[1]}"}, args=["--local"])
    server.start()
    try:
        r = requests.post(f"{server.url}/api/2.0/mlflow/experiments/create", json={"name": "laptop"},
                          auth=ALICE, timeout=30)
        assert r.status_code == 200, r.text
        assert (tmp_path / "mlflow-local" / "mlflow.db").exists()
        # a metric's history, read in batches (server/borrowed/metric_history.py), on SQLite too
        run = requests.post(f"{server.url}/api/2.0/mlflow/runs/create", auth=ALICE, timeout=30,
                            json={"experiment_id": r.json()["experiment_id"]}).json()["run"]["info"]["run_id"]
        points = [{"key": "loss", "value": v, "timestamp": 1_700_000_000_000 + i, "step": i}
                  for i, v in enumerate([0.5, 0.25, "NaN"])]  # NaN as the client sends it
        logged = requests.post(f"{server.url}/api/2.0/mlflow/runs/log-batch", auth=ALICE, timeout=30,
                               json={"run_id": run, "metrics": points})
        assert logged.status_code == 200, logged.text
        history = requests.get(f"{server.url}/api/2.0/mlflow/metrics/get-history", auth=ALICE, timeout=30,
                               params={"run_id": run, "metric_key": "loss"}).json()
        assert [(m["step"], m["value"]) for m in history["metrics"]] == [(0, 0.5), (1, 0.25), (2, "NaN")]
        assert requests.get(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=5",
                            timeout=10).status_code == 401
        # the database and the artifacts are this account's alone
        assert (tmp_path / "mlflow-local" / "mlflow.db").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "mlflow-local" / "artifacts").stat().st_mode & 0o777 == 0o700
    finally:
        assert server.stop() == 0


def test_a_malformed_users_line_is_not_echoed_and_an_open_users_file_is_flagged(tmp_path):
    server = Server(tmp_path, {}, {"mlflow_auth_users": "alice Pw3-secret-part:whatever\n"}, args=["--local"])
    code, out = server.run_to_exit()
    assert code != 0 and "user name has a ':' or white space" in out
    assert "Pw3" not in out
    readable = Server(tmp_path / "open", {}, {"mlflow_auth_users": f"{ALICE[0]}:{ALICE[1]}"}, args=["--local"])
    (readable.secrets_dir / "mlflow_auth_users").chmod(0o644)
    readable.start()
    try:
        assert "holds plain passwords and every local account can read it" in readable.logs()
        assert ALICE[1] not in readable.logs()
    finally:
        readable.stop()


def test_every_problem_is_reported_at_once_without_values(tmp_path):
    empty = tmp_path / "empty-secret"
    empty.write_text("\n")
    env = {
        "MLFLOW_BACKEND_STORE_URI": f"mysql://root:{SECRET_PW}@db/mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": "ftp://files.example.com/artifacts",
        "MLFLOW_AUTH_USERS_FILE": str(empty),
        "MLFLOW_REGISTRY_STORE_URI_FILE": str(tmp_path / "does-not-exist"),
        "PORT": "eighty",
    }
    server = Server(tmp_path, env)
    server.env["PORT"] = "eighty"
    code, out = server.run_to_exit()
    assert_refused(
        code, out,
        "MLFLOW_BACKEND_STORE_URI: must be a Postgres URI",
        "MLFLOW_ARTIFACTS_DESTINATION: unknown scheme",
        f"MLFLOW_AUTH_USERS: the file {empty} is empty",
        f"MLFLOW_REGISTRY_STORE_URI: cannot read the file {tmp_path / 'does-not-exist'}",
        "PORT: must be a whole number",
        secrets=(SECRET_PW, "files.example.com"),
    )


def test_name_and_name_file_together_is_an_error(tmp_path, postgres):
    users_file = tmp_path / "users"
    users_file.write_text(USERS_FILE)
    env = {"MLFLOW_AUTH_USERS": f"{ALICE[0]}:{ALICE[1]}", "MLFLOW_AUTH_USERS_FILE": str(users_file),
           "MLFLOW_BACKEND_STORE_URI": postgres.dsn("postgres"), "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path)}
    code, out = Server(tmp_path, env).run_to_exit()
    assert_refused(code, out, "MLFLOW_AUTH_USERS: both $MLFLOW_AUTH_USERS and $MLFLOW_AUTH_USERS_FILE are set",
                   secrets=(ALICE[1], postgres.password))


def test_each_missing_or_empty_secret_file_gives_a_clear_exit(tmp_path, postgres):
    base = {"mlflow_backend_store_uri": postgres.dsn("postgres"),
            "mlflow_artifacts_destination": "gs://bucket/prefix", "mlflow_auth_users": USERS_FILE}
    for name in base:
        # empty file
        server = Server(tmp_path / f"empty-{name}", {}, base)
        (server.secrets_dir / name).write_text("\n")
        code, out = server.run_to_exit()
        assert_refused(code, out, f"{name.upper()}: the file {server.secrets_dir / name} is empty",
                       secrets=(postgres.password, ALICE[1]))
        # missing file
        server = Server(tmp_path / f"missing-{name}", {}, {k: v for k, v in base.items() if k != name})
        code, out = server.run_to_exit()
        assert_refused(code, out, f"{name.upper()}:", secrets=(postgres.password, ALICE[1]))


def test_unreadable_secret_file(tmp_path, postgres):
    if os.geteuid() == 0:
        # root reads any file; a directory in place of the file is unreadable for everyone
        server = Server(tmp_path, {"MLFLOW_BACKEND_STORE_URI_FILE": str(tmp_path)},
                        {"mlflow_artifacts_destination": "gs://b/p", "mlflow_auth_users": USERS_FILE})
    else:
        secret = tmp_path / "uri"
        secret.write_text(postgres.dsn("postgres"))
        secret.chmod(0)
        server = Server(tmp_path, {"MLFLOW_BACKEND_STORE_URI_FILE": str(secret)},
                        {"mlflow_artifacts_destination": "gs://b/p", "mlflow_auth_users": USERS_FILE})
    code, out = server.run_to_exit()
    assert_refused(code, out, "MLFLOW_BACKEND_STORE_URI: cannot read the file", secrets=(postgres.password,))


def test_weak_or_malformed_password_hashes_are_refused(tmp_path, postgres):
    users = "dave:$apr1$abc$0123456789abcdefghij\nerin:$2b$12$not-a-real-hash\n"
    server = Server(tmp_path, {"MLFLOW_AUTH_USERS": users, "MLFLOW_BACKEND_STORE_URI": postgres.dsn("postgres"),
                               "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path)})
    code, out = server.run_to_exit()
    assert_refused(code, out, "user 'dave' uses a weak scheme", secrets=("0123456789abcdefghij",))


def test_check_flag_validates_without_starting(tmp_path, postgres):
    server = Server(tmp_path, {}, {"mlflow_backend_store_uri": postgres.dsn("postgres"),
                                   "mlflow_artifacts_destination": "gs://b/p", "mlflow_auth_users": USERS_FILE},
                    args=["--check"])
    code, out = server.run_to_exit()
    assert code == 0 and "configuration OK" in out, out
