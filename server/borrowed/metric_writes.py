"""Metric writes on PostgreSQL in one statement instead of MLflow's ORM round trips.

``log_metric`` and ``log_batch`` both store their metrics through
``SqlAlchemyStore._log_metrics_once``: it loads the run through the ORM, builds one ORM object
per metric, flushes them, selects the run's latest-metric keys, locks them with ``SELECT ...
FOR UPDATE`` and updates them at commit. For one ``log_metric`` that is five statements and
about 3 ms of ORM work, the larger part of a worker's CPU when training scripts log step by
step; for a ``log_batch`` of 1000 metrics, a thousand ORM objects.

On PostgreSQL the same effect is one statement with the metrics as arrays (sent as array
literals, ``metric_sql.statement_columns``): read the run's
lifecycle stage; if it is active, insert the metrics (a duplicate, within the call or already
stored, is skipped and changes nothing, as in MLflow) and, per key, upsert the run's latest
value from the metrics actually inserted, replacing it only when strictly newer by (step,
timestamp, value): MLflow's own order, ties going to the first in the call. Rows are
inserted and locked in one order (by key), so concurrent writers to one run do not deadlock
each other, and concurrent writers to one key serialise on its latest-value row, as they do
under MLflow's ``FOR UPDATE``. MLflow's retry on deadlocks still wraps every attempt.

Everything else keeps MLflow's path: other databases and workspace-scoped stores; metrics of
logged models never came here. Validation (with MLflow's per-item error paths), value
sanitising (NaN, infinities) and error messages are MLflow's own functions; a batch's
metrics are validated once, by ``log_batch``, where MLflow validates them twice. Pinned to MLflow
3.17's schema; ``tests/test_metric_writes.py`` compares what both paths store and answer.
"""

from __future__ import annotations

from types import SimpleNamespace

from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.db.db_types import POSTGRES
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.validation import _validate_metric
from sqlalchemy import text

from server.borrowed.metric_sql import LOG_METRICS_SQL, statement_columns

_LOG_METRICS = text(LOG_METRICS_SQL)

_mlflow_log_metrics_once = SqlAlchemyStore._log_metrics_once


def _takes_fast_path(store: SqlAlchemyStore) -> bool:
    # Workspace-aware subclasses scope their queries; they keep MLflow's path.
    return store.db_type == POSTGRES and type(store)._get_query is SqlAlchemyStore._get_query


def log_metrics_once(self: SqlAlchemyStore, run_id: str, metrics) -> None:
    if not _takes_fast_path(self):
        return _mlflow_log_metrics_once(self, run_id, metrics)
    if len(metrics) == 1:
        # Several metrics come only from log_batch, which has just validated each with the same
        # function and path (_validate_batch_log_data); MLflow validates them a second time here.
        metric = metrics[0]
        _validate_metric(metric.key, metric.value, metric.timestamp, metric.step, path="")
    sanitized = [self.sanitize_metric_value(metric.value) for metric in metrics]
    columns = statement_columns([m.key for m in metrics], [value for _, value in sanitized],
                                [m.timestamp for m in metrics], [m.step for m in metrics],
                                [is_nan for is_nan, _ in sanitized])
    with self.ManagedSessionMaker(read_only=False) as session:
        run = session.execute(_LOG_METRICS, {"run_id": run_id, "active": LifecycleStage.ACTIVE, **columns}).first()
        if run is None:
            raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
        # MLflow's own check and message; nothing was written when it fails.
        self._check_run_is_active(SimpleNamespace(run_uuid=run.run_uuid, lifecycle_stage=run.lifecycle_stage))


def install() -> None:
    """Use the one-statement path for every tracking store of this process."""
    SqlAlchemyStore._log_metrics_once = log_metrics_once
