"""server.borrowed.field_aliases refuses exactly the bodies MLflow's own check refuses, with its error.

MLflow's ``_reject_conflicting_field_aliases`` is the oracle. For every message type its protos
define, random bodies are made the way a client (or an attacker) could send them: fields under
their proto name, their JSON name or both, nested messages as objects, lists of objects or
junk, at several depths, with unknown keys beside them; both functions must accept the same
bodies and refuse the rest with the same error (the first conflict in MLflow's order).
"""

from __future__ import annotations

import random

import pytest
from google.protobuf import descriptor
from mlflow.protos.service_pb2 import LogBatch

from server.borrowed import field_aliases
from tests.oracle import outcome
from tests.test_json_responses import every_message_type

JUNK = [None, "text", 3, 1.5, True, [], [1, "a"], {}]


def _body(message_descriptor, rng: random.Random, depth: int) -> dict:
    body = {}
    fields = list(message_descriptor.fields)
    rng.shuffle(fields)
    for field in fields:
        if rng.random() < 0.4:
            continue
        names = [field.name, field.json_name]
        if field.name != field.json_name and rng.random() < 0.15:
            spellings = names  # both: a conflict
        else:
            spellings = [rng.choice(names)]
        for name in spellings:
            body[name] = _value(field, rng, depth)
    if rng.random() < 0.2:
        body["notAField"] = rng.choice(JUNK)
    return body


def _value(field, rng: random.Random, depth: int):
    if field.type != descriptor.FieldDescriptor.TYPE_MESSAGE or depth >= 4:
        return rng.choice(JUNK)
    nested = field.message_type
    roll = rng.random()
    if roll < 0.45:
        return _body(nested, rng, depth + 1)
    if roll < 0.85:
        return [_body(nested, rng, depth + 1) if rng.random() < 0.9 else rng.choice(JUNK)
                for _ in range(rng.randint(0, 3))]
    return rng.choice(JUNK)


def test_every_message_type_meets_mlflows_check():
    rng = random.Random(26)
    outcomes = []
    for message_descriptor in every_message_type():
        for _ in range(12):
            body = _body(message_descriptor, rng, 0)
            ours = outcome(field_aliases.reject_conflicting_field_aliases, body, message_descriptor)
            mlflows = outcome(field_aliases._mlflow_reject, body, message_descriptor)
            assert ours == mlflows, (message_descriptor.full_name, body)
            outcomes.append(ours)
    refused = [o for o in outcomes if o != "ok"]
    # both kinds in numbers, and conflicts found below the top level too
    assert len(refused) > 200 and len(outcomes) - len(refused) > 1000
    assert len(set(refused)) > 50


def test_the_first_conflict_in_mlflows_order_is_the_one_named():
    body = {"run_id": "a", "runId": "b",
            "metrics": [{"key": "x", "value": 1, "timestamp": 0, "dataset_name": "d", "datasetName": "e"}]}
    ours = outcome(field_aliases.reject_conflicting_field_aliases, body, LogBatch.DESCRIPTOR)
    assert ours == outcome(field_aliases._mlflow_reject, body, LogBatch.DESCRIPTOR)
    assert "'run_id' and 'runId'" in ours  # the top level's conflict, before the metric's
    nested_only = {"run_id": "a", "metrics": [{"key": "x"}, {"dataset_digest": "1", "datasetDigest": "2"}]}
    assert "'dataset_digest' and 'datasetDigest'" in outcome(field_aliases.reject_conflicting_field_aliases,
                                                              nested_only, LogBatch.DESCRIPTOR)


@pytest.mark.parametrize("body", [None, [], "run_id", {"metrics": "not a list"}, {"metrics": [None, 3]}])
def test_bodies_that_are_not_objects_pass_as_in_mlflow(body):
    assert outcome(field_aliases.reject_conflicting_field_aliases, body, LogBatch.DESCRIPTOR) == "ok"
    assert outcome(field_aliases._mlflow_reject, body, LogBatch.DESCRIPTOR) == "ok"


def test_installed_into_mlflow_handlers():
    from mlflow.server import handlers

    saved = handlers._reject_conflicting_field_aliases
    try:
        field_aliases.install()
        assert handlers._reject_conflicting_field_aliases is field_aliases.reject_conflicting_field_aliases
    finally:
        handlers._reject_conflicting_field_aliases = saved
