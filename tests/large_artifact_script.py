"""The stock MLflow client logging and fetching large artifacts, as a training script would.

    python large_artifact_script.py artifact SIZE_MIB OUT.json
    python large_artifact_script.py model SIZE_MIB OUT.json

Only MLFLOW_TRACKING_URI/USERNAME/PASSWORD are set. Writes hashes and sizes to OUT.json; an
exception (e.g. the 413 of a capped front end) exits non-zero with the client's message.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(1024 * 1024):
            digest.update(data)
    return digest.hexdigest()


def artifact(size_mib: int, out: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    work = Path(tempfile.mkdtemp())
    blob = work / f"blob-{size_mib}m.bin"
    with open(blob, "wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(1024 * 1024))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(blob))
    back = MlflowClient().download_artifacts(run.info.run_id, blob.name, tempfile.mkdtemp())
    out.write_text(json.dumps({"sent": sha256(blob), "received": sha256(Path(back)),
                               "size": Path(back).stat().st_size, "run_id": run.info.run_id}))


def model(size_mib: int, out: Path) -> None:
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0, 1.0], [1.0, 0.0]] * 10)
    y = np.array([0, 1] * 10)
    clf = LogisticRegression().fit(X, y)
    clf.ballast_ = np.frombuffer(os.urandom(size_mib * 1024 * 1024), dtype=np.uint8)  # a big model
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(clf, name="model", registered_model_name="big-model")
    loaded = mlflow.sklearn.load_model(f"models:/big-model/{info.registered_model_version}")
    out.write_text(json.dumps({
        "predict": loaded.predict(X[:2]).tolist(),
        "expected": clf.predict(X[:2]).tolist(),
        "ballast_same": bool(np.array_equal(loaded.ballast_, clf.ballast_)),
        "ballast_mib": loaded.ballast_.nbytes / 1024 / 1024,
    }))


if __name__ == "__main__":
    command, size, out_path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    {"artifact": artifact, "model": model}[command](size, out_path)
