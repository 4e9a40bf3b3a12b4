"""Bring the database schema to this MLflow's head, once, before gunicorn forks its workers.

On Postgres the work runs under a session advisory lock, so several instances starting together
(Cloud Run scaling out, a new revision beside the old one) queue up: the first creates or
upgrades the schema, the others wait, then find it current and go on. Without it a fresh
database with several workers gives UniqueViolation 500s, and two concurrent
``mlflow db upgrade`` runs fail. This server's own tables (``server/borrowed/own_tables.py``) and
its own indexes on MLflow's tables (``server/borrowed/own_indexes.py``) are created in the same
step, under the same lock.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy
from sqlalchemy.pool import QueuePool

from server.borrowed import own_indexes, own_tables

log = logging.getLogger("server.migrate")

# pg_advisory_lock key: the bytes of "mlflow" as an integer, shared by every instance.
ADVISORY_LOCK_KEY = int.from_bytes(b"mlflow", "big")
LOCK_POLL_SECONDS = 0.2


class MigrationError(Exception):
    pass


def _connect_with_retry(engine: sqlalchemy.Engine, deadline: float) -> sqlalchemy.Connection:
    delay = 0.25
    while True:
        try:
            return engine.connect()
        except sqlalchemy.exc.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise MigrationError(f"cannot connect to the backend database: {exc.orig}") from None
            # The message names host, port and user, never the password; logs redact anyway.
            log.warning("backend database not reachable yet, retrying in %.1fs: %s", delay, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


def ensure_schema(uri: str, auto_upgrade: bool = True, connect_timeout: float = 60.0) -> str:
    """Create or upgrade the schema; return what was done: "created", "upgraded" or "current"."""
    from mlflow.store.db import utils as db_utils

    # Two pooled connections, not one per check: the lock's, and one the checks share in turn
    # (each new PostgreSQL connection costs ~5 ms of the cold start; one per check made eight).
    engine = sqlalchemy.create_engine(uri, poolclass=QueuePool, pool_size=2, max_overflow=8)
    is_postgres = engine.dialect.name == "postgresql"
    try:
        with _connect_with_retry(engine, time.monotonic() + connect_timeout) as lock_conn:
            if is_postgres:
                _take_lock(lock_conn)
            try:
                done = _create_or_upgrade(engine, db_utils, auto_upgrade)
                if created := own_tables.create(engine):
                    log.info("created this server's own tables: %s", ", ".join(created))
                own_indexes.create(engine)
                return done
            finally:
                if is_postgres:
                    lock_conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
    finally:
        engine.dispose()


def _take_lock(conn: sqlalchemy.Connection) -> None:
    """Take the advisory lock (the session's), polling outside any transaction: an instance that
    waits in a statement holds a snapshot, and the lock holder's CREATE INDEX CONCURRENTLY
    (server/borrowed/own_indexes.py) waits for every older snapshot to end, a deadlock."""
    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
    started = time.monotonic()
    while not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar():
        time.sleep(LOCK_POLL_SECONDS)
    waited = time.monotonic() - started
    if waited > 0.5:
        log.info("waited %.1fs for another instance's schema work", waited)


def _create_or_upgrade(engine, db_utils, auto_upgrade: bool) -> str:
    if not db_utils._all_tables_exist(engine):
        if not db_utils._is_empty_database(engine):
            # tables of an older MLflow: an upgrade creates what is missing
            return _upgrade(engine, db_utils, auto_upgrade)
        started = time.monotonic()
        log.info("running database migrations: creating the MLflow schema")
        db_utils._initialize_tables(engine)
        log.info("database migrations done: schema created in %.1fs", time.monotonic() - started)
        return "created"
    head = db_utils._get_latest_schema_revision()
    if db_utils._get_schema_version(engine) == head:
        log.info("database schema is current (%s)", head)
        return "current"
    return _upgrade(engine, db_utils, auto_upgrade)


def _upgrade(engine, db_utils, auto_upgrade: bool) -> str:
    current = db_utils._get_schema_version(engine)
    head = db_utils._get_latest_schema_revision()
    if not auto_upgrade:
        raise MigrationError(
            f"the database schema is at {current}, this server needs {head}; back up the database "
            "and set MLFLOW_DB_AUTO_UPGRADE=true (or run 'mlflow db upgrade')"
        )
    started = time.monotonic()
    log.info("running database migrations: upgrading the schema from %s to %s", current, head)
    db_utils._upgrade_db(engine)
    log.info("database migrations done: upgraded in %.1fs", time.monotonic() - started)
    return "upgraded"
