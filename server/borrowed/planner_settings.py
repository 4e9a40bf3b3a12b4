"""PostgreSQL's planner told that random reads are cheap, on the server's own connections.

PostgreSQL's default ``random_page_cost`` (4) models spinning disks; its documentation suggests
about 1.1 for solid-state storage, which is what Cloud SQL and any current host have, and MLflow's
tables are small enough to stay cached. With the default, the planner prefers reading a whole
table to probing an index: a trace search filtered on a span name (100,000 traces, 1 % match)
scanned every trace of the experiment (39 ms, growing with it) instead of reading the matching
spans from our index and fetching their traces by key (14 ms; docs/benchmarks.md).

Only where the database was left at PostgreSQL's default: a value an operator set (in
``postgresql.conf``, ``ALTER DATABASE ... SET``, a Cloud SQL flag) is kept. Set per session on each
new connection of the stores' pools, one statement; nothing is written to the database.
"""

from __future__ import annotations

import sqlalchemy

RANDOM_PAGE_COST = "1.1"

# one round trip: set only when the session's value is still PostgreSQL's built-in default
_SET_IF_DEFAULT = ("SELECT set_config('random_page_cost', %s, false) FROM pg_settings "
                   "WHERE name = 'random_page_cost' AND source = 'default'")


def _on_connect(dbapi_connection, connection_record) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(_SET_IF_DEFAULT, (RANDOM_PAGE_COST,))
    dbapi_connection.commit()  # psycopg2 opened a transaction; the setting is the session's


def install(engines) -> None:
    """Apply the setting to every new connection of these engines (PostgreSQL ones only)."""
    for engine in engines:
        if engine.dialect.name == "postgresql" and not sqlalchemy.event.contains(engine, "connect", _on_connect):
            sqlalchemy.event.listen(engine, "connect", _on_connect)
