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


def statement_columns(keys: list, values: list, timestamps: list, steps: list, is_nans: list) -> dict:
    """The metrics' columns as the statement's binds: each a PostgreSQL array literal
    (``'{"loss","acc"}'``, ``'{0.5,1e-300}'``), read by the server's ``array_in`` once per column.

    psycopg2 sends a Python list as ``ARRAY[v1, v2, ...]``: the server parses and plans one
    constant per value. For a ``log_batch`` of 1000 metrics that cost ~10 ms of the database's
    time and ~7 ms of the worker's CPU, against well under 1 ms as literals (measured on
    PostgreSQL 15). ``repr`` of a float round-trips exactly, and PostgreSQL's ``float8in`` reads
    it (and an integer's digits) back correctly rounded, as its casts from psycopg2's form do.
    Items of any other type than the API's (a caller of the store passing a float as a step)
    keep psycopg2's list form, and so the server's own casts."""
    if not (all(type(k) is str for k in keys) and all(type(v) is float or type(v) is int for v in values)
            and all(type(t) is int for t in timestamps) and all(type(s) is int for s in steps)
            and all(type(n) is bool for n in is_nans)):
        return {"keys": keys, "metric_values": values, "timestamps": timestamps, "steps": steps, "is_nans": is_nans}
    return {
        # inside double quotes only a backslash and a double quote need a backslash before them
        "keys": "{" + ",".join('"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys) + "}",
        # str is repr for a float; + 0.0 makes -0.0 the 0.0 psycopg2's numeric constant becomes
        "metric_values": "{" + ",".join([str(v + 0.0) if type(v) is float else str(v) for v in values]) + "}",
        "timestamps": "{" + ",".join(map(str, timestamps)) + "}",
        "steps": "{" + ",".join(map(str, steps)) + "}",
        "is_nans": "{" + ",".join(["t" if n else "f" for n in is_nans]) + "}",
    }
