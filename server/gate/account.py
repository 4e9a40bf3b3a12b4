"""The UI's account endpoints, answered from who the gate let in and their role.

MLflow's UI asks ``users/current`` to show who is signed in (and to log out), and
``users/current/permissions`` to enable or disable its review and labelling controls per
experiment; stock ``mlflow server`` answers both only with MLflow's own auth app. Here they
describe the signed-in user's role: ``READ`` (viewer), ``EDIT`` (editor) or ``MANAGE`` (admin)
on every experiment. ``is_admin`` of ``users/current`` stays false: it would show MLflow's
user-management pages, and users are managed in the users secret here, not through the UI.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from server.gate import roles
from server.gate.role_gate import DECISION, ROLE

_PERMISSION = {roles.VIEWER: "READ", roles.EDITOR: "EDIT", roles.ADMIN: "MANAGE"}
# environ key: how the user signed in ("basic" or "iap"), set by the auth layer
SIGN_IN = "mlflow_server.sign_in"


def _paths(tail: str) -> frozenset[str]:
    return frozenset(f"/{api}/{version}/mlflow/{tail}" for api in ("api", "ajax-api") for version in ("2.0", "3.0"))


CURRENT = _paths("users/current")
PERMISSIONS = _paths("users/current/permissions")
ROLES_LIST = _paths("users/roles/list")


def current_user(user: str, role: str, sign_in: str) -> dict:
    return {"user": {"id": 0, "username": user, "is_admin": False, "role": role,
                     "experiment_permissions": [], "registered_model_permissions": []},
            "is_basic_auth": sign_in == "basic"}


def permissions(role: str) -> dict:
    return {"is_admin": role == roles.ADMIN,
            "permissions": [{"resource_type": "experiment", "resource_pattern": "*",
                             "permission": _PERMISSION[role], "workspace": "default"}]}


class AccountRoutes:
    """Args:
    app: the WSGI application for every other request.
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable):
        path = environ.get("PATH_INFO", "")
        user, role = environ.get("REMOTE_USER"), environ.get(ROLE)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or not user or not role:
            return self.app(environ, start_response)
        if path in CURRENT:
            answer = current_user(user, role, environ.get(SIGN_IN, "basic"))
        elif path in PERMISSIONS:
            answer = permissions(role)
        elif path in ROLES_LIST:
            answer = {"roles": []}  # MLflow's workspace roles: none here
        else:
            return self.app(environ, start_response)
        environ[DECISION] = "allowed"
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body] if environ.get("REQUEST_METHOD") == "GET" else []
