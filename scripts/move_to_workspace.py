"""Move experiments and registered models (prompts too) from one MLflow workspace into another.

MLflow (3.17) has no API for it. When a server turns workspaces on, everything it held is in
the ``default`` workspace; a team's experiments and models move to the team's workspace with:

    .venv/bin/python scripts/move_to_workspace.py --workspace team-a \\
        --experiment 12 --experiment 15 --model churn-classifier [--delete-source]

with ``MLFLOW_BACKEND_STORE_URI`` and ``MLFLOW_ARTIFACTS_DESTINATION`` set as for the server (or
``--backend-store-uri``, ``--artifacts-destination``). It copies each experiment's proxied
artifacts to where MLflow serves them in the workspace (``workspaces/<name>/<path>`` of the
store), then moves the rows in one transaction: the experiment (its runs, traces and logged
models follow it), and each model with its versions, tags and aliases. An experiment made in
the default workspace after workspaces were on records ``mlflow-artifacts:/workspaces/default/...``
locations; those are rewritten to the new workspace (experiment, runs, logged models, traces'
artifact locations, model versions' sources). Move a model together
with the experiments its versions were logged in: their files move with the experiment.
``--delete-source`` removes the old copies of the artifacts once the rows have moved. Run it
while no one writes to what moves (a quiet moment, or the server stopped); a second run after
a failure is safe. Written for MLflow 3.17 (``tests/test_workspaces.py`` runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.config import normalize_backend_uri

MODEL_TABLES = ("registered_models", "model_versions", "registered_model_tags", "model_version_tags",
                "registered_model_aliases")
PROXIED = "mlflow-artifacts:"
# MLflow 3.17's tables and columns that record where an experiment's artifacts are
LOCATIONS_OF_AN_EXPERIMENT = (
    "UPDATE experiments SET artifact_location = REPLACE(artifact_location, :o, :n) "
    "WHERE experiment_id = :id AND artifact_location LIKE :like",
    "UPDATE runs SET artifact_uri = REPLACE(artifact_uri, :o, :n) WHERE experiment_id = :id AND artifact_uri LIKE :like",
    "UPDATE logged_models SET artifact_location = REPLACE(artifact_location, :o, :n) "
    "WHERE experiment_id = :id AND artifact_location LIKE :like",
    "UPDATE trace_tags SET value = REPLACE(value, :o, :n) WHERE value LIKE :like AND request_id IN "
    "(SELECT request_id FROM trace_info WHERE experiment_id = :id)",
)


class MoveError(Exception):
    """Nothing was moved: the message says why."""


def proxied_path(artifact_location: str) -> str | None:
    """The store path of an experiment served through the proxy (``mlflow-artifacts:/12`` -> ``12``)."""
    if not artifact_location.startswith(PROXIED):
        return None
    return artifact_location[len(PROXIED):].lstrip("/")


def target_path(path: str, source: str, workspace: str) -> str:
    """Where MLflow serves ``path`` of the store once its experiment is in ``workspace``."""
    prefix = f"workspaces/{source}/"
    return f"workspaces/{workspace}/{path[len(prefix):] if path.startswith(prefix) else path}"


def copy_artifacts(destination: str, path: str, target: str) -> bool:
    """Copy ``path`` of the store to ``target``; False when it holds nothing."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    source = get_artifact_repository(f"{destination.rstrip('/')}/{path}")
    if not source.list_artifacts():
        return False
    target = get_artifact_repository(f"{destination.rstrip('/')}/{target}")
    with tempfile.TemporaryDirectory() as folder:
        local = source.download_artifacts("", folder)
        target.log_artifacts(local)
    return True


