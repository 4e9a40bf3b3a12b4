"""A training script as a user writes it: only MLFLOW_TRACKING_URI/USERNAME/PASSWORD are set.

    python training_script.py train NAME OUT.json   # log everything, register, alias
    python training_script.py load NAME OUT.json    # on "another machine": load by alias

Prints nothing on success; writes what it saw to OUT.json for the test to assert on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def train(name: str, out: Path) -> None:
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from sklearn.linear_model import LogisticRegression

    client = MlflowClient()
    experiment_id = mlflow.create_experiment(f"{name}-experiment")
    mlflow.set_experiment(experiment_id=experiment_id)
    work = Path(tempfile.mkdtemp())
    blob = os.urandom(3 * 1024 * 1024)
    (work / "data.bin").write_bytes(blob)
    (work / "notes.txt").write_text("hello from the training script\n")
    (work / "nested").mkdir()
    (work / "nested" / "deep.json").write_text(json.dumps({"k": 1}))

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.1, 0.9]] * 10)
    y = np.array([0, 1, 1, 0] * 10)
    model = LogisticRegression().fit(X, y)

    with mlflow.start_run(run_name="train") as run:
        run_id = run.info.run_id
        mlflow.log_param("C", 1.0)
        mlflow.log_params({"solver": "lbfgs", "features": 2})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        client.log_batch(
            run_id,
            metrics=[Metric("acc", 0.5 + i / 100, 0, i) for i in range(50)],
            params=[Param("batch_param", "x")],
            tags=[RunTag("batch_tag", "y")],
        )
        mlflow.set_tag("team", "ml")
        mlflow.log_artifact(str(work / "data.bin"))
        mlflow.log_artifacts(str(work), artifact_path="dir")
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        input_example=X[:2])

    with mlflow.start_run(run_name="train-2") as second:
        mlflow.log_param("C", 0.5)
        for step in range(5):
            mlflow.log_metric("loss", 2.0 / (step + 1), step=step)

    version = info.registered_model_version
    client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "stage", "prod")

    run = client.get_run(run_id)
    listed = sorted(f.path for f in client.list_artifacts(run_id))
    listed_dir = sorted(f.path for f in client.list_artifacts(run_id, "dir"))
    download = Path(tempfile.mkdtemp())
    got = client.download_artifacts(run_id, "data.bin", str(download))
    history = client.get_metric_history(run_id, "acc")
    found = client.search_model_versions(f"name='{name}'")
    by_alias = client.get_model_version_by_alias(name, "champion")
    runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string="params.C = '1.0'")
    result = {
        "run_id": run_id,
        "second_run_id": second.info.run_id,
        "experiment_id": experiment_id,
        "artifact_uri": run.info.artifact_uri,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "listed": listed,
        "listed_dir": listed_dir,
        "download_sha256": hashlib.sha256(Path(got).read_bytes()).hexdigest(),
        "upload_sha256": hashlib.sha256(blob).hexdigest(),
        "acc_history_len": len(history),
        "versions": [v.version for v in found],
        "alias_version": by_alias.version,
        "alias_source": by_alias.source,
        "search_runs": len(runs),
        "predict": model.predict(X[:4]).tolist(),
    }
    out.write_text(json.dumps(result))


def load(name: str, out: Path) -> None:
    import mlflow.pyfunc
    import numpy as np

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.1, 0.9]])
    out.write_text(json.dumps({"predict": [int(v) for v in model.predict(X)]}))


if __name__ == "__main__":
    command, model_name, out_path = sys.argv[1:4]
    {"train": train, "load": load}[command](model_name, Path(out_path))
