"""Turn who the auth layer let in (their grants) into the role that judges this request.

Without MLflow's workspaces, that is the user's server-wide role; a user who holds roles in
workspaces only is refused (403) and told that workspaces are off.

With workspaces on (``MLFLOW_ENABLE_WORKSPACES``), a request belongs to one workspace: the one its
``X-MLFLOW-WORKSPACE`` header names, or MLflow's default workspace when it names none, as MLflow
resolves it. The role is the one the user holds there (the stronger of a server-wide role and a
role in that workspace); with none, 403, the same whether the workspace exists or not. The
header is then rewritten to the workspace the decision was about, so MLflow serves that
workspace and no other, however the client spelled (or repeated) the header. MLflow's stores
keep each workspace's data apart (``README.md``, "Workspaces"): a request reaches only its
workspace's runs, models, traces and artifacts, by id or by path.

Routes that belong to no workspace (``route_access.SERVER_ROUTES``: the UI's shell, server
info, the workspaces themselves, the assistant's settings) are judged by the server-wide role; a
user with roles in workspaces only may read them as a viewer. The UI's account routes answer
with the role held in the request's workspace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from server.gate import roles
from server.gate.role_gate import DECISION, GRANTS, ROLE
from server.gate.route_access import SERVER, RouteAccess
from server.limits.request_limits import RequestRefusedError, refuse

log = logging.getLogger("server.roles")

# environ key: the request's workspace, for the log
WORKSPACE = "mlflow_server.workspace"
HEADER = "HTTP_X_MLFLOW_WORKSPACE"
DEFAULT_WORKSPACE = "default"  # MLflow's DEFAULT_WORKSPACE_NAME


def request_workspace(environ: dict) -> str:
    """The workspace MLflow serves a request in: its header, trimmed, else the default."""
    return (environ.get(HEADER) or "").strip() or DEFAULT_WORKSPACE


class WorkspaceGate:
    """Args:
    app: the WSGI application behind the gate.
    scopes: SERVER or WORKSPACE for each route (``route_access.scopes``).
    enabled: whether MLflow's workspaces are on (as MLflow itself reads it).
    account_paths: the UI's account routes (``server/gate/account.py``): the role in the
        request's workspace, and no refusal (they describe the user, not a workspace's data).
    """

    def __init__(self, app: Callable, scopes: RouteAccess, enabled: bool, account_paths: frozenset[str] = frozenset()):
        self.app = app
        self._scopes = scopes
        self._enabled = enabled
        self._account_paths = account_paths

    def __call__(self, environ: dict, start_response: Callable):
        grants: roles.Grants | None = environ.get(GRANTS)
        if grants is None:  # an open path (GET /health): no user, nothing to decide
            return self.app(environ, start_response)
        if not self._enabled:
            if grants.server is None:
                return self._refuse(environ, start_response, "has roles only in workspaces, and workspaces are "
                                    "off on this server (MLFLOW_ENABLE_WORKSPACES)")
            environ[ROLE] = grants.server
            return self.app(environ, start_response)
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path in self._account_paths:
            environ[ROLE] = grants.in_workspace(request_workspace(environ)) or roles.VIEWER
            return self.app(environ, start_response)
        if self._scopes.level(method, path) == SERVER:
            # a user of some workspace reads the UI's shell and the list of their workspaces
            environ[ROLE] = grants.server or roles.VIEWER
            return self.app(environ, start_response)
        workspace = request_workspace(environ)
        role = grants.in_workspace(workspace)
        if role is None:
            return self._refuse(environ, start_response, f"has no role in the workspace {workspace!r}")
        environ[HEADER] = workspace  # MLflow serves the workspace judged here, whatever was sent
        environ[WORKSPACE] = workspace
        environ[ROLE] = role
        return self.app(environ, start_response)

    def _refuse(self, environ: dict, start_response: Callable, why: str):
        user = environ.get("REMOTE_USER") or "-"
        environ[DECISION] = "denied"
        log.warning("denied: user %s %s", user, why)
        message = f"Permission denied: user {user!r} {why}. Ask an admin for a role there."
        return refuse(environ, start_response, RequestRefusedError("403 Forbidden", message, "PERMISSION_DENIED"))
