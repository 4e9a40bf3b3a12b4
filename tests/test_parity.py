"""Parity with stock ``mlflow server``: one user's MLflow 3 session (tests/parity_script.py,
the stock client) run against stock ``mlflow server`` of the pinned version and against ours,
both on PostgreSQL with artifacts in the GCS emulator. Every check must give the same result.

The deliberate differences: ours needs credentials, and without them every route but
``/health`` answers 401 (asserted here for each route only MLflow's FastAPI app serves); and
ours answers the UI's ``users/current`` with the signed-in user and role, which stock answers
404 without MLflow's auth app (tests/test_roles.py checks it). The session's user is an admin
(listed before any [role] section), so roles and write-once change nothing here.
"""

from __future__ import annotations

import pytest
import requests

from tests.conftest import ALICE

CHECKS = [
    "classic_run", "search_and_batch", "artifacts_round_trip", "model_registry",
    "tracing_spans", "trace_ui_routes", "otlp_export",
    "prompts", "datasets", "scorer_registry", "scorer_job_from_the_ui", "genai_evaluate",
    "fastapi_routes",
]


@pytest.mark.parametrize("check", CHECKS)
def test_same_result_as_stock_mlflow_server(parity, check):
    stock, ours = parity.stock_results, parity.our_results
    assert check in stock, f"the script did not record {check}"
    assert ours.get(check) == stock[check]


def test_the_session_really_exercised_mlflow_3(parity):
    """Parity alone would pass if both servers failed alike: the stock results must be the
    working ones (spans stored and searchable, a prompt, a job run to the end)."""
    stock = parity.stock_results
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
def test_routes_only_fastapi_serves_need_credentials(parity, method, path):
    ours = parity.ours
    assert requests.request(method, ours.url + path, timeout=10).status_code == 401
    assert requests.request(method, ours.url + path, auth=(ALICE[0], "wrong"), timeout=10).status_code == 401


def test_a_websocket_handshake_needs_credentials_too(parity):
    # gunicorn serves no WebSocket, and MLflow 3.17 has no WebSocket route; a handshake is an
    # HTTP GET that meets the gate like any other
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for path in ("/", "/ajax-api/3.0/mlflow/assistant/sessions/x/stream", "/v1/traces"):
        assert requests.get(parity.ours.url + path, headers=headers, timeout=10).status_code == 401
