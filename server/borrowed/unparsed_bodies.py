"""A request body protobuf cannot parse is refused, not half read (a safety entry of
``server/borrowed/internals.py``).

MLflow's ``_get_request_message`` turns a request's JSON into the handler's protobuf message
with ``parse_dict``. On a ``ParseError`` it checks the body against the handler's schema and,
when that passes, goes on with the message as far as protobuf filled it. The schemas check
types only for the fields they name, mostly top-level ones, so a wrongly typed value inside a
list is dropped, not refused. On stock 3.17.2 each of these answers 200:

* ``runs/log-batch`` with a metric value ``"high"`` stores 0.0 at timestamp 0; a param value
  ``5`` is stored as an empty string;
* ``registered-models/create`` or ``experiments/create`` with a tag value ``5`` stores the tag
  with an empty value;
* ``runs/search`` with ``"experiment_ids": [1]`` (numbers, not strings) searches no experiment
  and answers an empty page.

Here such a request is answered 400 INVALID_PARAMETER_VALUE with protobuf's message, which
names the field, and its handler never runs. A body the schema refuses keeps MLflow's own
error: the schema is checked inside ``_get_request_message``, before this refusal.
Pinned to MLflow 3.17 and protobuf 7.
"""

from __future__ import annotations

import contextvars

from google.protobuf.json_format import ParseError
from mlflow.exceptions import MlflowException

MAX_SHOWN = 300  # characters of protobuf's message kept in the answer

# Parse failures of the request message being read, while a refusing reader watches it
_failures: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("request_parse_failures", default=None)


def recording_failures(parse):
    """``parse`` (a handlers' ``parse_dict``) noting why a body failed to parse."""

    def parse_dict(js_dict, message) -> None:
        try:
            parse(js_dict, message)
        except ParseError as exc:
            failures = _failures.get()
            if failures is not None:
                failures.append(str(exc))
            raise

    parse_dict.wrapped = parse
    return parse_dict


def refusing_unparsed(get_request_message):
    """``get_request_message`` (MLflow's ``_get_request_message``) raising a 400 where protobuf
    could not parse the body but the handler's schema let it through."""

    def _get_request_message(request_message, *args, **kwargs):
        failures: list[str] = []
        token = _failures.set(failures)
        try:
            message = get_request_message(request_message, *args, **kwargs)
        finally:
            _failures.reset(token)
        if failures:
            name = type(request_message).__name__
            raise MlflowException.invalid_parameter_value(
                f"The {name} request does not fit the API's types: {failures[0][:MAX_SHOWN]}")
        return message

    _get_request_message.wrapped = get_request_message
    return _get_request_message


def install() -> None:
    """Refuse half-parsed bodies in every handler (after any speed entry that replaces
    ``parse_dict``, whose failures this watches)."""
    from mlflow.server import handlers

    handlers.parse_dict = recording_failures(handlers.parse_dict)
    handlers._get_request_message = refusing_unparsed(handlers._get_request_message)
