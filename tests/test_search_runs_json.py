"""server.borrowed.search_runs_json writes exactly the bytes MLflow's runs/search view writes.

First the writer alone, against ``to_proto`` and the printer, on runs with every kind of value
(int and float metric values, NaN, the infinities, int64 limits, optional metric fields, run
names, empty and missing parts, inputs and outputs) and on values MLflow's stores never give
(which must print, or fail, as through protobuf). Then the server: runs made through the API
(datasets logged as inputs, deleted runs, names from tags), and each request (filters, orders,
view types, pages and their tokens, bad requests) answered by our view and by MLflow's, byte
for byte, in the app the server builds.
"""

from __future__ import annotations

import math

import pytest
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunTag,
)
from mlflow.protos.service_pb2 import SearchRuns

from server.borrowed.json_responses import message_object, message_to_json
from server.borrowed.search_runs_json import page_json, run_object
from server.config import normalize_backend_uri
from tests.services import run_app_probe


def info(**changes) -> RunInfo:
    fields = {"run_id": "r1", "experiment_id": "7", "user_id": "u", "status": "FINISHED", "start_time": 5,
              "end_time": 9, "lifecycle_stage": "active", "artifact_uri": "gs://b/7/r1", "run_name": "name"}
    return RunInfo(**{**fields, **changes})


METRICS = [Metric("a", 1.5, 1, 0), Metric("b", 3, 2, -1), Metric("c", math.nan, 3, 2), Metric("d", math.inf, 4, 3),
           Metric("e", -math.inf, 5, 4), Metric("f", -0.0, 2**63 - 1, -(2**63)), Metric("g", 1e308, 0, 0),
           Metric("h", 5e-324, 0, 0), Metric("i", 2**60 + 1, 0, 0), Metric("j", 0.1 + 0.2, 0, 0),
           Metric("k", 2.0, 0, 0, model_id="m-1", dataset_name="ds", dataset_digest="abc", run_id="r1")]
DATASET = DatasetInput(Dataset("ds", "abc", "local", "{}", "{}", "{}"), [InputTag("mlflow.data.context", "train")])
USUAL = {
    "everything": Run(info(), RunData(METRICS, [Param("p", "1"), Param("q", "")], [RunTag("t", "x"), RunTag("é", "ü\n")]),
                      RunInputs([]), RunOutputs([])),
    "no name, no end, no artifact uri": Run(info(run_name=None, end_time=None, artifact_uri=None), RunData()),
    "end time 0, empty strings": Run(info(end_time=0, artifact_uri="", run_name="", user_id=""), RunData(),
                                     RunInputs([]), RunOutputs([])),
    "no data": Run(info(status="RUNNING"), None),
    "a dataset input": Run(info(), RunData(METRICS[:2]), RunInputs([DATASET]), RunOutputs([])),
    "a model output": Run(info(), RunData(), RunInputs([]), RunOutputs([LoggedModelOutput("m-1", 3)])),
}
UNUSUAL = {  # what no store gives: the writer hands these to protobuf
    "a bool metric value": Run(info(), RunData([Metric("a", True, 1, 0)])),
    "a float step": Run(info(), RunData([Metric("a", 1.0, 1, 2.0)])),
    "a step past int64": Run(info(), RunData([Metric("a", 1.0, 1, 2**63)])),
    "an int value past double": Run(info(), RunData([Metric("a", 10**400, 1, 0)])),
    "a status by number": Run(info(status=3), RunData()),
    "an unknown status": Run(info(status="PAUSED"), RunData()),
    "a float start time": Run(info(start_time=5.0), RunData()),
    "a numeric experiment id": Run(info(experiment_id=7), RunData()),
    "a param value that is a number": Run(info(), RunData([], [Param("p", 5)])),
}


def through_protobuf(run):
    try:
        return message_object(run.to_proto())
    except Exception as exc:
        return type(exc)


def written(run):
    try:
        return run_object(run)
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("name", USUAL)
def test_a_run_is_written_as_the_printer_writes_its_message(name):
    run = USUAL[name]
    assert written(run) == through_protobuf(run)
    assert isinstance(written(run), dict)


@pytest.mark.parametrize("name", UNUSUAL)
def test_values_no_store_gives_print_or_fail_as_through_protobuf(name):
    run = UNUSUAL[name]
    assert written(run) == through_protobuf(run)


@pytest.mark.parametrize("token", [None, "", b"", "eyJvZmZzZXQiOiAxMH0=", b"eyJvZmZzZXQiOiAxMH0="])
def test_the_page_is_the_bytes_of_message_to_json(token):
    for runs in ([], list(USUAL.values())):
        response = SearchRuns.Response()
        response.runs.extend([r.to_proto() for r in runs])
        if token:
            response.next_page_token = token
        assert page_json(runs, token) == message_to_json(response)


