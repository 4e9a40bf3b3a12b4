"""``metrics/get-history`` answered from batches, never from the whole history in memory.

MLflow's handler loads every point of the metric as an ORM object, then an entity, then a
protobuf message, then one JSON tree and one string: about 2.8 KB of a worker's memory per
point (841 MB for 300,000 points, 1.9 GB for 1M, measured). Without ``max_results`` the answer
is the whole history (the stock Python client pages by 25,000; any other caller need not), and
one such call can take down a 2 GiB Cloud Run instance.

Here the request is parsed and checked by MLflow's own code (``_get_request_message`` with
the handler's schema, the same ``max_results`` rule), the run by the store's access hook
(workspace scoping), and the rows come from the store's query (same filter, same order,
same offset and limit, same page token) through a server-side cursor, ``BATCH`` rows at a
time. Each batch becomes MLflow ``Metric`` entities and is printed by the handlers' own
``message_to_json``; the printed batches are spliced into one answer in a spooled temporary
file (in memory up to ``SPOOL_IN_MEMORY``), and the database session is closed before the
first byte is sent, so a slow reader holds a thread but never a database connection. What a
request holds is a batch of objects plus its answer's bytes (about 90 bytes a point; on Cloud
Run a spilled file is memory too): 24 MB for 300,000 points, measured.

Pinned to MLflow 3.17 (``_get_metric_history`` and ``SqlAlchemyStore.get_metric_history``);
listed in internals.py; ``tests/test_metric_history.py`` compares answers with stock's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

from flask import Response
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.protos.service_pb2 import GetMetricHistory
from mlflow.server import handlers
from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.search_utils import SearchUtils
from sqlalchemy import select

ENDPOINT = "_get_metric_history"  # the Flask endpoint MLflow registers the handler under
BATCH = 5_000  # rows per fetch and per printed chunk: a few MB of objects at a time
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # larger answers go to a temporary file
CHUNK = 256 * 1024  # bytes per write to the client

# the handler's own schema for this request
_SCHEMA = {
    "run_id": [handlers._assert_string, handlers._assert_required],
    "metric_key": [handlers._assert_string, handlers._assert_required],
    "page_token": [handlers._assert_string],
}


def _parse() -> tuple[str, str, int | None, str | None]:
    message = handlers._get_request_message(GetMetricHistory(), schema=_SCHEMA)
    max_results = message.max_results if message.HasField("max_results") else None
    if max_results is not None and max_results <= 0:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. "
            "It must be a positive integer.",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return message.run_id or message.run_uuid, message.metric_key, max_results, message.page_token or None


class _Splicer:
    """Joins the JSON of several ``GetMetricHistory.Response`` messages into one answer."""

    def __init__(self, out):
        self.out = out
        self.opened = False

    def metrics(self, entities: list[Metric]) -> None:
        response = GetMetricHistory.Response()
        response.metrics.extend(m.to_proto() for m in entities)
        text = handlers.message_to_json(response)
        start, end = text.index("[") + 1, text.rindex("]")
        self.out.write((text[:start] if not self.opened else ",").encode())
        self.out.write(text[start:end].encode())
        self.opened = True

    def close(self, next_page_token: str | None) -> None:
        tail = GetMetricHistory.Response()
        if next_page_token:
            tail.next_page_token = next_page_token
        text = handlers.message_to_json(tail)
        if not self.opened:
            self.out.write(text.encode())
        else:
            self.out.write(b"]")
            self.out.write(("," + text[1:] if next_page_token else text[-1:]).encode())


def write_history(store: SqlAlchemyStore, out, run_id: str, key: str, max_results: int | None,
                  page_token: str | None) -> None:
    """Print the answer of ``get_metric_history(run_id, key, max_results, page_token)`` into ``out``."""
    offset = SearchUtils.parse_start_offset_from_page_token(page_token)
    query = (select(SqlMetric.key, SqlMetric.value, SqlMetric.timestamp, SqlMetric.step, SqlMetric.is_nan)
             .filter_by(run_uuid=run_id, key=key)
             .order_by(SqlMetric.timestamp, SqlMetric.step, SqlMetric.value)
             .offset(offset))
    if max_results is not None:
        query = query.limit(max_results + 1)  # one more: is there a next page?
    splicer, seen = _Splicer(out), 0
    with store.ManagedSessionMaker() as session:
        store._validate_run_accessible(session, run_id)
        for batch in session.execute(query, execution_options={"yield_per": BATCH}).partitions():
            wanted = batch if max_results is None else batch[: max(0, max_results - seen)]
            seen += len(batch)
            if wanted:
                # SqlMetric.to_mlflow_entity's conversion, without an ORM object per row
                splicer.metrics([Metric(key=k, value=v if not nan else float("nan"), timestamp=ts, step=step)
                                 for k, v, ts, step, nan in wanted])
    more = max_results is not None and seen > max_results  # MLflow's rule: the extra row came back
    splicer.close(SearchUtils.create_page_token(offset + max_results) if more else None)


def _chunks(spool) -> Iterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(CHUNK):
        yield chunk


@handlers.catch_mlflow_exception
@handlers._disable_if_artifacts_only
def get_metric_history():
    run_id, key, max_results, page_token = _parse()
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    try:
        write_history(handlers._get_tracking_store(), spool, run_id, key, max_results, page_token)
        length = spool.tell()
    except BaseException:
        spool.close()
        raise
    response = Response(_chunks(spool), mimetype="application/json", direct_passthrough=True)
    response.content_length = length
    response.call_on_close(spool.close)  # also when the body is never read (HEAD, a client gone)
    return response


def install(flask_app) -> None:
    """Serve MLflow's get-history endpoint with ``get_metric_history`` (SQL stores only)."""
    if ENDPOINT not in flask_app.view_functions:
        raise RuntimeError(f"MLflow's Flask app has no endpoint {ENDPOINT!r} (see server/borrowed/internals.py)")
    if isinstance(handlers._get_tracking_store(), SqlAlchemyStore):
        flask_app.view_functions[ENDPOINT] = get_metric_history
