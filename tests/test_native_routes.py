"""Which requests server/borrowed/native_routes.py hands to MLflow's FastAPI app, decided in-process
against MLflow's real app (the end-to-end answers are in tests/test_parity.py)."""

from __future__ import annotations

import io

import pytest

from server.borrowed.native_routes import NativeRoutes, native_routes, route_table


@pytest.fixture(scope="module")
def routes():
    from mlflow.server import app as flask_app

    def flask_side(environ, start_response):
        start_response("299 Flask", [])
        return [b"flask"]

    return NativeRoutes.from_mlflow(flask_side, flask_app)


def test_the_74_routes_only_fastapi_serves(routes):
    table = route_table(native_routes(routes.fastapi_app))
    assert len(table) == 74
    assert ("POST", "/v1/traces") in table and ("POST", "/ajax-api/3.0/jobs/search") in table
    # what Flask serves itself stays with Flask
    assert not any(path.startswith(("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts", "/health"))
                   for _, path in table)


@pytest.mark.parametrize(("method", "path", "native"), [
    ("POST", "/v1/traces", True),
    ("GET", "/v1/traces", False),  # only POST there: Flask's 404, as under mlflow server
    ("POST", "/ajax-api/3.0/jobs/search", True),
    ("GET", "/ajax-api/3.0/jobs/abc", True),
    ("POST", "/ajax-api/3.0/jobs", False),  # no trailing slash: Flask, as under mlflow server
    ("POST", "/gateway/my-endpoint/mlflow/invocations", True),
    ("GET", "/api/3.0/mlflow/mcp-servers", True),
    ("GET", "/ajax-api/3.0/mlflow/assistant/config", True),
    ("GET", "/health", False),
    ("GET", "/api/3.0/mlflow/server-info", False),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/a/b.bin", False),
    ("GET", "/api/2.0/mlflow/experiments/search", False),
    ("POST", "/v1/traces/../api", False),
])
def test_which_requests_go_to_fastapi(routes, method, path, native):
    assert routes.handles(method, path) is native


def _call(app, environ):
    got = {}
    body = b"".join(app(environ, lambda status, headers, exc=None: got.setdefault("status", status)))
    return got["status"], body


def test_everything_else_reaches_flask_unchanged(routes):
    status, body = _call(routes, {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/2.0/mlflow/experiments/search"})
    assert (status, body) == ("299 Flask", b"flask")


def test_an_unsized_body_larger_than_the_bound_is_refused_before_fastapi(routes, monkeypatch):
    monkeypatch.setattr("server.borrowed.native_routes.MAX_UNSIZED_BODY", 1024)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/traces", "wsgi.input": io.BytesIO(b"x" * 2048),
               "wsgi.input_terminated": True}
    status, body = _call(routes, environ)
    assert status.startswith("413") and b"larger than 1024 bytes" in body
