"""The stock client in MLflow's workspaces, as a team's script uses them (tests/test_workspaces.py).

    python workspace_script.py admin-setup NAME... OUT   create the workspaces; list them
    python workspace_script.py team WORKSPACE TAG OUT    a training session in WORKSPACE
    python workspace_script.py parity TAG OUT            workspace calls compared with stock
    python workspace_script.py job WORKSPACE OUT         the UI's "Run judge" on a trace: a job in WORKSPACE
    python workspace_script.py extras WORKSPACE TAG OUT  a logged model, dataset, assessment, scorer and prompt
The tracking URI and credentials come from the environment. Writes JSON to OUT.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def admin_setup(names: list[str]) -> dict:
    existing = {w.name for w in mlflow.list_workspaces()}
    for name in names:
        if name not in existing:
            mlflow.create_workspace(name, description=f"the {name} team")
    return {"workspaces": sorted(w.name for w in mlflow.list_workspaces())}


def team(workspace: str, tag: str) -> dict:
    mlflow.set_workspace(workspace)
    client = MlflowClient()
    experiment_id = client.create_experiment(f"{workspace}-{tag}")
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_name=f"{workspace}-run") as run:
        mlflow.log_param("team", workspace)
        mlflow.log_metric("secret_metric", 0.42)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "notes.txt"
            path.write_text(f"{workspace} notes {tag}")
            mlflow.log_artifact(str(path))
    model = f"{workspace}-model-{tag}"
    client.create_registered_model(model)
    version = client.create_model_version(model, run.info.artifact_uri, run_id=run.info.run_id)
    with mlflow.start_span(name=f"{workspace}-span") as span:
        span.set_inputs({"q": workspace})
    trace_id = span.trace_id
    artifact_uri = run.info.artifact_uri
    return {"experiment_id": experiment_id, "run_id": run.info.run_id, "model": model, "version": version.version,
            "trace_id": trace_id, "artifact_uri": artifact_uri,
            "experiments": sorted(e.name for e in client.search_experiments())}


def job(workspace: str) -> dict:
    """A judge job run by the server's job runner in ``workspace``, as the UI starts one."""
    import os
    import time

    import requests
    from mlflow.genai.scorers import RegexMatch

    mlflow.set_workspace(workspace)
    experiment_id = MlflowClient().create_experiment(f"judged-{time.time_ns()}")
    mlflow.set_experiment(experiment_id=experiment_id)

    @mlflow.trace(name="judged")
    def seven(x):
        return x + 4

    seven(3)
    trace_id = mlflow.get_last_active_trace_id()
    RegexMatch(name="has_seven", pattern="7").register(experiment_id=experiment_id)
    session = requests.Session()
    session.auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    session.headers["X-MLFLOW-WORKSPACE"] = workspace
    url = os.environ["MLFLOW_TRACKING_URI"]
    scorer = session.get(f"{url}/api/3.0/mlflow/scorers/list", params={"experiment_id": experiment_id},
                         timeout=30).json()["scorers"][0]["serialized_scorer"]
    invoked = session.post(f"{url}/ajax-api/3.0/mlflow/scorer/invoke", timeout=30, json={
        "experiment_id": experiment_id, "serialized_scorer": scorer, "trace_ids": [trace_id], "log_assessments": True})
    invoked.raise_for_status()
    job_id = invoked.json()["jobs"][0]["job_id"]
    deadline, status = time.monotonic() + 150, None
    while time.monotonic() < deadline:
        status = session.get(f"{url}/ajax-api/3.0/jobs/{job_id}", timeout=30).json()["status"]
        if status in ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED"):
            break
        time.sleep(1)
    trace = MlflowClient().get_trace(trace_id)
    return {"job_id": job_id, "status": status, "assessments": sorted(a.name for a in trace.info.assessments)}


def extras(workspace: str, tag: str) -> dict:
    """The GenAI side of a team's work in ``workspace``: what the by-id crossing tests reach for."""
    from mlflow.genai.datasets import create_dataset
    from mlflow.genai.scorers import RegexMatch

    mlflow.set_workspace(workspace)
    experiment_id = MlflowClient().create_experiment(f"{workspace}-genai-{tag}")
    mlflow.set_experiment(experiment_id=experiment_id)
    model = mlflow.initialize_logged_model(name=f"{workspace}-agent-{tag}", experiment_id=experiment_id)
    dataset = create_dataset(name=f"{workspace}-dataset-{tag}", experiment_id=[experiment_id])

    @mlflow.trace(name=f"{workspace}-answer")
    def answer(q):
        return q.upper()

    answer("hi")
    trace_id = mlflow.get_last_active_trace_id()
    feedback = mlflow.log_feedback(trace_id=trace_id, name="quality", value=1)
    RegexMatch(name=f"{workspace}-scorer", pattern="H").register(experiment_id=experiment_id)
    prompt = mlflow.genai.register_prompt(name=f"{workspace}-prompt-{tag}", template="Hello {{name}}")
    return {"experiment_id": experiment_id, "logged_model_id": model.model_id, "dataset_id": dataset.dataset_id,
            "trace_id": trace_id, "assessment_id": feedback.assessment_id, "scorer": f"{workspace}-scorer",
            "prompt": prompt.name}


def parity(tag: str) -> dict:
    """The workspace calls a team's admin makes, with results that do not depend on the server."""
    name = f"ws-{tag}"
    created = mlflow.create_workspace(name, description="parity")
    listed = [w.name for w in mlflow.list_workspaces()]
    got = mlflow.get_workspace(name)
    mlflow.set_workspace(name)
    client = MlflowClient()
    experiment_id = client.create_experiment(f"in-{name}")
    inside = sorted(e.name for e in client.search_experiments())
    mlflow.set_workspace("default")
    outside = [e.name for e in client.search_experiments() if e.name == f"in-{name}"]
    try:
        mlflow.get_workspace(f"missing-{tag}")
        missing = "found"
    except Exception as exc:  # the error the client raises for a workspace that does not exist
        missing = getattr(exc, "error_code", type(exc).__name__)
    return {"created": created.name, "description": got.description, "listed": name in listed and "default" in listed,
            "inside": inside, "outside": outside, "experiment": bool(experiment_id), "missing": missing}


def main() -> None:
    command, *args, out = sys.argv[1:]
    result = {"admin-setup": lambda: admin_setup(args), "team": lambda: team(*args),
              "parity": lambda: parity(*args), "job": lambda: job(*args), "extras": lambda: extras(*args)}[command]()
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
