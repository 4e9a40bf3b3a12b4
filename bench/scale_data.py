"""Seed a migrated MLflow database with large data, the fast way (SQL, not the API).

What ``bench.scale`` measures against, the same rows for both servers (the stock server's
database is a copy made with ``CREATE DATABASE ... TEMPLATE``, so ids match and answers can be
compared byte for byte):

* one experiment per runs size (``scale-runs-<n>``): n runs, each with 5 metrics (``m0``..``m4``,
  history of one point and its latest value), 5 params (``p0``..``p4``) and 3 tags (``t0``..``t2``),
  start times one second apart;
* one run (``scale-history``) with a metric of each history size (``loss-<n>``: steps 0..n-1);
* one experiment per traces size (``scale-traces-<n>``): n traces of two spans each, a root
  ``agent`` and a child that is ``retrieve`` in one trace of 100 and ``llm`` otherwise, with a
  trace name tag and request metadata as MLflow writes them;
* ``scale-exp-<i>``: experiments enough for the experiments list, each with one tag.

Each size is seeded once per database: an experiment that exists is left as it is.
"""

from __future__ import annotations

import time

RUN_SIZES = (1_000, 10_000, 100_000, 500_000)
HISTORY_SIZES = (10_000, 100_000, 1_000_000)
TRACE_SIZES = (10_000, 100_000)
EXPERIMENTS = 10_000
T0 = 1_700_000_000_000  # ms: the first run's start time

RUNS_SQL = """
INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time,
                  end_time, source_version, lifecycle_stage, artifact_uri, experiment_id)
SELECT md5(%(exp)s || '-' || i), 'run-' || i, 'LOCAL', 'train.py', '', 'bench', 'FINISHED', %(t0)s + i * 1000,
       %(t0)s + i * 1000 + 500, '', 'active', %(root)s || md5(%(exp)s || '-' || i) || '/artifacts', %(exp)s
FROM generate_series(1, %(n)s) i;
INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)
SELECT 'm' || k, ((i::bigint * 7919 + k * 104729) %% 100003) / 100003.0, %(t0)s + i * 1000, md5(%(exp)s || '-' || i), 0, false
FROM generate_series(1, %(n)s) i, generate_series(0, 4) k;
INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics
WHERE run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = %(exp)s);
INSERT INTO params (key, value, run_uuid)
SELECT 'p' || k, ((i + k) %% 50)::text, md5(%(exp)s || '-' || i)
FROM generate_series(1, %(n)s) i, generate_series(0, 4) k;
INSERT INTO tags (key, value, run_uuid)
SELECT 't' || k, 'v' || (i %% 10), md5(%(exp)s || '-' || i)
FROM generate_series(1, %(n)s) i, generate_series(0, 2) k;
INSERT INTO tags (key, value, run_uuid)
SELECT 'mlflow.runName', 'run-' || i, md5(%(exp)s || '-' || i) FROM generate_series(1, %(n)s) i;
"""

HISTORY_SQL = """
INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)
SELECT %(key)s, 1.0 / (1 + s), %(t0)s + s, %(run)s, s, false FROM generate_series(0, %(n)s - 1) s;
INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
VALUES (%(key)s, 1.0 / %(n)s, %(t0)s + %(n)s - 1, %(n)s - 1, false, %(run)s);
"""

TRACES_SQL = """
INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, execution_time_ms, status, request_preview,
                        response_preview, trace_name)
SELECT 'tr-' || md5(%(exp)s || '-' || i), %(exp)s, %(t0)s + i * 100, 40 + i %% 60, 'OK',
       '{"question": "q' || i || '"}', '"answer ' || i || '"', 'agent'
FROM generate_series(1, %(n)s) i;
INSERT INTO trace_tags (key, value, request_id)
SELECT 'mlflow.traceName', 'agent', 'tr-' || md5(%(exp)s || '-' || i) FROM generate_series(1, %(n)s) i;
INSERT INTO trace_request_metadata (key, value, request_id)
SELECT m.key, m.value, 'tr-' || md5(%(exp)s || '-' || i)
FROM generate_series(1, %(n)s) i,
     (VALUES ('mlflow.trace_schema.version', '3'), ('mlflow.traceInputs', '{"question": "q"}')) m(key, value);
INSERT INTO spans (trace_id, experiment_id, span_id, parent_span_id, name, type, status, start_time_unix_nano,
                   end_time_unix_nano, content)
SELECT 'tr-' || md5(%(exp)s || '-' || i), %(exp)s, lpad(to_hex(i * 2), 16, '0'), NULL, 'agent', 'AGENT', 'OK',
       (%(t0)s + i * 100) * 1000000, (%(t0)s + i * 100 + 40) * 1000000, '{}'
FROM generate_series(1, %(n)s) i;
INSERT INTO spans (trace_id, experiment_id, span_id, parent_span_id, name, type, status, start_time_unix_nano,
                   end_time_unix_nano, content)
SELECT 'tr-' || md5(%(exp)s || '-' || i), %(exp)s, lpad(to_hex(i * 2 + 1), 16, '0'), lpad(to_hex(i * 2), 16, '0'),
       CASE WHEN i %% 100 = 0 THEN 'retrieve' ELSE 'llm' END, 'LLM', 'OK',
       (%(t0)s + i * 100 + 5) * 1000000, (%(t0)s + i * 100 + 35) * 1000000, '{}'
FROM generate_series(1, %(n)s) i;
"""

