"""server.borrowed.json_responses emits the same JSON values as MLflow's own message_to_json.

MLflow's function is the oracle: every message below goes through both, and the parsed
values must be equal; ours must also be compact (the point of the module) and be what the
running server's handlers use.
"""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf import json_format
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


def _proto_modules():
    import importlib
    import pkgutil

    import mlflow.protos

    for info in pkgutil.iter_modules(mlflow.protos.__path__):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(f"mlflow.protos.{info.name}")


def _message_types(descriptor, seen: dict) -> None:
    if descriptor.full_name in seen or descriptor.GetOptions().map_entry:
        return
    seen[descriptor.full_name] = descriptor
    for nested in descriptor.nested_types:
        _message_types(nested, seen)


def every_message_type() -> list:
    """Every message type MLflow's protos define, nested ones included."""
    seen: dict = {}
    for module in _proto_modules():
        for message_type in module.DESCRIPTOR.message_types_by_name.values():
            _message_types(message_type, seen)
    return sorted(seen.values(), key=lambda d: d.full_name)


STRINGS = ["", "plain", "ünï\n\"\\\u2028", "\U0001F600"]
DOUBLES = [0.0, -0.0, 1.5, 3.0, 1e308, -2.5e-300, math.nan, math.inf, -math.inf]
FLOATS = [0.0, 0.1, 3.4e38, -1.25, math.nan, math.inf]
INTS = {"int32": [0, -1, 2**31 - 1], "uint32": [0, 2**32 - 1],
        "int64": [0, -(2**63), 2**63 - 1, BIG_INT64], "uint64": [0, 2**64 - 1, BIG_INT64]}


def _scalar(field, rng):
    from google.protobuf.descriptor import FieldDescriptor as F

    cpp = field.cpp_type
    if cpp == F.CPPTYPE_STRING:
        return rng.choice([b"", b"\x00\xffbin", b"abc"]) if field.type == F.TYPE_BYTES else rng.choice(STRINGS)
    if cpp == F.CPPTYPE_BOOL:
        return rng.choice([True, False])
    if cpp == F.CPPTYPE_DOUBLE:
        return rng.choice(DOUBLES)
    if cpp == F.CPPTYPE_FLOAT:
        return rng.choice(FLOATS)
    if cpp == F.CPPTYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    kind = {F.CPPTYPE_INT32: "int32", F.CPPTYPE_UINT32: "uint32", F.CPPTYPE_INT64: "int64",
            F.CPPTYPE_UINT64: "uint64"}[cpp]
    return rng.choice(INTS[kind])


def _fill(message, rng, depth: int) -> None:
    """Sets about half of ``message``'s fields, at random, to values that test the printer's
    cases (NaN, infinities, -0.0, int64 beyond a float's precision, bytes, unicode), nested
    messages ``depth`` levels down."""
    from google.protobuf.descriptor import FieldDescriptor as F

    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.FromMilliseconds(rng.randrange(0, 2**41))
        return
    if name == "google.protobuf.Duration":
        message.FromMilliseconds(rng.randrange(-(2**30), 2**30))
        return
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        struct = {"n": rng.choice([1.5, 2.0]), "s": "x", "l": [True, None, "y"], "o": {"k": 1}}
        if name == "google.protobuf.Struct":
            message.update(struct)
        elif name == "google.protobuf.ListValue":
            message.extend(list(struct.values()))
        else:
            message.string_value = "v"
        return
    if name == "google.protobuf.Any":
        from google.protobuf import timestamp_pb2

        message.Pack(timestamp_pb2.Timestamp(seconds=5))
        return
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(rng.randrange(1, 3)):
                key = _scalar(field.message_type.fields_by_name["key"], rng)
                if value_field.message_type is not None:
                    if depth > 0:
                        _fill(value[key], rng, depth - 1)
                else:
                    value[key] = _scalar(value_field, rng)
        elif field.cpp_type == F.CPPTYPE_MESSAGE:
            if depth == 0:
                continue
            if field.is_repeated:
                for _ in range(rng.randrange(1, 3)):
                    _fill(value.add(), rng, depth - 1)
            else:
                _fill(value, rng, depth - 1)
                value.SetInParent()
        elif field.is_repeated:
            value.extend(_scalar(field, rng) for _ in range(rng.randrange(1, 4)))
        else:
            setattr(message, field.name, _scalar(field, rng))


def _exact(text: str) -> str:
    """The JSON text's values in a canonical form that still tells 1 from 1.0 and true from 1."""
    return json.dumps(json.loads(text), sort_keys=True)


@pytest.mark.parametrize("int64_as_number", [True, False])
def test_every_mlflow_message_type_prints_as_mlflow_prints_it(int64_as_number):
    import random

    from google.protobuf import message_factory

    from server.borrowed.json_responses import _Int64AsNumberPrinter

    protobufs_own = (_Int64AsNumberPrinter if int64_as_number else json_format._Printer)(
        preserving_proto_field_name=True)
    types = every_message_type()
    assert len(types) > 300  # every proto module was found
    rng = random.Random(20261207)
    compared = 0
    for message_type in types:
        cls = message_factory.GetMessageClass(message_type)
        for _ in range(4):
            message = cls()
            _fill(message, rng, depth=3)
            ours = message_to_json(message, convert_int64_to_number=int64_as_number)
            # the printer this one takes the place of: the very same values, types included
            assert json.loads(ours) == protobufs_own._MessageToJsonObject(message), message_type.full_name
            assert _exact(ours) == _exact(json.dumps(protobufs_own._MessageToJsonObject(message)))
            # and MLflow's own function, whose values the API promises
            theirs = mlflow_message_to_json(message, convert_int64_to_number=int64_as_number)
            assert _exact(ours) == _exact(theirs), message_type.full_name
            compared += 1
    assert compared == 4 * len(types)


def test_map_keys_of_every_kind_print_as_protobuf_prints_them():
    """MLflow's maps are keyed by strings; a map keyed by bool or int64 (none in MLflow 3.17)
    still prints as protobuf's printer prints it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from server.borrowed.json_responses import _Int64AsNumberPrinter

    proto = descriptor_pb2.FileDescriptorProto(name="maps_under_test.proto", package="t", syntax="proto3")
    holder = proto.message_type.add(name="Maps")
    for number, key_type in ((1, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
                             (2, descriptor_pb2.FieldDescriptorProto.TYPE_INT64)):
        entry = holder.nested_type.add(name=f"Entry{number}")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key_type, label=1)
        entry.field.add(name="value", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64, label=1)
        holder.field.add(name=f"map{number}", number=number, label=3, type_name=f".t.Maps.Entry{number}",
                         type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    message = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Maps"))()
    message.map1[True], message.map1[False], message.map2[-(2**62)] = 1, 2, BIG_INT64
    expected = _Int64AsNumberPrinter(preserving_proto_field_name=True)._MessageToJsonObject(message)
    assert json.loads(message_to_json(message)) == expected
    assert expected == {"map1": {"true": 1, "false": 2}, "map2": {str(-(2**62)): BIG_INT64}}
