"""Translate our settings into the environment MLflow's WSGI app reads at import time.

``mlflow server`` passes its options to its workers as ``_MLFLOW_SERVER_*`` variables; serving
``mlflow.server:app`` directly means setting them ourselves, before ``mlflow.server`` is
imported. The hardened defaults (telemetry off, model-version sources restricted, smaller GCS
upload chunks) are set here unless the user set the variable.
"""

from __future__ import annotations

import os
import urllib.parse

from server.borrowed import internals
from server.config import Settings

# Only artifact-store URIs may become a model version's source: blocks the file-read chain
# that registers file:///etc/ or //proc/self/root as a model and downloads it.
# MLflow's prompt registry stores every prompt version as a model version whose source is a
# fixed placeholder (the client and UI send "dummy-source", the store "prompt-template"); MLflow
# checks this regex before it knows the version is a prompt, then requires a prompt's source to
# be exactly a placeholder. A non-prompt version with a placeholder source points at a relative
# path that the server never creates.
SOURCE_REGEX = r"^(mlflow-artifacts:/|runs:/|models:/)|^(dummy-source|prompt-template)$"
GCS_CHUNK_BYTES = 8 * 1024 * 1024  # MLflow's default 100 MiB chunk is held in memory per upload


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _local_origins(port: int) -> list[str]:
    return [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]


def allowed_hosts(settings: Settings, existing: str | None) -> str | None:
    """Host header values MLflow accepts: the public hosts and local access on our port."""
    if not settings.public_urls:
        return existing  # MLflow's defaults: localhost and private addresses
    hosts = _split(existing)
    for url in settings.public_urls:
        parsed = urllib.parse.urlsplit(url)
        hosts += [parsed.hostname, parsed.netloc]
    hosts += [f"localhost:{settings.port}", f"127.0.0.1:{settings.port}", "localhost", "127.0.0.1"]
    return ",".join(dict.fromkeys(h for h in hosts if h))


def allowed_origins(settings: Settings, existing: str | None) -> str | None:
    """Origins whose state-changing requests MLflow accepts (the UI's own POSTs)."""
    if not settings.public_urls:
        return existing
    origins = _split(existing) + list(settings.public_urls) + _local_origins(settings.port)
    return ",".join(dict.fromkeys(origins))


def artifacts_destination(settings: Settings) -> str:
    dest = settings.artifacts_destination
    if "://" in dest:
        return dest
    path = os.path.abspath(dest)
    os.makedirs(path, exist_ok=True)
    return path


def mlflow_environment(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The variables to set for MLflow, given the current environment."""
    env = {
        internals.BACKEND_STORE_URI_ENV_VAR: settings.backend_store_uri,
        internals.ARTIFACT_ROOT_ENV_VAR: settings.default_artifact_root,
        internals.SERVE_ARTIFACTS_ENV_VAR: "true",
        internals.ARTIFACTS_DESTINATION_ENV_VAR: artifacts_destination(settings),
        "_MLFLOW_SGI_NAME": "gunicorn",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(settings.db_pool_size),
    }
    if settings.registry_store_uri:
        env[internals.REGISTRY_STORE_URI_ENV_VAR] = settings.registry_store_uri
    env.update(settings.library_env)
    defaults = {
        "MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX": SOURCE_REGEX,
        "MLFLOW_GCS_UPLOAD_CHUNK_SIZE": str(GCS_CHUNK_BYTES),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(settings.db_pool_size),
        "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "1800",
    }
    for name, value in defaults.items():
        if not environ.get(name):
            env[name] = value
    hosts = allowed_hosts(settings, environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"))
    if hosts:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = hosts
    origins = allowed_origins(settings, environ.get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"))
    if origins:
        env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = origins
    return env


def apply(settings: Settings) -> None:
    os.environ.update(mlflow_environment(settings, dict(os.environ)))
