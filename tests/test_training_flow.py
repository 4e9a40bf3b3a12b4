"""Point 2 of the server issue: a training script with only URI and login does everything,
against Postgres + GCS emulator and against Postgres + S3, artifacts through the proxy."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import ALICE, BOB, CAROL
from tests.services import base_env, run_client

SCRIPT = Path(__file__).with_name("training_script.py")


def run_script(server, user, command: str, name: str, script: Path = SCRIPT) -> dict:
    """Run a client script in a fresh folder and HOME ("another machine"): no cloud credentials."""
    result, out = run_client(script, [command, name], server.url, user)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(out.read_text())


def check_flow(server, user, list_objects):
    name = f"model-{uuid.uuid4().hex[:8]}"
    got = run_script(server, user, "train", name)
    assert got["artifact_uri"].startswith("mlflow-artifacts:/"), got["artifact_uri"]
    assert got["params"] == {"C": "1.0", "solver": "lbfgs", "features": "2", "batch_param": "x"}
    assert got["metrics"]["loss"] == pytest.approx(0.2)
    assert got["metrics"]["acc"] == pytest.approx(0.99)
    assert got["acc_history_len"] == 50
    assert got["tags"] == {"team": "ml", "batch_tag": "y"}
    assert "data.bin" in got["listed"] and "dir" in got["listed"]
    assert got["listed_dir"] == ["dir/data.bin", "dir/nested", "dir/notes.txt"]
    assert got["download_sha256"] == got["upload_sha256"]
    assert got["versions"] == ["1"] and got["alias_version"] == "1"
    assert got["search_runs"] == 1

    loaded = run_script(server, user, "load", name)
    assert loaded["predict"] == got["predict"]

    # the artifacts really are in the object store, under the run's id
    stored = list_objects()
    assert any(got["run_id"] in key and key.endswith("data.bin") for key in stored), stored[:20]
    assert any(key.endswith("model.pkl") or key.endswith("MLmodel") for key in stored)


def test_training_flow_postgres_gcs(gcs_server, gcs):
    check_flow(gcs_server, ALICE, lambda: gcs.list_objects("artifacts/"))


def test_training_flow_postgres_s3(s3_server, s3):
    check_flow(s3_server, BOB, lambda: s3.list_objects("artifacts/"))


def test_legacy_wsgi_auth_credentials_user(gcs_server):
    # WSGI_AUTH_CREDENTIALS (wsgi-basic-auth's variable) keeps working for blog-post deployments
    import requests

    r = requests.get(f"{gcs_server.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                     auth=CAROL, timeout=10)
    assert r.status_code == 200, r.text


def test_client_without_credentials_is_refused(gcs_server):
    env = base_env({"MLFLOW_TRACKING_URI": gcs_server.url, "HOME": tempfile.mkdtemp()})
    code = "import mlflow; mlflow.search_experiments()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "401" in result.stderr
