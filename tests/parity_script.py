"""One user's MLflow 3 session with the stock client, run against any tracking server.

    MLFLOW_TRACKING_URI=... [MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=...] \\
        python tests/parity_script.py OUT.json

Each check records what a user would see (values, counts, statuses, the keys of a body), never
ids, times or host names, so the results of two servers can be compared as they are. A check
that raises records the error's class and HTTP status instead of stopping the script.
tests/test_parity.py runs it against stock ``mlflow server`` and against ours.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import mlflow
import requests
from mlflow import MlflowClient

URI = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
AUTH = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) \
    if os.environ.get("MLFLOW_TRACKING_USERNAME") else None
results: dict[str, object] = {}
state: dict[str, object] = {}


def check(fn):
    name = fn.__name__
    try:
        results[name] = fn()
    except Exception as exc:
        status = re.search(r"error code (\d{3})|status code (\d{3})|\b(\d{3}) Client Error", str(exc))
        code = next((g for g in status.groups() if g), None) if status else None
        results[name] = {"error": type(exc).__name__, "status": code}
        traceback.print_exc()
    return fn


def http(method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, URI + path, auth=AUTH, timeout=60, **kwargs)


def shape(response: requests.Response) -> dict:
    """Status and the top-level keys of a JSON body."""
    try:
        body = response.json()
    except ValueError:
        return {"status": response.status_code, "body": "not json"}
    keys = sorted(body) if isinstance(body, dict) else type(body).__name__
    return {"status": response.status_code, "keys": keys}


def wait_until(fn, timeout: float = 60, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ------------------------------------------------------------------ classic tracking
@check
def classic_run():
    experiment = mlflow.set_experiment("parity")
    state["experiment_id"] = experiment.experiment_id
    with mlflow.start_run(run_name="classic") as run:
        mlflow.log_params({"alpha": "0.5", "layers": "3"})
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8})
        mlflow.set_tags({"team": "parity"})
        mlflow.log_text("hello", "notes/hello.txt")
        mlflow.log_dict({"a": 1}, "config.json")
    state["run_id"] = run.info.run_id
    client = MlflowClient()
    fetched = client.get_run(run.info.run_id)
    history = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    return {
        "params": fetched.data.params,
        "metrics": fetched.data.metrics,
        "team": fetched.data.tags.get("team"),
        "history": history,
        "artifacts": sorted(f.path for f in client.list_artifacts(run.info.run_id)),
        "nested": sorted(f.path for f in client.list_artifacts(run.info.run_id, "notes")),
    }


@check
def search_and_batch():
    client = MlflowClient()
    run = client.create_run(state["experiment_id"])
    client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(f"m{i}", i, 0, i) for i in range(100)],
                     params=[mlflow.entities.Param(f"p{i}", str(i)) for i in range(50)])
    client.set_terminated(run.info.run_id)
    found = client.search_runs([state["experiment_id"]], filter_string="metrics.m99 = 99",
                               order_by=["attributes.start_time DESC"])
    return {"found": len(found), "m42": found[0].data.metrics["m42"] if found else None,
            "all": len(client.search_runs([state["experiment_id"]]))}


@check
def artifacts_round_trip():
    folder = Path(tempfile.mkdtemp())
    (folder / "data.bin").write_bytes(os.urandom(64) * 4096)
    with mlflow.start_run(experiment_id=state["experiment_id"]) as run:
        mlflow.log_artifact(str(folder / "data.bin"), "blobs")
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="blobs/data.bin",
                                                dst_path=str(folder / "down"))
    return {"same": Path(local).read_bytes() == (folder / "data.bin").read_bytes()}


@check
def model_registry():
    import numpy as np
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.0]))
    with mlflow.start_run(experiment_id=state["experiment_id"]):
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="parity-model",
                                        input_example=np.array([[1.0]]))
    client = MlflowClient()
    client.set_registered_model_alias("parity-model", "champion", "1")
    loaded = mlflow.pyfunc.load_model("models:/parity-model@champion")
    logged = mlflow.search_logged_models(experiment_ids=[state["experiment_id"]], output_format="list")
    return {
        "version": info.registered_model_version,
        "prediction": round(float(loaded.predict(np.array([[4.0]]))[0]), 3),
        "alias": client.get_model_version_by_alias("parity-model", "champion").version,
        "logged_models": len(logged),
        "versions": len(client.search_model_versions("name = 'parity-model'")),
    }


# ------------------------------------------------------------------ MLflow 3: tracing
@check
def tracing_spans():
    mlflow.set_experiment(experiment_id=state["experiment_id"])

    @mlflow.trace(name="parity_child", span_type="LLM")
    def child(x):
        return x * 2

    @mlflow.trace(name="parity_root", span_type="CHAIN")
    def root(x):
        return child(x) + 1

    assert root(3) == 7
    trace_id = mlflow.get_last_active_trace_id()
    state["trace_id"] = trace_id
    client = MlflowClient()

    def by_span():
        return mlflow.search_traces(locations=[state["experiment_id"]], filter_string="span.name = 'parity_child'",
                                    return_type="list")

    found = wait_until(by_span, timeout=30)
    trace = client.get_trace(trace_id)
    by_type = mlflow.search_traces(locations=[state["experiment_id"]], filter_string="span.type = 'LLM'",
                                   return_type="list")
    return {
        "by_span_name": len(found),
        "by_span_type": len(by_type),
        "spans": sorted(s.name for s in trace.data.spans),
        "outputs": trace.data.spans[0].outputs if trace.data.spans else None,
    }


@check
def trace_ui_routes():
    trace_id = state["trace_id"]
    one = http("GET", "/ajax-api/3.0/mlflow/traces/get", params={"trace_id": trace_id})
    batch = http("GET", "/ajax-api/3.0/mlflow/traces/batchGet", params={"trace_ids": [trace_id]})
    spans = len(batch.json().get("traces", [{}])[0].get("spans", [])) if batch.ok else None
    return {"get": shape(one), "batchGet": shape(batch), "batch_spans": spans}


@check
def otlp_export():
    now = time.time_ns()
    body = {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "parity"}, "spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "otel_span",
        "kind": 1, "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1_000_000),
        "attributes": [{"key": "k", "value": {"stringValue": "v"}}], "status": {"code": 1}}]}]}]}
    headers = {"Content-Type": "application/json", "x-mlflow-experiment-id": state["experiment_id"]}
    posted = http("POST", "/v1/traces", data=json.dumps(body), headers=headers)
    found = wait_until(lambda: mlflow.search_traces(locations=[state["experiment_id"]],
                                                    filter_string="span.name = 'otel_span'", return_type="list"),
                       timeout=15)
    return {"post": posted.status_code, "found": len(found)}


# ------------------------------------------------------------------ MLflow 3: GenAI
@check
def prompts():
    prompt = mlflow.genai.register_prompt(name="parity-prompt", template="Hello {{name}}!",
                                          commit_message="first")
    mlflow.genai.register_prompt(name="parity-prompt", template="Hi {{name}}!")
    loaded = mlflow.genai.load_prompt("prompts:/parity-prompt/1")
    latest = mlflow.genai.load_prompt("prompts:/parity-prompt@latest")
    return {"version": prompt.version, "formatted": loaded.format(name="Ada"), "latest": latest.version}


@check
def datasets():
    from mlflow.genai.datasets import create_dataset

    dataset = create_dataset(name="parity-dataset", experiment_id=[state["experiment_id"]])
    dataset.merge_records([{"inputs": {"q": "1+1"}, "expectations": {"answer": "2"}},
                           {"inputs": {"q": "2+2"}, "expectations": {"answer": "4"}}])
    return {"records": len(dataset.to_df())}


@check
def scorer_registry():
    from mlflow.genai.scorers import RegexMatch, list_scorers

    # a built-in judge that needs no LLM: custom @scorer code is refused by stock servers too
    RegexMatch(name="has_seven", pattern="7").register(experiment_id=state["experiment_id"])
    listed = http("GET", "/api/3.0/mlflow/scorers/list", params={"experiment_id": state["experiment_id"]})
    state["scorer"] = listed.json()["scorers"][0]["serialized_scorer"]
    return {"names": sorted(s.name for s in list_scorers(experiment_id=state["experiment_id"])),
            "list": shape(listed)}


@check
def scorer_job_from_the_ui():
    """The UI's "Run judge" on a trace: a job the job runner must run to the end."""
    response = http("POST", "/ajax-api/3.0/mlflow/scorer/invoke", json={
        "experiment_id": state["experiment_id"], "serialized_scorer": state["scorer"],
        "trace_ids": [state["trace_id"]], "log_assessments": True})
    if not response.ok:
        return {"invoke": response.status_code}
    job_id = response.json()["jobs"][0]["job_id"]

    def finished():
        job = http("GET", f"/ajax-api/3.0/jobs/{job_id}").json()
        return job if job["status"] in ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED") else None

    job = wait_until(finished, timeout=150, interval=1) or {"status": "still running after 150 s"}
    trace = MlflowClient().get_trace(state["trace_id"])
    return {"invoke": response.status_code, "status": job["status"],
            "assessments": sorted(a.name for a in trace.info.assessments)}


