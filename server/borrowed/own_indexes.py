"""Indexes of our own on MLflow's tables, for queries MLflow sends that its schema cannot serve
fast once the data is large (measured in ``bench/scale.py``, plans in docs/benchmarks.md).

Named ``mlflow_server_*`` so an MLflow migration can never meet one of them; created by the
migration step (``server/borrowed/migrate.py``, under its advisory lock) with ``CREATE INDEX
CONCURRENTLY IF NOT EXISTS``, so the first start on a large database builds them without
blocking writes from a previous revision still serving, and later starts find them. A build
that was cut off leaves an invalid index behind, which is dropped and built again. Postgres only:
the local SQLite mode holds a laptop's data.

Each index serves a query of MLflow's whose shape it depends on; those queries are listed in
``server/borrowed/internals.py`` ("own indexes") and a contract test runs MLflow's own store and
checks with ``EXPLAIN`` that the planner still uses each index (``tests/test_own_indexes.py``).
An index the planner stops using costs writes and serves nothing: that test says so on a pin bump.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy

log = logging.getLogger("server.own_indexes")


@dataclass(frozen=True)
class OwnIndex:
    name: str
    table: str
    columns: str  # the index's column list, as SQL
    serves: str  # which of MLflow's queries, in words

    @property
    def create_sql(self) -> str:
        return f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {self.name} ON {self.table} ({self.columns})"


INDEXES = (
    # search_runs: MLflow's schema has no index on runs.experiment_id at all, so every page of a
    # large experiment read and sorted the whole runs table. With no order_by (the client's
    # default) MLflow orders by "start_time DESC, run_uuid"; ordered by start time (the UI's
    # runs table) by "CASE WHEN start_time IS NULL THEN 1 ELSE 0 END, start_time DESC, run_uuid".
    # In these orders a page is an index's first rows, and a filtered page (metrics, params, tags)
    # walks the index until the page is full.
    OwnIndex("mlflow_server_runs_experiment_start_time", "runs", "experiment_id, start_time DESC, run_uuid",
             "search_runs with no order_by, with or without a filter"),
    OwnIndex("mlflow_server_runs_experiment_start_time_nulls_last", "runs",
             "experiment_id, (CASE WHEN start_time IS NULL THEN 1 ELSE 0 END), start_time DESC, run_uuid",
             "search_runs ordered by start time (the UI's runs table), with or without a filter"),
    # search_runs ordered by one metric (the UI's runs table sorted by a metric column), as
    # server/borrowed/runs_by_metric.py asks it: the runs with a number for that metric by value,
    # then those with NaN; a page walks the key's values in order and keeps the experiment's runs.
    OwnIndex("mlflow_server_latest_metrics_key_value", "latest_metrics", "key, is_nan, value",
             "search_runs ordered by a metric, through runs_by_metric"),
    # search_traces with a span filter (span.name = ..., the UI's span search): MLflow asks
    # EXISTS (a span of this trace with that name); without this index the planner walks every
    # trace of the experiment and probes its spans, with it it starts from the matching spans.
    OwnIndex("mlflow_server_spans_experiment_name", "spans", "experiment_id, name, trace_id",
             "search_traces filtered on span.name"),
)


def state(conn: sqlalchemy.Connection) -> dict[str, bool]:
    """Our indexes in this schema, each with whether it is valid (False: a concurrent build was
    cut off, by a stopped instance, and the planner never uses it)."""
    rows = conn.execute(sqlalchemy.text(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = ANY(:names)"), {"names": [i.name for i in INDEXES]})
    return dict(rows.all())


# A concurrent build waits for every transaction older than it; one left open elsewhere (a
# forgotten psql session) must not hold the server's start for ever.
LOCK_TIMEOUT = "30s"


def create(engine: sqlalchemy.Engine) -> list[str]:
    """Build the indexes that do not exist (or are invalid); returns their names.

    Speed only: an index that cannot be built (the server's database user does not own MLflow's
    tables, a lock wait timed out) is logged with the statement to run and skipped; the server
    starts and answers the same, only large searches stay slow. The next start tries again."""
    if engine.dialect.name != "postgresql":
        return []
    built = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sqlalchemy.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        found = state(conn)
        for index in INDEXES:
            if found.get(index.name):
                continue
            started = time.monotonic()
            log.info("building index %s on %s (once; writes go on meanwhile)", index.name, index.table)
            try:
                if index.name in found:  # there, but invalid
                    conn.execute(sqlalchemy.text(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}"))
                conn.execute(sqlalchemy.text(index.create_sql))
            except sqlalchemy.exc.DBAPIError as exc:
                log.warning("index %s not built, large searches stay slow (%s); the tables' owner can "
                            "build it: %s", index.name, str(exc.orig).strip().splitlines()[0], index.create_sql)
                continue
            log.info("built index %s in %.1fs", index.name, time.monotonic() - started)
            built.append(index.name)
    return built
