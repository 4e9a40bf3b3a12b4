"""server.borrowed.unparsed_bodies: a body protobuf cannot parse is a 400, where MLflow's own
app uses it as far as protobuf filled the message and answers 200.

The same requests go to MLflow's own Flask app (``mlflow.server.app``, what ``mlflow server``
serves these routes with) and to ours, each built in a fresh interpreter on a PostgreSQL
database of its own; then what each stored is read back.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from google.protobuf.json_format import ParseError
from mlflow.protos.model_registry_pb2 import CreateRegisteredModel
from mlflow.protos.service_pb2 import LogBatch, SearchRuns
from mlflow.utils.proto_json_utils import parse_dict as mlflow_parse_dict

from server.borrowed import unparsed_bodies
from tests.services import run_app_probe

REQUESTS = """
import json

def post(path, body):
    r = client.post("/api/2.0/mlflow/" + path, json=body, headers=auth)
    return r.status_code, r.get_json() or {}

eid = post("experiments/create", {"name": "typed"})[1]["experiment_id"]
rid = post("runs/create", {"experiment_id": eid})[1]["run"]["info"]["run_id"]
answers = {
    "metric value": post("runs/log-batch", {"run_id": rid, "metrics": [{"key": "typed", "value": "high",
                                                                         "timestamp": 1}]}),
    "param value": post("runs/log-batch", {"run_id": rid, "params": [{"key": "typed", "value": 5}]}),
    "model tag": post("registered-models/create", {"name": "typed", "tags": [{"key": "k", "value": 5}]}),
    "experiment tag": post("experiments/create", {"name": "typed-2", "tags": [{"key": "k", "value": 5}]}),
    "numeric experiment ids": post("runs/search", {"experiment_ids": [int(eid)]}),
    "string experiment ids": post("runs/search", {"experiment_ids": [eid]}),
}
run = client.get(f"/api/2.0/mlflow/runs/get?run_id={rid}", headers=auth).get_json()["run"]["data"]
print(json.dumps({
    "answers": {name: [status, body.get("error_code"), body.get("message", ""), len(body.get("runs", []))]
                for name, (status, body) in answers.items()},
    "typed in the run": sorted(kind for kind in ("metrics", "params")
                               for item in run.get(kind, []) if item["key"] == "typed"),
    "model": client.get("/api/2.0/mlflow/registered-models/get?name=typed", headers=auth).status_code,
    "experiment": client.get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=typed-2",
                             headers=auth).status_code,
}))
"""

# MLflow's own app in a fresh interpreter, configured as `mlflow server` configures it
STOCK_APP = """
import os, sys
os.environ["_MLFLOW_SERVER_FILE_STORE"] = sys.argv[1]
os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = sys.argv[2]
from werkzeug.test import Client
from mlflow.server import app
client, auth = Client(app), {}
"""

REFUSED = ("metric value", "param value", "model tag", "experiment tag", "numeric experiment ids")


@pytest.fixture(scope="module")
def both(postgres, workdir):
    stock_uri = postgres.create_database("unparsed_stock").replace("postgresql://", "postgresql+psycopg2://")
    out = subprocess.run([sys.executable, "-c", STOCK_APP + REQUESTS, stock_uri, str(workdir / "unparsed-stock")],
                         cwd=workdir, capture_output=True, text=True, timeout=180,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    stock = json.loads(out.stdout.strip().splitlines()[-1])
    ours = run_app_probe(REQUESTS, postgres.create_database("unparsed_ours"), workdir / "unparsed-ours")
    return stock, ours


def test_stock_mlflow_uses_such_bodies_as_far_as_they_parsed(both):
    stock, _ = both
    assert all(stock["answers"][name][0] == 200 for name in REFUSED), stock["answers"]
    assert stock["answers"]["numeric experiment ids"][3] == 0  # searched no experiment
    assert stock["typed in the run"] == ["metrics", "params"]
    assert stock["model"] == 200 and stock["experiment"] == 200


def test_ours_refuses_them_naming_the_field_and_stores_nothing(both):
    _, ours = both
    # protobuf's own words: a path for a number, the field names for a string
    fields = {"metric value": ["LogBatch.metrics[0].value"], "param value": ["params field", "value field"],
              "model tag": ["tags field", "value field"], "experiment tag": ["tags field", "value field"],
              "numeric experiment ids": ["experiment_ids field"]}
    for name, words in fields.items():
        status, code, message, _ = ours["answers"][name]
        assert (status, code) == (400, "INVALID_PARAMETER_VALUE"), (name, ours["answers"][name])
        assert all(word in message for word in words), (name, message)
    assert ours["answers"]["string experiment ids"][0] == 200 and ours["answers"]["string experiment ids"][3] == 1
    assert ours["typed in the run"] == []
    assert ours["model"] == 404 and ours["experiment"] == 404


def half_reader(parse):
    """What MLflow's _get_request_message does with a body: parse, and on a ParseError go on."""

    def read(message, body):
        try:
            parse(body, message)
        except ParseError:
            pass
        return message

    return read


@pytest.mark.parametrize(("message", "body"), [
    (LogBatch(), {"metrics": [{"key": "m", "value": "high", "timestamp": 1}]}),
    (CreateRegisteredModel(), {"name": "m", "tags": [{"key": "k", "value": 5}]}),
    (SearchRuns(), {"experiment_ids": [1]}),
])
def test_a_failed_parse_of_any_message_is_refused(message, body):
    from mlflow.exceptions import MlflowException

    read = unparsed_bodies.refusing_unparsed(half_reader(unparsed_bodies.recording_failures(mlflow_parse_dict)))
    with pytest.raises(MlflowException, match=f"The {type(message).__name__} request does not fit the API's types"):
        read(type(message)(), body)


def test_a_parsed_body_passes_and_a_failure_outside_a_read_is_not_kept():
    recording = unparsed_bodies.recording_failures(mlflow_parse_dict)
    read = unparsed_bodies.refusing_unparsed(half_reader(recording))
    message = read(SearchRuns(), {"experiment_ids": ["1"], "max_results": 5})
    assert list(message.experiment_ids) == ["1"] and message.max_results == 5
    with pytest.raises(ParseError):
        recording({"experiment_ids": [1]}, SearchRuns())  # no read watching: raised, not recorded
    assert read(SearchRuns(), {"experiment_ids": ["2"]}).experiment_ids == ["2"]

