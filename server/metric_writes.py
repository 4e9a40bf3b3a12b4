"""``log_metric`` on PostgreSQL in one statement instead of MLflow's five.

MLflow's ``SqlAlchemyStore.log_metric`` loads the run through the ORM, inserts the metric,
selects the run's latest-metric keys, locks them with ``SELECT ... FOR UPDATE`` and updates
them at commit: five statements and about 3 ms of ORM work per call, the larger part of a
worker's CPU when training scripts log metrics step by step.

On PostgreSQL the same effect is one statement: read the run's lifecycle stage; if it is
active, insert the metric (a duplicate is ignored and changes nothing, as in MLflow) and, if
it was inserted, upsert the run's latest value for the key, replacing it only when the new
metric is strictly newer by (step, timestamp, value), MLflow's own order. The upsert locks the one row it touches, so
concurrent writers to the same key serialise in the database, as they do under MLflow's
``FOR UPDATE``.

Everything else keeps MLflow's path: metrics of a logged model, other databases, and
workspace-scoped stores. Validation, value sanitising (NaN, infinities) and error messages
are MLflow's own functions. Pinned to MLflow 3.17's schema; ``tests/test_metric_writes.py``
compares what both paths store and answer.
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

# Data-modifying CTEs run exactly once whether or not the final SELECT reads them; `latest`
# reads `logged`, so a duplicate (nothing inserted) leaves the latest value alone.
_LOG_METRIC = text("""
WITH run AS (
    SELECT run_uuid, lifecycle_stage FROM runs WHERE run_uuid = :run_id
), logged AS (
    INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT CAST(:key AS varchar), CAST(:value AS double precision), CAST(:timestamp AS bigint),
           CAST(:step AS bigint), CAST(:is_nan AS boolean), run_uuid
    FROM run WHERE lifecycle_stage = :active
    ON CONFLICT DO NOTHING
    RETURNING key, value, timestamp, step, is_nan, run_uuid
), latest AS (
    INSERT INTO latest_metrics AS old (key, value, timestamp, step, is_nan, run_uuid)
    SELECT key, value, timestamp, step, is_nan, run_uuid FROM logged
    ON CONFLICT (key, run_uuid) DO UPDATE
    SET value = EXCLUDED.value, timestamp = EXCLUDED.timestamp, step = EXCLUDED.step,
        is_nan = EXCLUDED.is_nan
    WHERE (EXCLUDED.step, EXCLUDED.timestamp, EXCLUDED.value) > (old.step, old.timestamp, old.value)
)
SELECT run_uuid, lifecycle_stage FROM run
""")

_mlflow_log_metric = SqlAlchemyStore.log_metric


def _takes_fast_path(store: SqlAlchemyStore, metric) -> bool:
    return (
        store.db_type == POSTGRES
        and metric.model_id is None
        # Workspace-aware subclasses scope their queries; they keep MLflow's path.
        and type(store)._get_query is SqlAlchemyStore._get_query
    )


def log_metric(self: SqlAlchemyStore, run_id: str, metric) -> None:
    if not _takes_fast_path(self, metric):
        return _mlflow_log_metric(self, run_id, metric)
    _validate_metric(metric.key, metric.value, metric.timestamp, metric.step)
    is_nan, value = self.sanitize_metric_value(metric.value)
    params = {"run_id": run_id, "active": LifecycleStage.ACTIVE, "key": metric.key, "value": value,
              "timestamp": metric.timestamp, "step": metric.step, "is_nan": is_nan}
    return self._run_with_deadlock_retry(_write, self, run_id, params)


def _write(store: SqlAlchemyStore, run_id: str, params: dict) -> None:
    with store.ManagedSessionMaker(read_only=False) as session:
        run = session.execute(_LOG_METRIC, params).first()
        if run is None:
            raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
        # MLflow's own check and message; nothing was written when it fails.
        store._check_run_is_active(SimpleNamespace(run_uuid=run.run_uuid, lifecycle_stage=run.lifecycle_stage))


def install() -> None:
    """Use the one-statement path for every tracking store of this process."""
    SqlAlchemyStore.log_metric = log_metric
