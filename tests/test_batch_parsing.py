"""server.borrowed.batch_parsing fills a LogBatch exactly as MLflow's parse_dict does.

MLflow's parse_dict is the oracle: each body goes through both into a fresh LogBatch; both must
raise the same error or none, and leave the same message (serialised bytes), since MLflow's
handler goes on with whatever a failed parse left. Each body also says which path it must take,
so the fast path is what the plain cases measure. The last test runs the built app.
"""

from __future__ import annotations

import math

import pytest
from mlflow.protos.service_pb2 import LogBatch, LogMetric
from mlflow.utils.proto_json_utils import parse_dict as mlflow_parse_dict

from server.borrowed import batch_parsing
from tests.services import run_app_probe

T0 = 1_700_000_000_000
RUN = "a" * 32


def metric(key="loss", value=0.5, timestamp=T0, step=3, **extra):
    return {"key": key, "value": value, "timestamp": timestamp, "step": step, **extra}


# (label, body, takes the fast path)
BODIES = [
    ("plain", {"run_id": RUN, "metrics": [metric(), metric("acc", 1, T0 + 1, 0)]}, True),
    ("no step", {"run_id": RUN, "metrics": [{"key": "m", "value": 2.5, "timestamp": 5}]}, True),
    ("with params and tags", {"run_id": RUN, "params": [{"key": "p", "value": "v"}],
                              "metrics": [metric()], "tags": [{"key": "t", "value": "ü"}]}, True),
    ("edges of the plain ranges", {"run_id": RUN, "metrics": [
        metric(value=-0.0), metric(value=1e308), metric(value=-5e-324), metric(value=2**53),
        metric(value=-(2**53)), metric(timestamp=-(2**63), step=2**63 - 1), metric(timestamp=0, step=-1)]}, True),
    ("run_uuid spelling", {"run_uuid": RUN, "metrics": [metric()]}, True),
    ("empty metrics", {"run_id": RUN, "metrics": []}, True),
    ("many", {"run_id": RUN, "metrics": [metric(f"k{i % 50}", i * 0.25, T0 + i, i) for i in range(1000)]}, True),
    # each of these goes down MLflow's path
    ("no metrics", {"run_id": RUN, "params": [{"key": "p", "value": "v"}]}, False),
    ("metrics not a list", {"run_id": RUN, "metrics": {"key": "m"}}, False),
    ("a metric not a dict", {"run_id": RUN, "metrics": [metric(), "m"]}, False),
    ("a bool value", {"run_id": RUN, "metrics": [metric(value=True)]}, False),
    ("a string value", {"run_id": RUN, "metrics": [metric(value="1.5")]}, False),
    ("quoted NaN", {"run_id": RUN, "metrics": [metric(value="NaN")]}, False),
    ("a NaN number", {"run_id": RUN, "metrics": [metric(value=math.nan)]}, False),
    ("an infinite number", {"run_id": RUN, "metrics": [metric(value=-math.inf)]}, False),
    ("an integer value beyond 2**53", {"run_id": RUN, "metrics": [metric(value=2**53 + 1)]}, False),
    ("a value beyond a double", {"run_id": RUN, "metrics": [metric(value=10**400)]}, False),
    ("null value", {"run_id": RUN, "metrics": [metric(value=None)]}, False),
    ("a float timestamp", {"run_id": RUN, "metrics": [metric(timestamp=1.0)]}, False),
    ("a fractional step", {"run_id": RUN, "metrics": [metric(step=1.5)]}, False),
    ("a string step", {"run_id": RUN, "metrics": [metric(step="7")]}, False),
    ("a bool step", {"run_id": RUN, "metrics": [metric(step=False)]}, False),
    ("int64 overflow", {"run_id": RUN, "metrics": [metric(timestamp=2**63)]}, False),
    ("int64 underflow", {"run_id": RUN, "metrics": [metric(step=-(2**63) - 1)]}, False),
    ("a key not a string", {"run_id": RUN, "metrics": [metric(key=5)]}, False),
    ("a non-ASCII key", {"run_id": RUN, "metrics": [metric(key="ütf")]}, False),
    ("an unpaired surrogate", {"run_id": RUN, "metrics": [metric(key="\ud800")]}, False),
    ("a missing timestamp", {"run_id": RUN, "metrics": [{"key": "m", "value": 1.0}]}, False),
    ("a field protobuf ignores", {"run_id": RUN, "metrics": [metric(extra_field=1)]}, False),
    ("a model id", {"run_id": RUN, "metrics": [metric(model_id="m-1")]}, False),
    ("camelCase field", {"run_id": RUN, "metrics": [metric(datasetName="d")]}, False),
    # the rest of the body fails: MLflow's handler then goes on with what ParseDict filled before
    ("a bad param after the metrics", {"run_id": RUN, "metrics": [metric()], "params": [{"key": 1}]}, False),
    ("a bad param before the metrics", {"run_id": RUN, "params": [{"key": 1}], "metrics": [metric()]}, False),
    ("run_id not a string", {"run_id": 7, "metrics": [metric()]}, False),
    ("tags not a list", {"metrics": [metric()], "tags": "t"}, False),
]


def parsed(parse, body) -> tuple[str | None, bytes]:
    message = LogBatch()
    try:
        parse(body, message)
        error = None
    except Exception as exc:  # the oracle's error, whatever it is, must be ours too
        error = f"{type(exc).__name__}: {exc}"
    return error, message.SerializeToString(deterministic=True)


