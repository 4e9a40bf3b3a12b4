"""The one statement of our metric writes (``server/borrowed/metric_writes.py``), as text with
SQLAlchemy's ``:name`` binds: kept apart from MLflow's imports, so the benchmark's floor
(``bench/floor_wsgi.py``) sends the very same statement without loading MLflow."""

# Data-modifying CTEs run exactly once whether or not the final SELECT reads them; `newest`
# reads `logged`, so a duplicate (nothing inserted) leaves the latest value alone.
LOG_METRICS_SQL = """
WITH run AS (
    SELECT run_uuid, lifecycle_stage FROM runs WHERE run_uuid = :run_id
), batch AS (
    SELECT * FROM unnest(CAST(:keys AS varchar[]), CAST(:metric_values AS double precision[]),
                         CAST(:timestamps AS bigint[]), CAST(:steps AS bigint[]), CAST(:is_nans AS boolean[]))
        WITH ORDINALITY AS b(key, value, timestamp, step, is_nan, position)
), logged AS (
    INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT b.key, b.value, b.timestamp, b.step, b.is_nan, run.run_uuid
    FROM batch b CROSS JOIN run
    WHERE run.lifecycle_stage = :active
    ORDER BY b.key, b.timestamp, b.step, b.value, b.is_nan
    ON CONFLICT DO NOTHING
    RETURNING key, value, timestamp, step, is_nan, run_uuid
), newest AS (
    SELECT DISTINCT ON (logged.key) logged.*
    FROM logged JOIN batch USING (key, value, timestamp, step, is_nan)
    ORDER BY logged.key, logged.step DESC, logged.timestamp DESC, logged.value DESC, batch.position
), latest AS (
    INSERT INTO latest_metrics AS old (key, value, timestamp, step, is_nan, run_uuid)
    SELECT key, value, timestamp, step, is_nan, run_uuid FROM newest
    ON CONFLICT (key, run_uuid) DO UPDATE
    SET value = EXCLUDED.value, timestamp = EXCLUDED.timestamp, step = EXCLUDED.step,
        is_nan = EXCLUDED.is_nan
    WHERE (EXCLUDED.step, EXCLUDED.timestamp, EXCLUDED.value) > (old.step, old.timestamp, old.value)
)
SELECT run_uuid, lifecycle_stage FROM run
"""
