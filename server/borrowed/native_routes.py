"""Serve the routes only MLflow's FastAPI app has, from our WSGI app.

``mlflow server`` runs ``mlflow.server.fastapi_app:app``: FastAPI routers of its own (OTLP trace
ingestion ``/v1/traces``, the jobs API, AI gateway invocations, the MCP server registry,
assistant sessions), with the Flask app mounted under them for everything else. gunicorn's
gthread worker serves WSGI, and our streaming artifact proxy, HTTP/2 cleartext and shutdown
handling are built on it; so the Flask app stays our app, and a request that one of those
routers would answer is handed to MLflow's own FastAPI app through a2wsgi's ASGI-to-WSGI
adapter. The FastAPI app is MLflow's, built by MLflow's ``create_fastapi_app`` with its own
middleware (Host and CORS checks, workspaces, gateway timing) and exception handlers, so those
routes answer exactly as under ``mlflow server``.

Two of MLflow's routers are left to Flask, which serves the same paths: the artifact router
(ours streams to and from the bucket, ``server/borrowed/artifact_streaming.py``) and the server-info
router (``/health``, ``server-info``).

Which requests go to FastAPI is decided the way Starlette decides it: a request goes there when
one of those routers matches its method and path fully; a path that matches with another
method falls through to Flask, as under ``mlflow server`` (its Flask mount catches it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from server.limits.request_limits import RequestRefusedError, read_body, refuse

# A request body without Content-Length (chunked) is read whole before it is handed on, since
# the adapter reads exactly Content-Length bytes; this bounds what such a body may cost.
MAX_UNSIZED_BODY = 32 * 1024 * 1024
# Routers of MLflow's FastAPI app whose paths the Flask app serves itself.
LEFT_TO_FLASK = ("mlflow.server.artifact_router", "mlflow.server.server_info_api")


def route_prefix(path: str) -> str:
    """The literal start of a route's path, before its first variable."""
    return path.split("{", 1)[0]


class NativeRoutes:
    """Args:
    app: the WSGI app (MLflow's Flask app and our layers) for every other request.
    fastapi_app: MLflow's FastAPI app, as ``create_fastapi_app`` builds it.
    routes: the routes of ``fastapi_app`` to serve through it (Starlette ``BaseRoute`` objects).
    """

    def __init__(self, app: Callable, fastapi_app, routes: list):
        self.app = app
        self.fastapi_app = fastapi_app
        self.routes = routes
        # a cheap first test on every request: the literal start of each route's path
        self._prefixes = tuple(sorted({route_prefix(p) for p in route_paths(routes)}))
        self._bridge = None
        self._bridge_pid = None
        self._lock = threading.Lock()

    @classmethod
    def from_mlflow(cls, app: Callable, flask_app) -> NativeRoutes:
        from mlflow.server.fastapi_app import create_fastapi_app

        fastapi_app = create_fastapi_app(flask_app)
        return cls(app, fastapi_app, native_routes(fastapi_app))

    def handles(self, method: str, path: str) -> bool:
        if not path.startswith(self._prefixes):
            return False
        from starlette.routing import Match

        scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [],
                 "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in self.routes)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not self.handles(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        if not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            try:
                read_body(environ, MAX_UNSIZED_BODY)
            except RequestRefusedError as refusal:
                return refuse(environ, start_response, refusal)
        return self._adapter()(environ, start_response)

    def _adapter(self):
        # a2wsgi runs the ASGI app on an event loop in a thread of its own: one per process,
        # started in the worker (a thread started in gunicorn's master would not survive the fork)
        pid = os.getpid()
        if self._bridge_pid != pid:
            with self._lock:
                if self._bridge_pid != pid:
                    from a2wsgi import ASGIMiddleware

                    self._bridge = ASGIMiddleware(self.fastapi_app)
                    self._bridge_pid = pid
        return self._bridge


def native_routes(fastapi_app) -> list:
    """The routes of MLflow's FastAPI app that the Flask app does not serve."""
    from starlette.routing import Mount

    return [route for route in fastapi_app.router.routes
            if not isinstance(route, Mount)  # the Flask app itself
            and not any(getattr(leaf, "endpoint", None) is not None and leaf.endpoint.__module__ in LEFT_TO_FLASK
                        for _, leaf in leaves([route]))]


def leaves(routes: list, prefix: str = ""):
    """(full path, route) of every endpoint under these routes. FastAPI 0.165 wraps an included
    router in one object (its routes under ``original_router``, the include prefix in
    ``include_context``); a plain route is its own leaf."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is None:
            yield prefix + route.path, route
        else:
            include = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from leaves(original.routes, prefix + include)


def route_paths(routes: list) -> list[str]:
    """Every full path (with the include prefix) of these routes."""
    return [path for path, _ in leaves(routes)]


def route_table(routes: list) -> list[tuple[str, str]]:
    """(method, path) of every route (the tests count and check them)."""
    return [(method, path) for path, leaf in leaves(routes) for method in sorted(getattr(leaf, "methods", None) or ())]