def delete_artifacts(destination: str, path: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(f"{destination.rstrip('/')}/{path}").delete_artifacts()


def move(engine, destination: str, workspace: str, experiments: list[str], models: list[str],
         source: str = "default", delete_source: bool = False) -> list[str]:
    """Move, and return what was done, one line each; raises MoveError before changing anything."""
    from sqlalchemy import text

    done = []
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM workspaces WHERE name = :w"), {"w": workspace}).first() is None:
            raise MoveError(f"the workspace {workspace!r} does not exist: create it first (an admin, in the UI "
                            "or with mlflow.create_workspace)")
        paths = {}
        for experiment in experiments:
            row = conn.execute(text("SELECT name, workspace, artifact_location FROM experiments "
                                    "WHERE experiment_id = :id"), {"id": int(experiment)}).first()
            if row is None or row.workspace not in (source, workspace):
                raise MoveError(f"experiment {experiment} is not in the workspace {source!r}")
            clash = conn.execute(text("SELECT 1 FROM experiments WHERE workspace = :w AND name = :n "
                                      "AND experiment_id != :id"),
                                 {"w": workspace, "n": row.name, "id": int(experiment)}).first()
            if clash:
                raise MoveError(f"{workspace!r} already has an experiment named {row.name!r}: rename one first")
            paths[experiment] = proxied_path(row.artifact_location or "")
        for model in models:
            found = conn.execute(text("SELECT workspace FROM registered_models WHERE name = :n AND workspace IN (:s, :w)"),
                                 {"n": model, "s": source, "w": workspace}).all()
            if not found:
                raise MoveError(f"there is no registered model {model!r} in {source!r}")
            if len(found) > 1:
                raise MoveError(f"{workspace!r} already has a registered model named {model!r}")
    for experiment, path in paths.items():
        if path is not None and copy_artifacts(destination, path, target_path(path, source, workspace)):
            done.append(f"copied the artifacts of experiment {experiment} to {target_path(path, source, workspace)}")
    # locations recorded with the old workspace's prefix name the new one
    old, new = f"{PROXIED}/workspaces/{source}/", f"{PROXIED}/workspaces/{workspace}/"
    rewrite = {"o": old, "n": new, "like": old + "%"}
    with engine.begin() as conn:
        for experiment in experiments:
            by_id = {**rewrite, "id": int(experiment)}
            for statement in LOCATIONS_OF_AN_EXPERIMENT:
                conn.execute(text(statement), by_id)
            conn.execute(text("UPDATE experiments SET workspace = :w WHERE experiment_id = :id"),
                         {"w": workspace, "id": int(experiment)})
            done.append(f"moved experiment {experiment} (its runs, traces and logged models) to {workspace}")
        for model in models:
            for column in ("source", "storage_location"):
                conn.execute(text(f"UPDATE model_versions SET {column} = REPLACE({column}, :o, :n) "  # noqa: S608 - our columns
                                  f"WHERE name = :name AND workspace = :s AND {column} LIKE :like"),
                             {**rewrite, "name": model, "s": source})
            for table in MODEL_TABLES:
                conn.execute(text(f"UPDATE {table} SET workspace = :w WHERE name = :n AND workspace = :s"),  # noqa: S608 - our tables
                             {"w": workspace, "n": model, "s": source})
            done.append(f"moved registered model {model!r} (versions, tags, aliases) to {workspace}")
    if delete_source:
        for experiment, path in paths.items():
            if path:
                delete_artifacts(destination, path)
                done.append(f"deleted the old copy of experiment {experiment}'s artifacts ({path})")
    return done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--from-workspace", default="default")
    parser.add_argument("--experiment", action="append", default=[], help="an experiment id (repeatable)")
    parser.add_argument("--model", action="append", default=[], help="a registered model or prompt name (repeatable)")
    parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"))
    parser.add_argument("--artifacts-destination", default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"))
    parser.add_argument("--delete-source", action="store_true")
    args = parser.parse_args(argv)
    if not args.backend_store_uri or not args.artifacts_destination:
        parser.error("set MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION (or pass them)")
    from sqlalchemy import create_engine

    engine = create_engine(normalize_backend_uri(args.backend_store_uri))
    try:
        for line in move(engine, args.artifacts_destination, args.workspace, args.experiment, args.model,
                         args.from_workspace, args.delete_source):
            print(line)
    except MoveError as exc:
        print(f"move_to_workspace: {exc}; nothing was moved", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
