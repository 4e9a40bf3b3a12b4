"""Write-once artifacts: what is stored stays as it was, except for an admin.

In this server's artifact store, a path that already exists cannot be overwritten or deleted
(409), and no file may be added under the artifacts a registered model version points at: a
replaced ``model.pkl`` would run its code on every machine that loads the model. Admins are not
held by either rule (to repair or remove). New paths are written as before, so ``log_model``,
``log_artifact(s)`` and the stock client's large-file uploads (one streamed PUT here:
``server/borrowed/artifact_streaming.py`` turns presigned multipart off) keep working.

The rule sits in the artifact repository of the store (``WriteOnceRepository``, mixed into the
class MLflow's registry makes for the destination's scheme), where every write through this
server ends: the proxy's ``PUT``, ``DELETE`` and ``mpu/create``, the UI's upload (whether the
request named the run ``run_uuid`` or ``run_id``), and any handler MLflow adds that stores
through the proxy. It asks the request being served who is writing (the role the gate put in
the WSGI environ). A write outside any request is the server's own (its job runner's) and is
not held. It costs a look at the bucket and one query of the model versions per write; a
streamed upload is refused before its body is read.

A write that passed the check is create-only: two uploads racing to the same new path are
settled by the storage (GCS ``ifGenerationMatch=0``, S3 ``If-None-Match: *``), and the later
one gets the same 409. A local-folder store has no such condition: there the later one wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode

from server.borrowed.artifact_streaming import CREATE_ONLY, ObjectExistsError
from server.gate import roles
from server.gate.role_gate import DECISION, ROLE

log = logging.getLogger("server.write_once")


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

    def conflict(self, repo, path: str, deleting: bool = False) -> tuple[str, str] | None:
        """(MLflow error code, why) a non-admin may not write (or delete) ``path`` of ``repo``;
        None when it may."""
        in_store = self.store_path(repo, path)
        holder = self.model_version_holding(in_store) if in_store is not None else None
        if holder is not None:
            return "INVALID_STATE", (
                f"{path!r} belongs to version {holder[1]} of the registered model {holder[0]!r}; "
                "a registered model's files are immutable (only an admin may change them)")
        if exists(repo, path):
            verb = "deleted" if deleting else "overwritten"
            return "RESOURCE_ALREADY_EXISTS", (
                f"the artifact {path!r} already exists; stored artifacts are write-once and cannot be "
                f"{verb} (only an admin may); log it under a new path")
        return None

    def store_path(self, repo, path: str) -> str | None:
        """``path`` of ``repo`` as a path of the store (``MLFLOW_ARTIFACTS_DESTINATION``), or None
        when the repository is elsewhere."""
        root, here = self._destination.rstrip("/"), repo.artifact_uri.rstrip("/")
        if here == root:
            return path
        if here.startswith(root + "/"):
            return posixpath.join(here[len(root) + 1:], path)
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


class WriteOnceConflict(MlflowException):
    """Answered by MLflow's handlers (``catch_mlflow_exception``) with its error code, as a 409."""

    def get_http_status_code(self):
        return 409  # MLflow answers RESOURCE_ALREADY_EXISTS with a 400


def _held() -> bool:
    """Whether this write is held by the rule: a request is being served, by a non-admin."""
    from flask import has_request_context, request

    return has_request_context() and request.environ.get(ROLE) != roles.ADMIN


def _refuse(conflict: tuple[str, str]):
    from flask import request

    code, reason = conflict
    request.environ[DECISION] = "conflict"
    request.environ["server.close_connection"] = True  # the body is not read
    log.warning("refused: user %s: %s", request.environ.get("REMOTE_USER") or "-", reason)
    return WriteOnceConflict(reason, error_code=ErrorCode.Value(code))


def _joined(folder: str | None, name: str) -> str:
    return posixpath.join(folder, name) if folder else name


class WriteOnceRepository:
    """Mixed in before the store's repository class; ``rule`` is set by ``install``. Each write
    checks the rule, then writes create-only; a delete checks it too."""

    rule: WriteOnce

    def _admit(self, path: str, deleting: bool = False) -> bool:
        """Refuse (raise) a held write that conflicts; True when the write is held."""
        if not _held():
            return False
        if conflict := self.rule.conflict(self, path, deleting=deleting):
            raise _refuse(conflict)
        return True

    @contextlib.contextmanager
    def _creating(self, held: bool, path: str):
        if not held:
            yield
            return
        token = CREATE_ONLY.set(True)
        try:
            yield
        except ObjectExistsError:
            raise _refuse(self.rule.conflict(self, path) or (
                "RESOURCE_ALREADY_EXISTS", f"the artifact {path!r} was stored by another upload just now")) from None
        finally:
            CREATE_ONLY.reset(token)

    def log_artifact(self, local_file, artifact_path=None):
        path = _joined(artifact_path, os.path.basename(local_file))
        with self._creating(self._admit(path), path):
            return super().log_artifact(local_file, artifact_path)

    def log_artifact_from_stream(self, stream, artifact_file_name, artifact_path=None):
        path = _joined(artifact_path, posixpath.basename(artifact_file_name))
        with self._creating(self._admit(path), path):
            return super().log_artifact_from_stream(stream, artifact_file_name, artifact_path)

    def log_artifacts(self, local_dir, artifact_path=None):
        held = _held()
        if held:
            for folder, _, files in os.walk(local_dir):
                for name in files:
                    inner = os.path.relpath(os.path.join(folder, name), local_dir).replace(os.sep, "/")
                    self._admit(_joined(artifact_path, inner))
        with self._creating(held, artifact_path or ""):
            return super().log_artifacts(local_dir, artifact_path)

    def delete_artifacts(self, artifact_path=None):
        self._admit(artifact_path or "", deleting=True)
        return super().delete_artifacts(artifact_path)

    def create_multipart_upload(self, local_file, num_parts=1, artifact_path=None):
        self._admit(_joined(artifact_path, posixpath.basename(local_file)))
        return super().create_multipart_upload(local_file, num_parts, artifact_path)


def install(settings) -> None:
    """Make the repository class MLflow's registry builds for the store's scheme write-once."""
    from mlflow.server import handlers
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
    from mlflow.utils.uri import get_uri_scheme

    from server.borrowed.internals import InternalsChangedError

    scheme = get_uri_scheme(settings.artifacts_destination)
    base = _artifact_repository_registry._registry[scheme]
    if not issubclass(base, WriteOnceRepository):
        guarded = type(f"WriteOnce{base.__name__}", (WriteOnceRepository, base),
                       {"rule": WriteOnce(handlers, settings.artifacts_destination)})
        _artifact_repository_registry.register(scheme, guarded)
    # the proxy's repository is made on first use, from the registry: it must not exist yet
    if handlers._artifact_repo is not None and not isinstance(handlers._artifact_repo, WriteOnceRepository):
        raise InternalsChangedError("write-once artifacts: MLflow made its artifact repository before the rule")
