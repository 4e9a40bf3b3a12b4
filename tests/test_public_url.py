"""MLFLOW_PUBLIC_URL feeds MLflow's Host and Origin checks, as behind Cloud Run."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import ALICE, gcs_server_config
from tests.services import Server

PUBLIC = "https://mlflow.example.test"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
CREATE = "/ajax-api/2.0/mlflow/experiments/create"


@pytest.fixture(scope="module")
def public_server(workdir, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_public")
    env["MLFLOW_PUBLIC_URL"] = f"{PUBLIC}, https://mlflow-abc123-ew.a.run.app/"
    server = Server(workdir / "server-public", env, secrets).start()
    yield server
    server.stop()


def test_public_host_is_accepted(public_server):
    for host in ("mlflow.example.test", "mlflow-abc123-ew.a.run.app", f"127.0.0.1:{public_server.port}"):
        r = requests.get(public_server.url + SEARCH, headers={"Host": host}, auth=ALICE, timeout=10)
        assert r.status_code == 200, (host, r.status_code, r.text[:200])


def test_other_hosts_are_refused(public_server):
    r = requests.get(public_server.url + SEARCH, headers={"Host": "evil.example"}, auth=ALICE, timeout=10)
    assert r.status_code == 403


def test_ui_post_from_the_public_origin_works_and_foreign_origin_does_not(public_server):
    headers = {"Host": "mlflow.example.test", "Origin": PUBLIC, "Content-Type": "application/json"}
    ok = requests.post(public_server.url + CREATE, json={"name": "from-ui"}, headers=headers, auth=ALICE, timeout=10)
    assert ok.status_code == 200, ok.text
    headers["Origin"] = "https://evil.example"
    bad = requests.post(public_server.url + CREATE, json={"name": "evil"}, headers=headers, auth=ALICE, timeout=10)
    assert bad.status_code == 403


def test_without_public_url_a_public_host_is_refused(gcs_server):
    # what every Cloud Run user hits without the setting: MLflow's Host check answers 403
    r = requests.get(gcs_server.url + SEARCH, headers={"Host": "mlflow.example.test"}, auth=ALICE, timeout=10)
    assert r.status_code == 403
