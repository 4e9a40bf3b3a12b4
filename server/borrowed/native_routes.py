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

Which requests go to FastAPI is decided the way Starlette decides it (``RouteMatcher``): a
request goes there when one of those routers matches its method and path fully (the path
against Starlette's own ``compile_path`` pattern of the route); a path that matches with another
method falls through to Flask, as under ``mlflow server`` (its Flask mount catches it).

That decision needs only the routes' table, (path, methods) of each. Importing MLflow's FastAPI
app costs ~0.2 s and ~16 MB (aiohttp, the assistant's providers, the MCP registry's pydantic
models) of every start, for routes most deployments rarely call, so the image build records the
table (``server/borrowed/verdict.py``) and, while that record holds, each worker builds the app
on its first request to one of them (as MLflow loads GraphQL on its first ``/graphql``). The
app built then must have the recorded table, or those routes answer 500 and say why.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

from server.limits.request_limits import RequestRefusedError, read_body, refuse

# A request body without Content-Length (chunked) is read whole before it is handed on, since
# the adapter reads exactly Content-Length bytes; this bounds what such a body may cost.
MAX_UNSIZED_BODY = 32 * 1024 * 1024
# Routers of MLflow's FastAPI app whose paths the Flask app serves itself.
LEFT_TO_FLASK = ("mlflow.server.artifact_router", "mlflow.server.server_info_api")

log = logging.getLogger("server.native_routes")

# (full path, methods) of each route FastAPI serves; a JSON-friendly value the build can record
Table = list[tuple[str, tuple[str, ...]]]


class RoutesChangedError(RuntimeError):
    """The FastAPI app built on first use lacks the routes the gate was set up with."""


def route_prefix(path: str) -> str:
    """The literal start of a route's path, before its first variable."""
    return path.split("{", 1)[0]


class RouteMatcher:
    """Which of a table's routes serves a request, chosen as Starlette's router chooses: the
    first route, in the table's order (the router's), whose path pattern (Starlette's own
    ``compile_path``) and methods both match. A path that matches with another method only is
    not served by it: Starlette goes on to the Flask mount. The dispatch (NativeRoutes) and the
    gate (server/gate/route_access.py) ask the same matcher, so a request is judged by the
    route that serves it.

    Args:
        table: (full path, methods) of each route, in the router's order.
    """

    def __init__(self, table: Table):
        from starlette.routing import compile_path

        self.table = [(path, tuple(methods)) for path, methods in table]
        # a cheap first test on every request: the literal start of each route's path
        self._prefixes = tuple(sorted({route_prefix(path) for path, _ in self.table}))
        self._routes = [(compile_path(path)[0], frozenset(methods), path) for path, methods in self.table]

    def route(self, method: str, path: str) -> str | None:
        """The path (as declared) of the route that serves this request; None: not one of these."""
        if not path.startswith(self._prefixes):
            return None
        for pattern, methods, declared in self._routes:
            if method in methods and pattern.match(path):
                return declared
        return None


class NativeRoutes:
    """Args:
    app: the WSGI app (MLflow's Flask app and our layers) for every other request.
    flask_app: MLflow's Flask app, which ``create_fastapi_app`` mounts under its routers.
    table: (full path, methods) of each route to serve through MLflow's FastAPI app.
    fastapi_app: that app, when already built; None: built in each process on first use, and
        checked to have ``table``.
    """

    def __init__(self, app: Callable, flask_app, table: Table, fastapi_app=None):
        self.app = app
        self.flask_app = flask_app
        self.matcher = RouteMatcher(table)
        self.table = self.matcher.table
        self.fastapi_app = fastapi_app
        self._bridge = None
        self._bridge_pid = None
        self._refusal: RoutesChangedError | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_mlflow(cls, app: Callable, flask_app, recorded: Table | None = None) -> NativeRoutes:
        """With ``recorded`` (the build's table), MLflow's FastAPI app waits for its first request."""
        if recorded is not None:
            return cls(app, flask_app, recorded)
        fastapi_app = _build(flask_app)
        return cls(app, flask_app, table_of(fastapi_app), fastapi_app)

    def handles(self, method: str, path: str) -> bool:
        return self.matcher.route(method, path) is not None

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

                    self._bridge = ASGIMiddleware(self._fastapi_app())
                    self._bridge_pid = pid
        return self._bridge

    def _fastapi_app(self):
        if self._refusal is not None:
            raise self._refusal  # built and refused once in this process: not built again per request
        if self.fastapi_app is None:
            built = _build(self.flask_app)
            if (found := table_of(built)) != self.table:
                missing, extra = sorted(set(self.table) - set(found)), sorted(set(found) - set(self.table))
                log.error("MLflow's FastAPI app does not have the routes recorded at build: missing %s, "
                          "unrecorded %s; its routes answer 500 until the verdict is made again "
                          "(python -m server.borrowed.verdict)", missing, extra)
                self._refusal = RoutesChangedError("MLflow's FastAPI routes differ from the build's record")
                raise self._refusal
            self.fastapi_app = built
            log.info("MLflow's FastAPI app built on its first request (pid %d)", os.getpid())
        return self.fastapi_app


def _build(flask_app):
    from mlflow.server.fastapi_app import create_fastapi_app

    return create_fastapi_app(flask_app)


def table_of(fastapi_app) -> Table:
    """(full path, sorted methods) of each route of ``fastapi_app`` that Flask does not serve;
    a route without methods (a websocket) never matches an HTTP request and is left out."""
    return [(path, tuple(sorted(leaf.methods))) for path, leaf in leaves(native_routes(fastapi_app))
            if getattr(leaf, "methods", None)]


def mlflow_table() -> Table:
    """The table of MLflow's own FastAPI app, as ``mlflow server`` builds it (the build records it)."""
    from mlflow.server import app as flask_app

    return table_of(_build(flask_app))


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
