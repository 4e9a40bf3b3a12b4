"""server.borrowed.json_responses emits the same JSON values as MLflow's own message_to_json.

MLflow's function is the oracle: every message below goes through both, and the parsed
values must be equal; ours must also be compact (the point of the module) and be what the
running server's handlers use.
"""

from __future__ import annotations

import json
import math

import pytest
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.protos import model_registry_pb2 as registry
from mlflow.protos import service_pb2 as service
from mlflow.utils.proto_json_utils import message_to_json as mlflow_message_to_json

from server.borrowed.json_responses import message_to_json

BIG_INT64 = 2**62 + 1  # not exact as a float: protobuf's printer would quote it


def search_runs_response() -> service.SearchRuns.Response:
    response = service.SearchRuns.Response(next_page_token="tok")
    values = [0.5, math.nan, math.inf, -math.inf, -0.0, 1e308, 3]
    for i, value in enumerate(values):
        info = RunInfo(run_id=f"{i:032x}", experiment_id="7", user_id="ünï", status="FINISHED",
                       start_time=1_700_000_000_000 + i, end_time=None, lifecycle_stage="active",
                       artifact_uri=f"mlflow-artifacts:/7/{i:032x}/artifacts", run_name=f"run \"{i}\"")
        data = RunData(metrics=[Metric("m", value, 1_700_000_000_000, BIG_INT64 if i == 0 else i)],
                       params=[Param("p", "ß\n\u2028")], tags=[RunTag("mlflow.runName", f"run-{i}")])
        response.runs.append(Run(info, data).to_proto())
    return response


def trace_response() -> service.GetTrace.Response:
    trace = service.Trace()
    info = trace.trace_info
    info.trace_id = "tr-1"
    info.request_time.FromMilliseconds(1_700_000_000_123)
    info.execution_duration.FromMilliseconds(1500)
    info.state = service.TraceInfoV3.State.Value("OK")
    info.trace_metadata["k"] = "v"
    info.tags["mlflow.traceName"] = "t"
    span = trace.spans.add()
    span.trace_id = b"\x00\x01binary\xff"
    span.name = "root"
    span.start_time_unix_nano = 1_700_000_000_123_456_789  # fixed64 above 2**53
    span.end_time_unix_nano = 1_700_000_001_123_456_789
    attribute = span.attributes.add()
    attribute.key = "n"
    attribute.value.int_value = -(2**60)
    return service.GetTrace.Response(trace=trace)


def registered_model_response() -> registry.GetRegisteredModel.Response:
    response = registry.GetRegisteredModel.Response()
    model = response.registered_model
    model.name = "m"
    model.creation_timestamp = 1_700_000_000_000
    model.tags.add(key="a", value="b")
    model.aliases.add(alias="champion", version="3")
    version = model.latest_versions.add(name="m", version="3", status=registry.ModelVersionStatus.Value("READY"))
    version.creation_timestamp = 1
    return response


MESSAGES = [search_runs_response, trace_response, registered_model_response,
            lambda: service.CreateExperiment.Response(experiment_id="12"),
            lambda: service.SearchExperiments.Response()]


@pytest.mark.parametrize("build", MESSAGES)
@pytest.mark.parametrize("int64_as_number", [True, False])
def test_same_json_values_as_mlflow(build, int64_as_number):
    message = build()
    ours = message_to_json(message, convert_int64_to_number=int64_as_number)
    theirs = mlflow_message_to_json(message, convert_int64_to_number=int64_as_number)
    assert json.loads(ours) == json.loads(theirs)
    assert "\n" not in ours and ": " not in ours.replace('": "', "")  # compact


def test_int64_values_beyond_float_precision_stay_exact_numbers():
    body = json.loads(message_to_json(trace_response()))
    span = body["trace"]["spans"][0]
    assert span["start_time_unix_nano"] == 1_700_000_000_123_456_789
    assert span["attributes"][0]["value"]["int_value"] == -(2**60)
    assert json.loads(message_to_json(search_runs_response()))["runs"][0]["data"]["metrics"][0]["step"] == BIG_INT64


def test_special_floats_and_well_known_types_keep_protobuf_formatting():
    body = json.loads(message_to_json(search_runs_response()))
    assert [r["data"]["metrics"][0]["value"] for r in body["runs"]][1:4] == ["NaN", "Infinity", "-Infinity"]
    info = json.loads(message_to_json(trace_response()))["trace"]["trace_info"]
    assert info["request_time"] == "2023-11-14T22:13:20.123Z" and info["execution_duration"] == "1.500s"


def test_installed_into_mlflow_handlers_only():
    import mlflow.utils.proto_json_utils as proto_json_utils
    from mlflow.server import handlers

    from server.borrowed import json_responses

    original = handlers.message_to_json
    try:
        json_responses.install()
        assert handlers.message_to_json is message_to_json
        assert proto_json_utils.message_to_json is mlflow_message_to_json
    finally:
        handlers.message_to_json = original
