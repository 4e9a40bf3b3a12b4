"""sm:// references are fetched from Secret Manager (a REST stand-in served by the test)."""

from __future__ import annotations

import requests

from tests.conftest import ALICE, USERS_FILE
from tests.services import Server


def test_settings_from_secret_manager(tmp_path, postgres, gcs, secret_manager):
    uri = postgres.create_database("mlflow_sm")
    secret_manager.secrets["projects/p1/secrets/backend-uri/versions/3"] = uri + "\n"
    secret_manager.secrets["projects/p1/secrets/users/versions/latest"] = USERS_FILE
    env = {
        **gcs.env(),
        "SECRET_MANAGER_ENDPOINT": secret_manager.endpoint,
        "MLFLOW_BACKEND_STORE_URI": "sm://projects/p1/secrets/backend-uri/versions/3",
        "MLFLOW_AUTH_USERS": "sm://projects/p1/secrets/users",
        "MLFLOW_ARTIFACTS_DESTINATION": f"gs://{gcs.bucket}/sm",
    }
    server = Server(tmp_path, env).start()
    try:
        r = requests.post(f"{server.url}/api/2.0/mlflow/experiments/create", json={"name": "sm"},
                          auth=ALICE, timeout=30)
        assert r.status_code == 200, r.text
        assert "/v1/projects/p1/secrets/users/versions/latest:access" in secret_manager.requests
        assert postgres.query("mlflow_sm", "SELECT count(*) FROM experiments WHERE name = 'sm'") == [(1,)]
        assert postgres.password not in server.logs()
    finally:
        server.stop()


def test_missing_secret_manager_secret_stops_start(tmp_path, secret_manager):
    env = {
        "SECRET_MANAGER_ENDPOINT": secret_manager.endpoint,
        "MLFLOW_BACKEND_STORE_URI": "sm://projects/p1/secrets/nope/versions/1",
        "MLFLOW_AUTH_USERS": "sm://not-a-resource-name",
        "MLFLOW_ARTIFACTS_DESTINATION": "gs://b/p",
    }
    code, out = Server(tmp_path, env).run_to_exit()
    assert code == 2, out
    assert "MLFLOW_BACKEND_STORE_URI: cannot read projects/p1/secrets/nope/versions/1 from Secret Manager" in out
    assert "MLFLOW_AUTH_USERS: a Secret Manager reference must look like" in out
