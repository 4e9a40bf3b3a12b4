"""Parity with stock ``mlflow server``: one user's MLflow 3 session (tests/parity_script.py,
the stock client) run against stock ``mlflow server`` of the pinned version and against ours,
both on PostgreSQL with artifacts in the GCS emulator. Every check must give the same result.

The one deliberate difference: ours needs credentials, and without them every route but
``/health`` answers 401 (asserted here for each route only MLflow's FastAPI app serves).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from tests.conftest import ALICE, OUTPUT, USERS_FILE
from tests.services import ROOT, Server, StockServer, base_env

SCRIPT = ROOT / "tests" / "parity_script.py"


def run_session(url: str, out, credentials=None) -> dict:
    env = base_env({"MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"})
    if credentials:
        env.update(MLFLOW_TRACKING_USERNAME=credentials[0], MLFLOW_TRACKING_PASSWORD=credentials[1])
    done = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=out.parent)
    (out.parent / f"{out.stem}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def sessions(workdir, postgres, gcs):
    """The same session against both servers, each on a database and a bucket folder of its own."""
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the locks have psycopg2 (as a user of
    # stock MLflow finds out, and writes the driver into the URI)
    stock_db = postgres.create_database("parity_stock").replace("postgresql://", "postgresql+psycopg2://")
    stock = StockServer(workdir / "parity-stock", stock_db,
                        f"gs://{gcs.bucket}/parity-stock", env=gcs.env())
    ours = Server(workdir / "parity-ours", gcs.env(), {
        "mlflow_backend_store_uri": postgres.create_database("parity_ours"),
        "mlflow_artifacts_destination": f"gs://{gcs.bucket}/parity-ours",
        "mlflow_auth_users": USERS_FILE})
    OUTPUT.mkdir(exist_ok=True)
    try:
        stock.start()
        ours.start()
        got_stock = run_session(stock.url, OUTPUT / "parity-stock.json")
        got_ours = run_session(ours.url, OUTPUT / "parity-ours.json", ALICE)
        yield got_stock, got_ours, ours
    finally:
        ours.stop()
        stock.stop()
        for server, name in ((ours, "parity-ours-server.log"), (stock, "parity-stock-server.log")):
            if server.log.exists():
                (OUTPUT / name).write_text(server.log.read_text(errors="replace"))


CHECKS = [
    "classic_run", "search_and_batch", "artifacts_round_trip", "model_registry",
    "tracing_spans", "trace_ui_routes", "otlp_export",
    "prompts", "datasets", "scorer_registry", "scorer_job_from_the_ui", "genai_evaluate",
    "fastapi_routes",
]


@pytest.mark.parametrize("check", CHECKS)
def test_same_result_as_stock_mlflow_server(sessions, check):
    stock, ours, _ = sessions
    assert check in stock, f"the script did not record {check}"
    assert ours.get(check) == stock[check]


def test_the_session_really_exercised_mlflow_3(sessions):
    """Parity alone would pass if both servers failed alike: the stock results must be the
    working ones (spans stored and searchable, a prompt, a job run to the end)."""
    stock, _, _ = sessions
    assert stock["tracing_spans"]["by_span_name"] == 1 and stock["tracing_spans"]["spans"] == [
        "parity_child", "parity_root"]
    assert stock["trace_ui_routes"]["batch_spans"] == 2
    assert stock["otlp_export"] == {"post": 200, "found": 1}
    assert stock["prompts"]["formatted"] == "Hello Ada!"
    assert stock["scorer_job_from_the_ui"]["status"] == "SUCCEEDED"
    assert stock["scorer_job_from_the_ui"]["assessments"] == ["has_seven"]
    assert stock["model_registry"]["prediction"] == 8.0
    assert stock["fastapi_routes"]["jobs_search"]["status"] == 200


NATIVE = [("POST", "/v1/traces"), ("POST", "/ajax-api/3.0/jobs/search"), ("GET", "/ajax-api/3.0/jobs/x"),
          ("GET", "/gateway/mlflow/v1/models"), ("GET", "/api/3.0/mlflow/mcp-servers"),
          ("GET", "/ajax-api/3.0/mlflow/assistant/config"), ("POST", "/ajax-api/3.0/mlflow/assistant/message")]


@pytest.mark.parametrize(("method", "path"), NATIVE)
def test_routes_only_fastapi_serves_need_credentials(sessions, method, path):
    *_, ours = sessions
    assert requests.request(method, ours.url + path, timeout=10).status_code == 401
    assert requests.request(method, ours.url + path, auth=(ALICE[0], "wrong"), timeout=10).status_code == 401
