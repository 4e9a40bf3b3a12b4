"""Which requests server/borrowed/native_routes.py hands to MLflow's FastAPI app, decided in-process
against MLflow's real app (the end-to-end answers are in tests/test_parity.py), both with the app
built at start and with it built on first use from the build's record of its routes."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from server.borrowed.native_routes import NativeRoutes, RouteMatcher, RoutesChangedError, mlflow_table
from tests.services import ROOT


def flask_side(environ, start_response):
    start_response("299 Flask", [])
    return [b"flask"]


@pytest.fixture(scope="module", params=["built at start", "built on first use"])
def routes(request):
    from mlflow.server import app as flask_app

    recorded = json.loads(json.dumps(mlflow_table())) if request.param == "built on first use" else None
    return NativeRoutes.from_mlflow(flask_side, flask_app, recorded)


def test_the_74_routes_only_fastapi_serves(routes):
    table = [(method, path) for path, methods in routes.table for method in methods]
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


# A literal route and a variable one that both match ``/x/endpoints``, in both orders: Starlette
# serves the first in the router's order, whichever kind it is.
SHADOWED = [("/x/{name:path}", ("GET", "HEAD")), ("/x/endpoints", ("GET", "HEAD", "POST")),
            ("/x/{name}/versions/{version}", ("DELETE",)), ("/v1/traces", ("POST",))]


@pytest.mark.parametrize("table", [SHADOWED, SHADOWED[::-1]], ids=["variable first", "literal first"])
def test_the_route_matched_is_the_one_starlette_serves(table):
    """A contract with Starlette's router: the route RouteMatcher names for a request (the one
    the gate judges it by) is the route Starlette dispatches it to, with Flask's mount last."""
    from a2wsgi import ASGIMiddleware
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    def answering(declared):
        return lambda request: PlainTextResponse(declared)

    routes = [Route(path, answering(path), methods=list(methods)) for path, methods in table]
    served = ASGIMiddleware(Starlette(routes=[*routes, Mount("/", app=PlainTextResponse("flask"))]))
    matcher = RouteMatcher(table)
    requests = [("GET", "/x/endpoints"), ("POST", "/x/endpoints"), ("GET", "/x/a/b"), ("DELETE", "/x/a/versions/2"),
                ("DELETE", "/x/a/b/versions/2"), ("GET", "/x/a/versions/2"), ("POST", "/v1/traces"),
                ("GET", "/v1/traces"), ("HEAD", "/x/endpoints"), ("GET", "/y")]
    for method, path in requests:
        status, body = _call(served, {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "localhost",
                                      "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http"})
        assert status.startswith("200"), (method, path, status)
        expected = None if body in (b"flask", b"") else body.decode()
        assert matcher.route(method, path) == expected, (method, path)
    # the order decides: the first route that matches serves
    assert matcher.route("GET", "/x/endpoints") == ("/x/{name:path}" if table is SHADOWED else "/x/endpoints")


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


def _json_call(app, method: str, path: str, body: bytes = b""):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "HTTP_HOST": "localhost", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr}
    return _call(app, environ)


def test_with_the_record_fastapi_is_imported_by_the_first_request_it_serves():
    """A fresh process: routing to Flask leaves MLflow's FastAPI app unimported; the first request
    to one of its routes builds it and is answered by it (its own 422 for a body that is no JSON)."""
    script = textwrap.dedent("""
        import json, sys
        from server.borrowed.native_routes import NativeRoutes
        from mlflow.server import app as flask_app
        from tests.test_native_routes import _json_call, flask_side
        recorded = json.loads(sys.stdin.read())
        native = NativeRoutes.from_mlflow(flask_side, flask_app, recorded)
        answers = [_json_call(native, "GET", "/api/2.0/mlflow/experiments/search")[0],
                   "mlflow.server.fastapi_app" in sys.modules]
        status, body = _json_call(native, "POST", "/ajax-api/3.0/jobs/search", b"{not json")
        answers += [status, json.loads(body)["detail"][0]["type"], "mlflow.server.fastapi_app" in sys.modules]
        print(json.dumps(answers))
    """)
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], input=json.dumps(mlflow_table()),
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [
        "299 Flask", False, "422 Unprocessable Entity", "json_invalid", True]


def test_an_app_without_the_recorded_routes_serves_none_of_them(caplog):
    from mlflow.server import app as flask_app

    recorded = [*mlflow_table(), ("/v1/recorded-only", ("POST",))]
    native = NativeRoutes.from_mlflow(flask_side, flask_app, recorded)
    assert native.handles("POST", "/v1/recorded-only")
    with caplog.at_level(logging.ERROR, logger="server.native_routes"), pytest.raises(RoutesChangedError):
        _json_call(native, "POST", "/v1/traces")
    assert "missing [('/v1/recorded-only', ('POST',))]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="server.native_routes"), pytest.raises(RoutesChangedError):
        _json_call(native, "POST", "/v1/traces")  # refused again without building the app again
    assert caplog.text == ""
    assert _json_call(native, "GET", "/health") == ("299 Flask", b"flask")  # Flask's routes still answer
