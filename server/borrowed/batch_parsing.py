"""A ``log_batch`` body's metrics copied into its protobuf message without protobuf's JSON parser.

MLflow's handlers turn every request body into its protobuf message with ``parse_dict``
(protobuf's ``ParseDict``, pure Python): about 25 us per metric, a quarter of the server's time
for a ``log_batch`` of 1000 metrics. A metric as clients send it is four plain fields, so
when every metric of a ``LogBatch`` body is such a dict, its values are checked here as
``ParseDict`` would accept them and added to the message directly; the rest of the body
(run id, params, tags) still goes through MLflow's ``parse_dict``. Anything else (a field of
another type, a string number, ``null``, a key ``ParseDict`` would ignore or reject, a
non-ASCII name, an integer outside the exactly representable range) or a failure in the
rest of the body sends the whole body down MLflow's path unchanged, so its errors and what a
failed parse leaves in the message stay MLflow's. The message comes out equal to
``ParseDict``'s (``tests/test_batch_parsing.py`` compares the serialised bytes).
Pinned to MLflow 3.17 and protobuf 7.

A body that fails to parse is refused by ``server/borrowed/unparsed_bodies.py``, whichever
parse is installed.
"""

from __future__ import annotations

import logging
import math

from google.protobuf.descriptor import FieldDescriptor
from mlflow.protos.service_pb2 import LogBatch
from mlflow.utils import proto_json_utils

log = logging.getLogger(__name__)

_METRIC_FIELDS = frozenset({"key", "value", "timestamp", "step"})
_REQUIRED = ("key", "value", "timestamp")
# the fields of LogBatch's metrics as this module was written for (MLflow 3.17's service.proto)
WRITTEN_FOR = {"key": FieldDescriptor.TYPE_STRING, "value": FieldDescriptor.TYPE_DOUBLE,
               "timestamp": FieldDescriptor.TYPE_INT64, "step": FieldDescriptor.TYPE_INT64}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT_INT = 2**53  # integers a double holds exactly; larger ones keep protobuf's conversion


def _plain_int64(value) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _plain_double(value) -> bool:
    if type(value) is float:
        return math.isfinite(value)  # protobuf refuses NaN and infinities given as numbers
    return type(value) is int and -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT


def plain_metrics(metrics) -> bool:
    """Whether every item is a metric dict whose fields ParseDict would take as they are."""
    if type(metrics) is not list:
        return False
    for metric in metrics:
        if type(metric) is not dict or not metric.keys() <= _METRIC_FIELDS:
            return False
        if any(name not in metric for name in _REQUIRED):
            return False  # MLflow's schema check names the missing field
        key = metric["key"]
        if type(key) is not str or not key.isascii():
            return False
        if not (_plain_double(metric["value"]) and _plain_int64(metric["timestamp"])):
            return False
        if "step" in metric and not _plain_int64(metric["step"]):
            return False
    return True


def parse_dict(js_dict, message) -> None:
    """Drop-in for ``mlflow.utils.proto_json_utils.parse_dict`` as MLflow's handlers call it."""
    if type(message) is LogBatch and type(js_dict) is dict and plain_metrics(js_dict.get("metrics")):
        try:
            proto_json_utils.parse_dict({k: v for k, v in js_dict.items() if k != "metrics"}, message)
        except Exception:  # noqa: BLE001 - the parse below raises it again, as MLflow would
            # MLflow's handler goes on with whatever ParseDict filled in before the failing
            # field, in the body's order: parse it all again to leave exactly that
            message.Clear()
        else:
            add = message.metrics.add
            for metric in js_dict["metrics"]:
                add(**metric)
            return
    proto_json_utils.parse_dict(js_dict, message)


def fits() -> bool:
    """Whether LogBatch's metric fields are still those this module fills (a start-up check:
    generated protobuf classes have no source for the internals list to compare)."""
    fields = LogBatch.DESCRIPTOR.fields_by_name["metrics"].message_type.fields_by_name
    return all(name in fields and fields[name].type == kind and fields[name].json_name == name
               for name, kind in WRITTEN_FOR.items())


def install() -> None:
    """Use this parse in MLflow's handlers, unless the metric message changed shape."""
    from mlflow.server import handlers

    if not fits():
        log.warning("LogBatch's metric fields changed: log_batch keeps MLflow's own parse")
        return
    handlers.parse_dict = parse_dict