@pytest.mark.parametrize(("body", "fast"), [pytest.param(b, f, id=label) for label, b, f in BODIES])
def test_same_message_and_error_as_mlflow(body, fast, monkeypatch):
    calls = []
    monkeypatch.setattr(batch_parsing.proto_json_utils, "parse_dict",
                        lambda js, message: (calls.append(js), mlflow_parse_dict(js, message))[1])
    assert parsed(batch_parsing.parse_dict, body) == parsed(mlflow_parse_dict, body)
    whole_body_to_mlflow = calls[-1] is body  # the fast path hands MLflow a copy without the metrics
    assert whole_body_to_mlflow is not fast


def test_the_fast_path_fills_the_metrics():
    message = LogBatch()
    batch_parsing.parse_dict({"run_id": RUN, "metrics": [metric("m", 2, T0, 9)]}, message)
    assert [(m.key, m.value, m.timestamp, m.step) for m in message.metrics] == [("m", 2.0, T0, 9)]
    assert message.run_id == RUN


def test_other_messages_keep_mlflow_parse():
    body = {"run_id": RUN, "key": "m", "value": 1, "timestamp": T0, "step": 1}
    assert parsed(batch_parsing.parse_dict, body) == parsed(mlflow_parse_dict, body)
    ours, theirs = LogMetric(), LogMetric()
    batch_parsing.parse_dict(body, ours)
    mlflow_parse_dict(body, theirs)
    assert ours == theirs and ours.value == 1.0


def test_plain_metrics_decision():
    assert batch_parsing.plain_metrics([metric(), {"key": "k", "value": 1, "timestamp": 0}])
    assert not batch_parsing.plain_metrics(None)
    assert not batch_parsing.plain_metrics((metric(),))
    assert not batch_parsing.plain_metrics([metric(value=float("nan"))])


APP_PROBE = """
from mlflow.server import handlers
from server.borrowed import batch_parsing
exp = client.post("/api/2.0/mlflow/experiments/create", json={"name": "e"}, headers=auth).get_json()
run_id = client.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp["experiment_id"]},
                     headers=auth).get_json()["run"]["info"]["run_id"]
metrics = [{"key": f"k{i % 10}", "value": i / 4, "timestamp": 1000 + i, "step": i} for i in range(1000)]
logged = client.post("/api/2.0/mlflow/runs/log-batch", headers=auth, json={"run_id": run_id, "metrics": metrics})
bad = [client.post("/api/2.0/mlflow/runs/log-batch", headers=auth, json={"run_id": run_id, "metrics": items})
       for items in ([{"key": "k0", "value": 1.0}], [{"key": "k0", "value": 1.0, "timestamp": 1, "step": 0},
                                                     {"key": "k1", "value": 1.0, "timestamp": -5}])]
half = [client.post("/api/2.0/mlflow/runs/log-batch", headers=auth, json={"run_id": run_id, **body})
        for body in ({"metrics": [{"key": "typed", "value": "high", "timestamp": 1}]},
                     {"params": [{"key": "typed", "value": 5}]},
                     {"metrics": [{"key": "typed", "value": 1.0, "timestamp": 1, "step": "x"}],
                      "tags": [{"key": "typed", "value": "v"}]})]
stored = client.get(f"/api/2.0/mlflow/runs/get?run_id={run_id}", headers=auth).get_json()["run"]["data"]
history = client.get(f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=k3&max_results=1000",
                     headers=auth).get_json()["metrics"]
# the refusal (server/borrowed/unparsed_bodies.py) watches our parse: installed under it
print(json.dumps({"installed": handlers.parse_dict.wrapped is batch_parsing.parse_dict, "status": logged.status_code,
                  "bad": [(b.status_code, b.get_json()["error_code"], b.get_json()["message"]) for b in bad],
                  "history": sorted((m["step"], m["value"], m["timestamp"]) for m in history),
                  "half": [(h.status_code, h.get_json()["error_code"], h.get_json()["message"]) for h in half],
                  "typed": [e["key"] for kind in ("metrics", "params", "tags") for e in stored.get(kind, [])
                            if e["key"] == "typed"]}))
"""


def test_the_server_parses_log_batch_with_it(postgres, tmp_path):
    result = run_app_probe(APP_PROBE, postgres.create_database("batch_parsing_server"), tmp_path)
    assert result["installed"] is True
    assert result["status"] == 200
    missing, negative = result["bad"]
    assert missing[:2] == [400, "INVALID_PARAMETER_VALUE"] and "metrics[0].timestamp" in missing[2]
    assert negative[:2] == [400, "INVALID_PARAMETER_VALUE"] and "metrics[1]" in negative[2]
    assert result["history"] == [[i, i / 4, 1000 + i] for i in range(3, 1000, 10)]


def test_a_half_parsed_batch_is_refused_and_stores_nothing(postgres, tmp_path):
    # MLflow stores such a batch as far as protobuf parsed it (a value of "high" as 0.0) with a 200
    result = run_app_probe(APP_PROBE, postgres.create_database("batch_parsing_half"), tmp_path)
    value, param, step = result["half"]
    assert value[:2] == [400, "INVALID_PARAMETER_VALUE"] and "LogBatch.metrics[0].value" in value[2]
    assert param[:2] == [400, "INVALID_PARAMETER_VALUE"] and "params" in param[2]
    assert step[:2] == [400, "INVALID_PARAMETER_VALUE"] and "step field" in step[2]
    assert result["typed"] == []


def test_written_for_the_installed_metric_message():
    assert batch_parsing.fits()
    assert set(batch_parsing.WRITTEN_FOR) <= set(metric())