SERVER_PROBE = """
import io, json as j
from mlflow.server import app as mlflow_app, handlers
from server.borrowed.search_runs_json import search_runs as ours

def call(path, body):
    r = client.post(path, headers=auth, json=body)
    assert r.status_code == 200, (path, r.status_code, r.get_data(as_text=True))
    return r.get_json()

exp = call("/api/2.0/mlflow/experiments/create", {"name": "pages"})["experiment_id"]
other = call("/api/2.0/mlflow/experiments/create", {"name": "pages-2"})["experiment_id"]
for i in range(60):
    e = exp if i % 6 else other
    body = {"experiment_id": e, "start_time": 1000 + i // 2, "tags": [{"key": "t", "value": f"v{i % 3}"}]}
    if i % 4:
        body["run_name"] = f"run-{i}"
    rid = call("/api/2.0/mlflow/runs/create", body)["run"]["info"]["run_id"]
    metrics = [{"key": "m", "value": [0.5, "NaN", "Infinity", "-Infinity", 3, -0.0, 1e-300][i % 7],
                "timestamp": 10 + i, "step": i - 30}, {"key": "n", "value": i, "timestamp": 1, "step": 0}]
    call("/api/2.0/mlflow/runs/log-batch", {"run_id": rid, "metrics": metrics if i % 5 else [],
         "params": [{"key": "p", "value": str(i % 4)}, {"key": "lr", "value": "1e-3"}],
         "tags": [{"key": "mlflow.runName", "value": f"tagged-{i}"}] if i % 4 == 0 else []})
    if i % 3 == 0:
        call("/api/2.0/mlflow/runs/log-inputs", {"run_id": rid, "datasets": [{"dataset": {
             "name": "train", "digest": f"d{i % 2}", "source_type": "local", "source": "{}", "schema": "{}",
             "profile": "{}"}, "tags": [{"key": "mlflow.data.context", "value": "training"}]}]})
    if i % 7 == 0:
        call("/api/2.0/mlflow/runs/update", {"run_id": rid, "status": "FINISHED", "end_time": 2000 + i})
    if i % 11 == 0:
        call("/api/2.0/mlflow/runs/delete", {"run_id": rid})

requests_ = [
    {"experiment_ids": [exp]},
    {"experiment_ids": [exp, other], "max_results": 1000},
    {"experiment_ids": [exp], "max_results": 7},
    {"experiment_ids": [exp], "max_results": 1, "order_by": ["metrics.m DESC"]},
    {"experiment_ids": [exp], "filter": "params.p = '1'", "order_by": ["attributes.start_time ASC"]},
    {"experiment_ids": [exp], "filter": "metrics.m > 0", "run_view_type": "ALL"},
    {"experiment_ids": [exp, other], "run_view_type": "DELETED_ONLY"},
    {"experiment_ids": [exp], "filter": "tags.t = 'nothing'"},
    {"experiment_ids": ["404"]},
    {"experiment_ids": [exp], "max_results": 50001},
    {"experiment_ids": [exp], "filter": "metrics.m >>> 1"},
    {"experiment_ids": [exp], "order_by": ["nonsense DESC"]},
    {"experiment_ids": exp},
    {"experiment_ids": [exp], "page_token": "not-a-token"},
]
seen = []
for body in requests_:
    token, pages = None, 0
    while True:
        sent = dict(body, **({"page_token": token} if token else {}))
        answers = []
        for view in (ours, handlers._search_runs):
            mlflow_app.view_functions["_search_runs"] = view
            r = client.post("/api/2.0/mlflow/runs/search", headers=auth, json=sent)
            answers.append((r.status_code, r.get_data(as_text=True)))
        mlflow_app.view_functions["_search_runs"] = ours
        seen.append({"body": sent, "ours": answers[0], "mlflow": answers[1]})
        token = j.loads(answers[1][1]).get("next_page_token") if answers[1][0] == 200 else None
        pages += 1
        if not token or pages > 12:
            break
print(j.dumps({"seen": seen, "installed": mlflow_app.view_functions["_search_runs"] is ours}))
"""


def test_the_server_answers_every_search_with_mlflows_bytes(postgres, tmp_path):
    uri = normalize_backend_uri(postgres.create_database("search_runs_json"))
    result = run_app_probe(SERVER_PROBE, uri, tmp_path)
    seen = result["seen"]
    assert result["installed"]
    for case in seen:
        assert case["ours"] == case["mlflow"], case["body"]
    statuses = [case["mlflow"][0] for case in seen]
    assert statuses.count(200) >= 15 and statuses.count(400) >= 4, statuses
    answered = "".join(case["mlflow"][1] for case in seen)
    # (the SQL store keeps the infinities as the largest doubles)
    for shown in ('"NaN"', ':1.7976931348623157e+308', ':-1.7976931348623157e+308', '"dataset_inputs"', '"next_page_token"', '"end_time"',
                  '"lifecycle_stage":"deleted"', '"run_name":"tagged-'):
        assert shown in answered, shown