EXPERIMENTS_SQL = """
INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time)
SELECT 'scale-exp-' || i, %(root)s || 'exp-' || i, 'active', %(t0)s + i, %(t0)s + i FROM generate_series(1, %(n)s) i;
INSERT INTO experiment_tags (key, value, experiment_id)
SELECT 'team', 't' || (e.experiment_id %% 7), e.experiment_id FROM experiments e WHERE e.name LIKE 'scale-exp-%%';
"""


def _experiment(cur, name: str, root: str) -> tuple[int, bool]:
    """The experiment's id, and whether it was made now (and so needs its rows)."""
    cur.execute("SELECT experiment_id FROM experiments WHERE name = %s", (name,))
    row = cur.fetchone()
    if row:
        return row[0], False
    cur.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time)"
                " VALUES (%s, '', 'active', %s, %s) RETURNING experiment_id", (name, T0, T0))
    exp = cur.fetchone()[0]
    cur.execute("UPDATE experiments SET artifact_location = %s WHERE experiment_id = %s", (f"{root}{exp}", exp))
    return exp, True


def seed(dsn: str, root: str, run_sizes=RUN_SIZES, history_sizes=HISTORY_SIZES, trace_sizes=TRACE_SIZES,
         experiments: int = EXPERIMENTS, say=print) -> dict:
    """Seed what is missing; returns the ids the benchmark asks for (experiments by size, the
    history run). ``root`` is the artifact root the runs' locations start with."""
    import psycopg2

    ids: dict = {"runs": {}, "traces": {}}
    conn = psycopg2.connect(dsn)
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            for n in run_sizes:
                exp, new = _experiment(cur, f"scale-runs-{n}", root)
                ids["runs"][n] = exp
                if new:
                    started = time.monotonic()
                    cur.execute(RUNS_SQL, {"exp": exp, "n": n, "t0": T0, "root": f"{root}{exp}/"})
                    conn.commit()
                    say(f"seeded {n} runs in {time.monotonic() - started:.0f} s")
            exp, new = _experiment(cur, "scale-history", root)
            run = f"{'h' * 8}{exp:024d}"
            ids["history"] = {"experiment": exp, "run": run}
            if new:
                cur.execute("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
                            " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
                            " experiment_id) VALUES (%s, 'history', 'LOCAL', '', '', 'bench', 'FINISHED', %s, %s, '',"
                            " 'active', %s, %s)", (run, T0, T0 + 1, f"{root}{exp}/{run}/artifacts", exp))
                for n in history_sizes:
                    started = time.monotonic()
                    cur.execute(HISTORY_SQL, {"key": f"loss-{n}", "n": n, "t0": T0, "run": run})
                    conn.commit()
                    say(f"seeded a history of {n} points in {time.monotonic() - started:.0f} s")
            for n in trace_sizes:
                exp, new = _experiment(cur, f"scale-traces-{n}", root)
                ids["traces"][n] = exp
                if new:
                    started = time.monotonic()
                    cur.execute(TRACES_SQL, {"exp": exp, "n": n, "t0": T0})
                    conn.commit()
                    say(f"seeded {n} traces in {time.monotonic() - started:.0f} s")
            cur.execute("SELECT count(*) FROM experiments WHERE name LIKE 'scale-exp-%%'")
            if cur.fetchone()[0] == 0 and experiments:
                started = time.monotonic()
                cur.execute(EXPERIMENTS_SQL, {"n": experiments, "t0": T0, "root": root})
                conn.commit()
                say(f"seeded {experiments} experiments in {time.monotonic() - started:.0f} s")
        conn.commit()
        with conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("VACUUM ANALYZE")  # fresh statistics, as a long-lived database has them
    finally:
        conn.close()
    return ids
