"""Refuse the requests a user's role does not allow: 403 with a message naming the role.

The auth layer (``server/gate/auth.py``) puts the user's role in the environ; the level each request
needs comes from :class:`server.gate.route_access.RouteAccess`, built once at start-up, so a
decision is a dict lookup (a route match for paths with variables) and never a database read.
Each request's decision goes into the environ for the access log; a refused write is also
logged at warning, with the user and the role.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from server.gate import roles
from server.gate.route_access import RouteAccess
from server.limits.request_limits import RequestRefusedError, refuse

log = logging.getLogger("server.roles")

# environ keys: set by the auth layer (role) and here (decision), read by the access log
ROLE = "mlflow_server.role"
DECISION = "mlflow_server.decision"
GRANTS = "mlflow_server.grants"  # set by the auth layer: the user's roles, server-wide and per workspace


class RoleGate:
    """Args:
    app: the WSGI application behind the gate.
    access: the level each route needs.
    """

    def __init__(self, app: Callable, access: RouteAccess):
        self.app = app
        self._access = access

    def __call__(self, environ: dict, start_response: Callable):
        # no role: a request the auth layer let through without a user (GET /health); it may read
        role = environ.get(ROLE) or roles.VIEWER
        if role != roles.ADMIN:
            method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
            if not roles.allows(role, self._access.level(method, path)):
                return self._refuse(environ, start_response, role, method, path)
        environ.setdefault(DECISION, "allowed")
        return self.app(environ, start_response)

    def _refuse(self, environ: dict, start_response: Callable, role: str, method: str, path: str):
        user = environ.get("REMOTE_USER") or "-"
        environ[DECISION] = "denied"
        log.warning("denied: user %s with the role %s may not %s %s", user, role, method, path)
        refusal = RequestRefusedError("403 Forbidden", roles.refusal(user, role, method, path), "PERMISSION_DENIED")
        return refuse(environ, start_response, refusal)  # JSON, as MLflow answers; the body is not read