@check
def genai_evaluate():
    from mlflow.genai.scorers import scorer

    @scorer
    def exact(outputs, expectations) -> bool:
        return outputs == expectations["answer"]

    data = [{"inputs": {"q": "1+1"}, "outputs": "2", "expectations": {"answer": "2"}},
            {"inputs": {"q": "2+2"}, "outputs": "5", "expectations": {"answer": "4"}}]
    result = mlflow.genai.evaluate(data=data, scorers=[exact])
    return {"metrics": {k: v for k, v in result.metrics.items() if k.startswith("exact")}}


# ------------------------------------------------------------------ routes only FastAPI serves
@check
def fastapi_routes():
    return {
        "jobs_search": shape(http("POST", "/ajax-api/3.0/jobs/search", json={})),
        "job_missing": http("GET", "/ajax-api/3.0/jobs/no-such-job").status_code,
        "gateway_models": shape(http("GET", "/gateway/mlflow/v1/models")),
        "gateway_unknown_endpoint": http("POST", "/gateway/no-such-endpoint/mlflow/invocations",
                                         json={"messages": []}).status_code,
        "mcp_servers": shape(http("GET", "/api/3.0/mlflow/mcp-servers")),
        "mcp_servers_ajax": shape(http("GET", "/ajax-api/3.0/mlflow/mcp-servers")),
        "assistant_config": http("GET", "/ajax-api/3.0/mlflow/assistant/config").json(),
        "assistant_providers": shape(http("GET", "/ajax-api/3.0/mlflow/assistant/providers")),
        "server_info": shape(http("GET", "/api/3.0/mlflow/server-info")),
        "otlp_get": http("GET", "/v1/traces").status_code,
    }


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
