"""``runs/search`` answered with JSON built from the runs, without a protobuf message between.

MLflow's handler (``_search_runs`` with ``search_runs_impl``) makes each run entity a protobuf
message (``Run.to_proto``), the page a ``SearchRuns.Response``, and prints that as JSON. For a
page of 500 runs (5 metrics, 5 params and 3 tags each) the messages and their printing are
~25 ms of a ~85 ms call (in-process). Here the view is MLflow's, line for line, up to the store's answer;
each run is then written as the JSON object the printer makes of its message
(``json_responses``: int64 values as numbers, fields in field-number order, NaN and the
infinities as protobuf spells them), and the page as ``json_responses.message_to_json`` writes it.

A run is written directly when every value is of the type MLflow's stores give (strings,
integers within int64, a float or int metric value, a known status); any other run, and any
run's inputs and outputs that are not empty, go through ``to_proto`` and the printer, so an
odd value prints, or fails, as it does in MLflow. Installed only with ``json_responses``.

Pinned to MLflow 3.17 (``_search_runs``, ``search_runs_impl``, the ``to_proto`` of ``Run``,
``RunInfo``, ``RunData`` and ``Metric``); listed in internals.py; ``tests/test_search_runs_json.py``
compares the bytes of every answer with MLflow's view's.
"""

from __future__ import annotations

import json

from flask import Response
from mlflow.entities import ViewType
from mlflow.entities.run_status import RunStatus
from mlflow.protos.service_pb2 import SearchRuns
from mlflow.server import handlers

from server.borrowed.json_responses import message_object

ENDPOINT = "_search_runs"  # the Flask endpoint MLflow registers the view under
INT64 = range(-(2**63), 2**63)
# the statuses' names, which are also how the printer writes the proto enum's values
STATUSES = frozenset(RunStatus.to_string(status) for status in RunStatus.all_status())


def request_schema() -> dict:
    """The request's schema in MLflow's ``_search_runs`` (its checks read when the view is
    installed, after internals.py has found them)."""
    return {
        "experiment_ids": [handlers._assert_array],
        "filter": [handlers._assert_string],
        "max_results": [handlers._assert_intlike, lambda x: handlers._assert_less_than_or_equal(int(x), 50000)],
        "order_by": [handlers._assert_array, handlers._assert_item_type_string],
    }


_schema: dict = {}


class _UnusualValueError(Exception):
    """A value MLflow's stores do not give: the run goes through protobuf's printer."""


def _string(value) -> str:
    if type(value) is not str:
        raise _UnusualValueError
    return value


def _int64(value) -> int:
    if type(value) is not int or value not in INT64:
        raise _UnusualValueError
    return value


def _double(value):
    if type(value) is float:
        if value - value == 0.0:  # finite
            return value
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is int and abs(value) < 2**1023:
        return _double(float(value))  # the proto field is a double: 3 prints as 3.0
    raise _UnusualValueError


def _info(info) -> dict:
    """``RunInfo.to_proto`` as JSON, fields in number order."""
    found = {"run_uuid": _string(info.run_id), "experiment_id": _string(info.experiment_id)}
    if info.run_name is not None:
        found["run_name"] = _string(info.run_name)
    found["user_id"] = _string(info.user_id)
    if info.status not in STATUSES:
        raise _UnusualValueError
    found["status"] = info.status
    found["start_time"] = _int64(info.start_time)
    if info.end_time:
        found["end_time"] = _int64(info.end_time)
    if info.artifact_uri:
        found["artifact_uri"] = _string(info.artifact_uri)
    found["lifecycle_stage"] = _string(info.lifecycle_stage)
    found["run_id"] = found["run_uuid"]
    return found


def _metric(metric) -> dict:
    found = {"key": _string(metric.key), "value": _double(metric.value), "timestamp": _int64(metric.timestamp),
             "step": _int64(metric.step)}
    for name in ("dataset_name", "dataset_digest", "model_id", "run_id"):  # field numbers 5-8
        if value := getattr(metric, name):
            found[name] = _string(value)
    return found


def _pairs(values: dict) -> list[dict]:
    return [{"key": _string(key), "value": _string(value)} for key, value in values.items()]


def _data(data) -> dict:
    """``RunData.to_proto`` as JSON: an empty list is not written."""
    found = {}
    if metrics := [_metric(m) for m in data._metric_objs]:
        found["metrics"] = metrics
    if params := _pairs(data.params):
        found["params"] = params
    if tags := _pairs(data.tags):
        found["tags"] = tags
    return found


def _empty_or_printed(part, *lists: str) -> dict:
    return {} if not any(getattr(part, name) for name in lists) else message_object(part.to_proto())


def run_object(run) -> dict:
    """The JSON object of ``run.to_proto()``, as ``json_responses`` prints it."""
    try:
        found = {"info": _info(run.info)}
        if run.data is not None:
            found["data"] = _data(run.data)
    except _UnusualValueError:
        return message_object(run.to_proto())
    if run.inputs is not None:
        found["inputs"] = _empty_or_printed(run.inputs, "dataset_inputs", "model_inputs")
    if run.outputs is not None:
        found["outputs"] = _empty_or_printed(run.outputs, "model_outputs")
    return found


def page_json(runs, token) -> str:
    page = {}
    if runs:
        page["runs"] = [run_object(run) for run in runs]
    if token:
        # MLflow's token is bytes (base64): the message's string field decodes it, as here
        page["next_page_token"] = SearchRuns.Response(next_page_token=token).next_page_token
    return json.dumps(page, separators=(",", ":"))


@handlers.catch_mlflow_exception
@handlers._disable_if_artifacts_only
def search_runs():
    """MLflow 3.17's ``_search_runs`` and ``search_runs_impl``; the answer written by ``page_json``."""
    request_message = handlers._get_request_message(SearchRuns(), schema=_schema)
    run_view_type = ViewType.ACTIVE_ONLY
    if request_message.HasField("run_view_type"):
        run_view_type = ViewType.from_proto(request_message.run_view_type)
    filter_string = request_message.filter
    max_results = request_message.max_results
    experiment_ids = list(request_message.experiment_ids)
    try:
        from mlflow.server import auth

        if auth.auth_config:
            experiment_ids = auth.filter_experiment_ids(experiment_ids)
    except ImportError:
        pass
    order_by = request_message.order_by
    run_entities = handlers._get_tracking_store().search_runs(
        experiment_ids=experiment_ids,
        filter_string=filter_string,
        run_view_type=run_view_type,
        max_results=max_results,
        order_by=order_by,
        page_token=request_message.page_token or None,
    )
    response = Response(mimetype="application/json")
    response.set_data(page_json(run_entities, run_entities.token))  # ours
    return response


def install(flask_app) -> None:
    """Serve MLflow's runs/search endpoint with ``search_runs``."""
    if ENDPOINT not in flask_app.view_functions:
        raise RuntimeError(f"MLflow's Flask app has no endpoint {ENDPOINT!r} (see server/borrowed/internals.py)")
    _schema.update(request_schema())
    flask_app.view_functions[ENDPOINT] = search_runs
