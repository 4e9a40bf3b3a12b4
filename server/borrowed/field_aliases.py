"""MLflow's check that no request body spells one protobuf field two ways, planned once per message.

``_reject_conflicting_field_aliases`` (MLflow 3.17's handlers) refuses a body that holds both a
field's proto name and its JSON name (``run_id`` and ``runId``): protobuf's parser would let the
later one win, so a gate reading one spelling could pass what the handler reads as the other.
It runs on every body, and for each JSON object it walks every field of its message type,
asking each field's type and options anew: ~2 us per item, 2.2 ms of a ``log_batch`` of 1000
metrics (0.25 ms here). Here each message type's walk is worked out once: the fields whose two spellings differ
and the message-typed fields it descends into, in the order MLflow visits them, so the same
body meets the same checks in the same order and the first conflict found gives the same error.
Fields that are neither (most of them) cost nothing per object. ``tests/test_field_aliases.py``
compares outcomes with MLflow's function on bodies made for every message type of its protos.
Pinned to MLflow 3.17.
"""

from __future__ import annotations

from google.protobuf import descriptor
from mlflow.exceptions import MlflowException
from mlflow.server import handlers

_mlflow_reject = handlers._reject_conflicting_field_aliases

# message descriptor -> ((proto name, JSON name, checks the two spellings, nested descriptor or None), ...)
_plans: dict = {}


def _plan(message_descriptor) -> tuple:
    plan = _plans.get(message_descriptor)
    if plan is None:
        steps = []
        for field in message_descriptor.fields:
            aliased = field.name != field.json_name
            nested = None
            if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                candidate = field.message_type
                # map entries and well-known types carry caller-chosen keys, not proto fields
                if not (candidate.GetOptions().map_entry or candidate.full_name.startswith("google.protobuf.")):
                    nested = candidate
            if aliased or nested is not None:
                steps.append((field.name, field.json_name, aliased, nested))
        plan = _plans[message_descriptor] = tuple(steps)
    return plan


def reject_conflicting_field_aliases(request_json, message_descriptor) -> None:
    """MLflow's ``_reject_conflicting_field_aliases``: same checks, same order, same error."""
    if not isinstance(request_json, dict):
        return
    for name, json_name, aliased, nested in _plan(message_descriptor):
        if aliased and name in request_json and json_name in request_json:
            raise MlflowException.invalid_parameter_value(
                f"Request specifies both '{name}' and '{json_name}'; provide only one of them."
            )
        if nested is None:
            continue
        value = request_json.get(name, request_json.get(json_name))
        for item in value if isinstance(value, list) else (value,):
            reject_conflicting_field_aliases(item, nested)


def install() -> None:
    """The handlers' bodies are checked by the planned walk (module-level name, as they call it)."""
    handlers._reject_conflicting_field_aliases = reject_conflicting_field_aliases
