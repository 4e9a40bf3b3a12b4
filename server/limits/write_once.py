"""Write-once artifacts: what is stored stays as it was, except for an admin.

Through the artifact proxy, an artifact path that already exists cannot be overwritten or
deleted (409), and no file may be added under the artifacts a registered model version points
at: a replaced ``model.pkl`` would run its code on every machine that loads the model. Admins
are not held by either rule (to repair or remove). New paths are written as before, so
``log_model``, ``log_artifact(s)`` and the stock client's large-file uploads (one streamed PUT
here: ``server/borrowed/artifact_streaming.py`` turns presigned multipart off) keep working.

The rule wraps MLflow's own views (``PUT``/``DELETE`` of ``mlflow-artifacts/artifacts/<path>``,
``mpu/create``, and the UI's ``upload-artifact``), after MLflow's own path checks. It costs a
look at the bucket and one query of the model versions per upload; a non-admin write is
refused before its body is read. Two uploads racing to the same new path can both pass the
check (the later one wins); the rule is about what was stored before, not about that race.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath

from server.gate import roles
from server.gate.role_gate import DECISION, ROLE

log = logging.getLogger("server.write_once")

GUARDED_VIEWS = ("_upload_artifact", "_delete_artifact_mlflow_artifacts", "_create_multipart_upload_artifact")
UI_UPLOAD_VIEW = "serve_upload_artifact"


def exists(repo, path: str) -> bool:
    """Whether ``path`` (relative to the repository's root) is a stored file or folder."""
    if hasattr(repo, "exists"):  # server/borrowed/artifact_streaming.py's GCS and S3 repositories
        return repo.exists(path)
    if hasattr(repo, "artifact_dir"):  # MLflow's local repository
        return os.path.lexists(os.path.join(repo.artifact_dir, path))
    parent, name = posixpath.split(path.rstrip("/"))
    return any(posixpath.basename(f.path.rstrip("/")) == name for f in repo.list_artifacts(parent or None))


def ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b", "a/b/c"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def location_forms(path: str, destination: str) -> list[str]:
    """How a model version may record the folder ``path`` of the proxied store: through the
    proxy (``mlflow-artifacts:/path``, as this server hands out), or as the bucket's own URI."""
    forms = [f"mlflow-artifacts:/{path}", f"mlflow-artifacts:{path}", f"mlflow-artifacts:///{path}"]
    if "://" in destination:
        forms.append(f"{destination.rstrip('/')}/{path}")
    return [variant for form in forms for variant in (form, form + "/")]


class WriteOnce:
    """Args:
    handlers: ``mlflow.server.handlers`` (its stores and path checks).
    destination: where the proxied artifacts are stored (``MLFLOW_ARTIFACTS_DESTINATION``).
    """

    def __init__(self, handlers, destination: str):
        self._handlers = handlers
        self._destination = destination

    def conflict(self, path: str, deleting: bool = False) -> tuple[str, str] | None:
        """(MLflow error code, why) a non-admin may not write (or delete) ``path``; None when it may."""
        holder = self.model_version_holding(path)
        if holder is not None:
            return "INVALID_STATE", (
                f"{path!r} belongs to version {holder[1]} of the registered model {holder[0]!r}; "
                "a registered model's files are immutable (only an admin may change them)")
        if exists(self._handlers._get_artifact_repo_mlflow_artifacts(), path):
            verb = "deleted" if deleting else "overwritten"
            return "RESOURCE_ALREADY_EXISTS", (
                f"the artifact {path!r} already exists; stored artifacts are write-once and cannot be "
                f"{verb} (only an admin may); log it under a new path")
        return None

    def model_version_holding(self, path: str) -> tuple[str, int] | None:
        """(name, version) of a registered model version whose artifacts hold ``path``."""
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
        from sqlalchemy import or_

        store = self._handlers._get_model_registry_store()
        if not hasattr(store, "ManagedSessionMaker"):
            return None
        candidates = [form for folder in ancestors(path) for form in location_forms(folder, self._destination)]
        with store.ManagedSessionMaker() as session:
            row = (session.query(SqlModelVersion.name, SqlModelVersion.version)
                   .filter(or_(SqlModelVersion.storage_location.in_(candidates), SqlModelVersion.source.in_(candidates)))
                   .filter(SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL)  # a deleted version's row stays
                   .first())
        return (row[0], row[1]) if row else None


def _is_admin() -> bool:
    from flask import request

    return request.environ.get(ROLE) == roles.ADMIN


def _refuse(conflict: tuple[str, str]):
    from flask import Response, request

    code, reason = conflict
    request.environ[DECISION] = "conflict"
    request.environ["server.close_connection"] = True  # the body is not read
    log.warning("refused: user %s: %s", request.environ.get("REMOTE_USER") or "-", reason)
    body = json.dumps({"error_code": code, "message": reason})
    return Response(body, status=409, mimetype="application/json")


def install(settings) -> None:
    from mlflow.server import app as mlflow_app
    from mlflow.server import handlers

    rule = WriteOnce(handlers, settings.artifacts_destination)
    for endpoint in GUARDED_VIEWS:
        mlflow_app.view_functions[endpoint] = _guard_proxy_view(
            handlers, rule, mlflow_app.view_functions[endpoint], deleting=endpoint.startswith("_delete"))
    mlflow_app.view_functions[UI_UPLOAD_VIEW] = _guard_ui_upload(handlers, rule, mlflow_app.view_functions[UI_UPLOAD_VIEW])


def _guard_proxy_view(handlers, rule: WriteOnce, original, deleting: bool):
    @handlers.catch_mlflow_exception
    def guarded(artifact_path):
        if not _is_admin():
            path = handlers._get_workspace_scoped_repo_path_if_enabled(handlers.validate_path_is_safe(artifact_path))
            if conflict := rule.conflict(path, deleting=deleting):
                return _refuse(conflict)
        return original(artifact_path=artifact_path)

    guarded.__name__ = original.__name__
    return guarded


def _guard_ui_upload(handlers, rule: WriteOnce, original):
    """The UI's upload into a run's artifacts (``?run_uuid=&path=``), checked where it lands."""

    @handlers.catch_mlflow_exception
    def guarded():
        from flask import request

        run_id, path = request.args.get("run_uuid"), request.args.get("path")
        if not _is_admin() and run_id and path:
            path = handlers.validate_path_is_safe(path)
            run = handlers._get_tracking_store().get_run(run_id)
            if handlers._is_servable_proxied_run_artifact_root(run.info.artifact_uri):
                stored = posixpath.join(run.info.experiment_id, run.info.run_id, "artifacts", path)
                stored = handlers._get_workspace_scoped_repo_path_if_enabled(stored)
                if conflict := rule.conflict(stored):
                    return _refuse(conflict)
        return original()

    guarded.__name__ = original.__name__
    return guarded
