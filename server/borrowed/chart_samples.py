"""The UI chart's sampled metric history, read by position instead of numbering every point.

The UI draws a metric with ``get-history-bulk-interval`` (320 points a run). MLflow 3.17
(``SqlAlchemyStore._sample_metric_history_single_run``) numbers every point of the history with
``ntile(max_results) OVER (ORDER BY step, timestamp, value, is_nan)``, keeps the first point of
each bucket, then puts the last point of the history in the place of the last one kept. Its
query numbers and sorts the whole history twice: ~1 s for a metric of 1M points.

Where ntile's buckets start is known from the number of points alone: with ``n``
points and ``k`` buckets, the first ``n % k`` buckets hold ``n // k + 1`` points, the others
``n // k``. So one statement here finds ``n``, computes those positions, and walks MLflow's
index on ``metrics (run_uuid, key, step)`` from one position to the next (an ``OFFSET`` from the
previous step found: no numbering, no sort, a read of the index only), then reads the rows at
the steps found. In one statement ``n`` and the walk see the same points, however many are
logged meanwhile.

``n`` is first guessed from three index probes, as if the steps were evenly spaced (as a
training loop logs them): ``(last - first) / gap + 1``, with ``gap`` the distance from the first
step to the next. The walk then tells whether the guess held: it did exactly when the walk
lands on every position (below) and its last position, ``n - 1``, holds the history's last
step. Where it did not (a step missing, one added, uneven steps), the statement runs again and
counts the points first; where the steps are not evenly spaced at all it counts at once. A
guess that holds saves the count, a second read of the whole index.

The walk reads steps, not rows, so it is exact only when each step it lands on holds one point
(the step at position p then starts at position p, and the next walk starts there). The rows
it reads say how many points each of those steps holds; when one holds more (a history logged
without steps, all at step 0), MLflow's query answers instead. Other databases keep MLflow's
query too. The answer is built from the rows as MLflow builds it.

Still linear in the points (the walk reads the index once): ~0.12 s at 1M evenly spaced points
in-process, ~0.2 s where they must be counted, against MLflow's ~0.7-0.95 s (docs/benchmarks.md).

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

# :k is the number of buckets. With :guess, n is first taken from the history's ends and the
# gap after its first step, as if its steps were evenly spaced; the rows then say whether that
# held (see sampled_rows), and the count is made only where it could not. The positions are
# those of ntile's first rows over the n points, the last bucket's replaced by the last point
# (MLflow's end boundary), ascending.
_SAMPLE = text("""
WITH RECURSIVE
  ends AS MATERIALIZED (
    SELECT (SELECT m.step FROM metrics m WHERE m.run_uuid = :run_id AND m.key = :key AND m.step >= :lo AND m.step <= :hi
            ORDER BY m.step LIMIT 1) AS first,
           (SELECT m.step FROM metrics m WHERE m.run_uuid = :run_id AND m.key = :key AND m.step >= :lo AND m.step <= :hi
            ORDER BY m.step DESC LIMIT 1) AS last),
  guessed AS (
    -- numeric: the ends may be any two bigints, their difference not
    SELECT CASE WHEN e.first IS NULL THEN 0
                WHEN e.span % e.gap = 0 AND e.span / e.gap < 9223372036854775807
                THEN (e.span / e.gap)::bigint + 1
           END AS n
    FROM (SELECT last::numeric - first AS span,
                 (SELECT m.step FROM metrics m
                  WHERE m.run_uuid = :run_id AND m.key = :key AND m.step > ends.first AND m.step <= :hi
                  ORDER BY m.step LIMIT 1)::numeric - first AS gap,
                 first
          FROM ends) e
    WHERE :guess),
  counted AS (
    -- the count runs only when there is no guess (coalesce stops at its first value)
    SELECT coalesce((SELECT n FROM guessed),
                    (SELECT count(*) FROM metrics m WHERE m.run_uuid = :run_id AND m.key = :key AND m.step >= :lo AND m.step <= :hi)) AS n,
           (SELECT n FROM guessed) IS NOT NULL AS guessed),
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
    -- a step found twice holds several points: the walk stops
    WHERE w.i < (SELECT cardinality(at) FROM positions) AND w.step IS NOT NULL
      AND w.step IS DISTINCT FROM w.previous)
SELECT m.value, m.timestamp, m.step, m.is_nan, (SELECT cardinality(at) FROM positions) AS wanted,
       (SELECT guessed FROM counted) AS guessed, (SELECT last FROM ends) AS last
FROM metrics m
WHERE m.run_uuid = :run_id AND m.key = :key AND m.step IN (SELECT step FROM walk)
ORDER BY m.step, m.timestamp, m.value, m.is_nan
LIMIT :k + 1
""")


def sampled_rows(session, run_id: str, key: str, max_results: int, start_step, end_step):
    """The rows MLflow's sampling keeps, in its order; None when a step holds several points."""
    lo = STEP_MIN if start_step is None else start_step
    hi = STEP_MAX if end_step is None else end_step
    params = {"run_id": run_id, "key": key, "k": max_results, "lo": lo, "hi": hi, "guess": True}
    rows = session.execute(_SAMPLE, params).all()
    # A guessed n held exactly when the walk landed where it meant to and its last position,
    # n - 1, holds the history's last step: a guess too small stops short of that step, one too
    # large walks off the end. No rows: an empty history, or a guess too large whose first
    # position is past the end.
    if not rows or (rows[0].guessed and not (_exact(rows) and rows[-1].step == rows[0].last)):
        rows = session.execute(_SAMPLE, {**params, "guess": False}).all()
    return rows if not rows or _exact(rows) else None


def _exact(rows) -> bool:
    """Whether the walk landed where it meant to: every step found holds one point, and no two
    positions found the same step. By then each position's step starts at that position, so the
    next walk started where it should."""
    return len(rows) == rows[0].wanted and not any(a.step == b.step for a, b in pairwise(rows))


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
