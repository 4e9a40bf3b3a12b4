"""What each role does with the stock client; only MLFLOW_TRACKING_URI/USERNAME/PASSWORD are set.

    python roles_script.py editor NAME OUT.json   # a GenAI + training session, then its refusals
    python roles_script.py viewer NAME OUT.json   # reads all of it, then tries writes
    python roles_script.py admin NAME OUT.json    # deletes what editors may not

Each refused call is recorded as (HTTP status, message) for the test to assert on.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path


def refusal(call) -> dict:
    """Run ``call``, which the server should refuse; its status and message, or "done"."""
    try:
        call()
    except Exception as exc:  # the stock client raises MlflowException or HTTPError
        text = str(exc)
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None and hasattr(exc, "get_http_status_code"):  # MlflowException: from its error code
            status = exc.get_http_status_code()
        if status is None and (m := re.search(r"\b(40[39])\b", text)):
            status = int(m.group(1))
        return {"status": status, "message": text[:600]}
    return {"status": "done"}


def editor(name: str, out: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = mlflow.create_experiment(f"{name}-experiment")
    mlflow.set_experiment(experiment_id=experiment_id)
    work = Path(tempfile.mkdtemp())
    (work / "notes.txt").write_text("first\n")

    @mlflow.trace(name="answer")
    def answer(question: str) -> str:
        return question.upper()

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.5)
        mlflow.log_param("p", "1")
        mlflow.set_tag("t", "v")
        mlflow.log_artifact(str(work / "notes.txt"))
        answer("hello")
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name=name)
        (work / "notes.txt").write_text("second\n")
        overwrite = refusal(lambda: mlflow.log_artifact(str(work / "notes.txt")))
    with mlflow.start_run() as scratch:
        pass
    client.delete_run(scratch.info.run_id)
    version = info.registered_model_version
    client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "stage", "prod")
    client.set_registered_model_tag(name, "team", "ml")
    prompt = mlflow.genai.register_prompt(name=f"{name}-prompt", template="Hi {{who}}!")
    trace_id = mlflow.get_last_active_trace_id()
    result = {
        "experiment_id": experiment_id,
        "run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "version": version,
        "trace_id": trace_id,
        "prompt_version": prompt.version,
        "overwrite": overwrite,
        "delete_run": client.get_run(scratch.info.run_id).info.lifecycle_stage,
        "delete_experiment": refusal(lambda: client.delete_experiment(experiment_id)),
        "delete_model_version": refusal(lambda: client.delete_model_version(name, version)),
        "delete_registered_model": refusal(lambda: client.delete_registered_model(name)),
    }
    out.write_text(json.dumps(result))


def viewer(name: str, out: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(f"{name}-experiment")
    runs = client.search_runs([experiment.experiment_id])
    run = next(r for r in runs if r.data.metrics)
    download = Path(client.download_artifacts(run.info.run_id, "notes.txt", tempfile.mkdtemp()))
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    traces = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")
    prompt = mlflow.genai.load_prompt(f"prompts:/{name}-prompt/1")
    result = {
        "runs": len(runs),
        "metric": run.data.metrics.get("loss"),
        "artifact": download.read_text(),
        "predict": model.predict(["x"]),
        "traces": [t.info.trace_id for t in traces],
        "span_names": sorted(s.name for t in traces for s in t.data.spans),
        "prompt": prompt.format(who="Ada"),
        "versions": [v.version for v in client.search_model_versions(f"name='{name}'")],
        "create_experiment": refusal(lambda: mlflow.create_experiment(f"{name}-by-viewer")),
        "log_metric": refusal(lambda: client.log_metric(run.info.run_id, "loss", 9.0)),
        "set_tag": refusal(lambda: client.set_tag(run.info.run_id, "t", "changed")),
        "register_prompt": refusal(lambda: mlflow.genai.register_prompt(name=f"{name}-p2", template="x")),
    }
    if isinstance(result["predict"], list) is False:
        result["predict"] = list(result["predict"])
    out.write_text(json.dumps(result, default=str))


def admin(name: str, out: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(f"{name}-experiment")
    client.delete_model_version(name, "1")
    client.delete_registered_model(name)
    client.delete_experiment(experiment.experiment_id)
    result = {"experiment_stage": client.get_experiment(experiment.experiment_id).lifecycle_stage,
              "models": [m.name for m in client.search_registered_models(f"name='{name}'")]}
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    command, model_name, out_path = sys.argv[1:4]
    {"editor": editor, "viewer": viewer, "admin": admin}[command](model_name, Path(out_path))
