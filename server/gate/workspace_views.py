"""MLflow's workspace views as a user of some workspaces sees them, and the start-up line
about workspaces that do not exist.

* MLflow's list of workspaces (``GET .../mlflow/workspaces``) names every workspace, and getting
  one by name answers for any; here both answer as if only the workspaces the user holds a role
  in existed: the list is filtered, and getting another gives MLflow's own "not found", the same
  as for a workspace that does not exist. A user with a server-wide role sees them all.
* An artifact path of the proxy that names another workspace (``workspaces/team-b/...`` in a
  request of ``team-a``) is refused by MLflow with a 400; here with a 403, at the same place
  (MLflow's ``_get_workspace_scoped_repo_path_if_enabled``, after its own path checks), whether
  or not the path exists.
"""

from __future__ import annotations

import json
import logging

from server.gate.roles import Grants

log = logging.getLogger("server.roles")

LIST_VIEW = "_list_workspaces_handler"
GET_VIEW = "_get_workspace_handler"


def visible(grants: Grants | None, name: str) -> bool:
    return grants is not None and grants.in_workspace(name) is not None


def install(mlflow_app) -> None:
    """Wrap MLflow's list and get views of workspaces (their Flask endpoints) and its scoping of
    artifact paths."""
    from flask import request
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from mlflow.server.handlers import catch_mlflow_exception

    from server.gate.role_gate import GRANTS

    list_view = mlflow_app.view_functions[LIST_VIEW]
    get_view = mlflow_app.view_functions[GET_VIEW]

    def list_workspaces(*args, **kwargs):
        response = list_view(*args, **kwargs)
        grants = request.environ.get(GRANTS)
        body = response.get_json(silent=True) if response.status_code == 200 else None
        if isinstance(body, dict) and isinstance(body.get("workspaces"), list):
            body["workspaces"] = [w for w in body["workspaces"] if visible(grants, w.get("name", ""))]
            response.set_data(json.dumps(body))
        return response

    @catch_mlflow_exception
    def get_workspace(workspace_name, *args, **kwargs):
        if not visible(request.environ.get(GRANTS), workspace_name):
            # MLflow's answer for a workspace that does not exist
            raise MlflowException(f"Workspace '{workspace_name}' not found", RESOURCE_DOES_NOT_EXIST)
        return get_view(workspace_name, *args, **kwargs)

    list_workspaces.__name__, get_workspace.__name__ = LIST_VIEW, GET_VIEW
    mlflow_app.view_functions[LIST_VIEW] = list_workspaces
    mlflow_app.view_functions[GET_VIEW] = get_workspace
    _refuse_other_workspaces_paths()


def other_workspace(path: str | None, workspace: str | None) -> str | None:
    """The workspace a proxy path names (``workspaces/<name>/...``) when it is not ``workspace``."""
    parts = (path or "").lstrip("/").split("/", 2)
    if parts[0] == "workspaces" and len(parts) > 1 and parts[1] and parts[1] != workspace:
        return parts[1]
    return None


def _refuse_other_workspaces_paths() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED
    from mlflow.server import handlers
    from mlflow.utils import workspace_context

    scoped = handlers._get_workspace_scoped_repo_path_if_enabled

    def scoped_path(artifact_path):
        if other_workspace(artifact_path, workspace_context.get_request_workspace()) is not None:
            raise MlflowException("Permission denied: the artifact path belongs to another workspace",
                                  PERMISSION_DENIED)
        return scoped(artifact_path)

    handlers._get_workspace_scoped_repo_path_if_enabled = scoped_path


def users_workspaces(users: dict) -> set[str]:
    """The workspaces a users table gives roles in."""
    return {w for user in users.values() for w, _ in user.workspaces}


def iap_workspaces(iap_roles: dict) -> set[str]:
    """The workspaces an IAP roles table gives roles in."""
    return {w for grants in iap_roles.values() for w in grants.workspaces}


def log_unknown(named: set[str], engine, dispose: bool = True) -> None:
    """Log the workspaces roles are given in that MLflow does not have (yet): accepted, as a
    workspace may be created later, but a misspelt name would grant nothing. ``dispose``: drop
    the engine's connections after (gunicorn's master, which serves nothing)."""
    from mlflow.store.workspace.dbmodels.models import SqlWorkspace
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    try:
        with Session(engine) as session:
            existing = {name for (name,) in session.query(SqlWorkspace.name)}
    except SQLAlchemyError as exc:  # the check is advice; the server starts either way
        log.warning("could not list MLflow's workspaces to check the roles given in them: %s", exc.__class__.__name__)
        return
    finally:
        if dispose:
            engine.dispose()
    if missing := sorted(named - existing - {"default"}):
        log.warning("roles are given in %d workspace(s) that do not exist (yet): %s", len(missing), ", ".join(missing))


def checked_on_reload(reload, workspaces_of, engine_of):
    """``reload`` (a WatchedTable's), logging the unknown workspaces each new table names
    (``workspaces_of``: ``users_workspaces`` or ``iap_workspaces``)."""

    def reloaded():
        table = reload()
        if named := workspaces_of(table):
            log_unknown(named, engine_of(), dispose=False)
        return table

    return reloaded
