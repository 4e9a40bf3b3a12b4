"""Benchmark only: the floor of a metric write, a WSGI app that does nothing but the SQL.

Served by the same gunicorn settings file as the real app (``entry-point.sh
bench.floor_wsgi:application``): same workers, threads, worker class, logging. For
``POST .../runs/log-metric`` and ``.../runs/log-batch`` it parses the JSON body and runs the one
statement our server's metric path sends (``server/borrowed/metric_writes.py``) on a pooled
psycopg2 connection; no auth, no validation, no MLflow. What the real server costs beyond this
is what our layers, MLflow's handler and its store add. Never deployed.
"""

from __future__ import annotations

import json
import os
import threading

from server.borrowed.metric_sql import LOG_METRICS_SQL, statement_columns

THREADS = int(os.environ.get("MLFLOW_THREADS", "8"))  # connections kept: one per worker thread
_pool = None
_pool_pid = None
_lock = threading.Lock()
# the statement as psycopg2 takes it: SQLAlchemy's :name binds become %(name)s
_SQL = LOG_METRICS_SQL.replace("%", "%%")
for _name in ("run_id", "active", "keys", "metric_values", "timestamps", "steps", "is_nans"):
    _SQL = _SQL.replace(f":{_name}", f"%({_name})s")


def _connections():
    """A pool per worker process, made after the fork (gunicorn preloads this module)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            from psycopg2.pool import ThreadedConnectionPool

            # libpq reads the same URL SQLAlchemy does, without the driver's name
            dsn = os.environ["MLFLOW_BACKEND_STORE_URI"].replace("+psycopg2://", "://", 1)
            _pool = ThreadedConnectionPool(THREADS, THREADS, dsn)
            _pool_pid = os.getpid()
        return _pool


def _columns(body: dict) -> dict:
    metrics = body.get("metrics") or [body]
    return {"run_id": body.get("run_id") or body.get("run_uuid"), "active": "active",
            **statement_columns([m["key"] for m in metrics], [float(m["value"]) for m in metrics],
                                [int(m.get("timestamp", 0)) for m in metrics], [int(m.get("step", 0)) for m in metrics],
                                [False] * len(metrics))}


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if environ["REQUEST_METHOD"] == "GET":  # the benchmark's readiness probe
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    if not path.endswith(("/runs/log-metric", "/runs/log-batch")):
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b"{}"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length))
    pool = _connections()
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute(_SQL, _columns(body))
        conn.commit()
    finally:
        pool.putconn(conn)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]
