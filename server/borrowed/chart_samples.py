"""The UI chart's sampled metric history, read by position instead of numbering every point.

The UI draws a metric with ``get-history-bulk-interval`` (320 points a run). MLflow 3.17
(``SqlAlchemyStore._sample_metric_history_single_run``) numbers every point of the history with
``ntile(max_results) OVER (ORDER BY step, timestamp, value, is_nan)``, keeps the first point of
each bucket, then puts the last point of the history in the place of the last one kept. Its
query numbers and sorts the whole history twice: ~1 s for a metric of 1M points.

Where ntile's buckets start is known from the number of points alone: with ``n``
points and ``k`` buckets, the first ``n % k`` buckets hold ``n // k + 1`` points, the others
``n // k``. So one statement here counts the points, computes those positions, and walks
MLflow's index on ``metrics (run_uuid, key, step)`` from one position to the next (an ``OFFSET``
from the previous step found: no numbering, no sort, a read of the index only), then reads the
rows at the steps found. In one statement the count and the walk see the same points, however
many are logged meanwhile.

The walk reads steps, not rows, so it is exact only when each step it lands on holds one point
(the step at position p then starts at position p, and the next walk starts there). The rows
it reads say how many points each of those steps holds; when one holds more (a history logged
without steps, all at step 0), MLflow's query answers instead. Other databases keep MLflow's
query too. The answer is built from the rows as MLflow builds it.

Still linear in the points (the count and the walk read the index once each): ~0.2 s at 1M
points in-process, 3-4 times less than MLflow's query (docs/benchmarks.md).

Pinned to MLflow 3.17 (``_sample_metric_history_single_run``, ``_sample_rows_with_window_functions``);
listed in internals.py; ``tests/test_chart_samples.py`` compares answers with MLflow's own.
"""

from __future__ import annotations

from itertools import pairwise

from mlflow.entities import Metric
from mlflow.entities.metric import MetricWithRunId
from mlflow.store.db.db_types import POSTGRES
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import text

MLFLOWS = SqlAlchemyStore._sample_metric_history_single_run
STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1  # every bigint step, when the request gives no range

# :k is the number of buckets. The positions are those of ntile's first rows over the n points,
# the last bucket's replaced by the last point (MLflow's end boundary), ascending.
_SAMPLE = text("""
WITH RECURSIVE
  counted AS (
    SELECT count(*) AS n FROM metrics m
    WHERE m.run_uuid = :run_id AND m.key = :key AND m.step >= :lo AND m.step <= :hi),
  positions AS (
    SELECT CASE WHEN n <= :k THEN ARRAY(SELECT b FROM generate_series(0::bigint, n - 1) b ORDER BY b)
                ELSE ARRAY(SELECT b * (n / :k) + least(b, n % :k) FROM generate_series(0::bigint, :k - 2) b
                           ORDER BY b) || (n - 1)
           END AS at
    FROM counted),
  walk(i, step, previous) AS (
    SELECT 1, (SELECT m.step FROM metrics m
               WHERE m.run_uuid = :run_id AND m.key = :key AND m.step >= :lo AND m.step <= :hi
               ORDER BY m.step OFFSET (SELECT at[1] FROM positions) LIMIT 1), NULL::bigint
    WHERE (SELECT n FROM counted) > 0
    UNION ALL
    SELECT w.i + 1, (SELECT m.step FROM metrics m
                     WHERE m.run_uuid = :run_id AND m.key = :key AND m.step >= w.step AND m.step <= :hi
                     ORDER BY m.step OFFSET (SELECT at[w.i + 1] - at[w.i] FROM positions) LIMIT 1), w.step
    FROM walk w
    -- a step found twice holds several points: the walk stops, MLflow's query answers
    WHERE w.i < (SELECT cardinality(at) FROM positions) AND w.step IS NOT NULL
      AND w.step IS DISTINCT FROM w.previous)
SELECT m.value, m.timestamp, m.step, m.is_nan, (SELECT cardinality(at) FROM positions) AS wanted
FROM metrics m
WHERE m.run_uuid = :run_id AND m.key = :key AND m.step IN (SELECT step FROM walk)
ORDER BY m.step, m.timestamp, m.value, m.is_nan
LIMIT :k + 1
""")


def sampled_rows(session, run_id: str, key: str, max_results: int, start_step, end_step):
    """The rows MLflow's sampling keeps, in its order; None when a step holds several points."""
    lo = STEP_MIN if start_step is None else start_step
    hi = STEP_MAX if end_step is None else end_step
    rows = session.execute(_SAMPLE, {"run_id": run_id, "key": key, "k": max_results, "lo": lo, "hi": hi}).all()
    # Exact when every step found holds one point and no two positions found the same step; by
    # then each position's step starts at that position, so the next walk started where it
    # should. Otherwise some step holds more than one point: MLflow's query answers.
    if rows and (len(rows) != rows[0].wanted or any(a.step == b.step for a, b in pairwise(rows))):
        return None
    return rows


def _sample_metric_history_single_run(self, session, run_id, metric_key, max_results, start_step, end_step):
    if self.db_type != POSTGRES:
        return MLFLOWS(self, session, run_id, metric_key, max_results, start_step, end_step)
    rows = sampled_rows(session, run_id, metric_key, max_results, start_step, end_step)
    if rows is None:
        return MLFLOWS(self, session, run_id, metric_key, max_results, start_step, end_step)
    return [
        MetricWithRunId(
            run_id=run_id,
            metric=Metric(
                key=metric_key,
                value=row.value if not row.is_nan else float("nan"),
                timestamp=row.timestamp,
                step=row.step,
            ),
        )
        for row in rows
    ]


def install() -> None:
    """Sample charts by position for every tracking store of this process."""
    SqlAlchemyStore._sample_metric_history_single_run = _sample_metric_history_single_run
