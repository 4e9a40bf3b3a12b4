"""Tables of our own in the backend database, beside MLflow's, created by the migration step.

Named ``mlflow_server_*`` so they can never meet one of MLflow's; created once, under the
migration's advisory lock (``server/borrowed/migrate.py``), with ``CREATE TABLE IF NOT EXISTS``
semantics, so an MLflow upgrade leaves them alone and they leave MLflow's schema alone.
"""

from __future__ import annotations

import sqlalchemy

METADATA = sqlalchemy.MetaData()

# Failed logins counted for the whole fleet (server/gate/fleet_failures.py): a keyed digest of
# (client address, user) or of the address, its count (0: cleared by a login that succeeded),
# its last change (database clock, ms), which the instances' once-a-second reads look up.
LOGIN_FAILURES = sqlalchemy.Table(
    "mlflow_server_login_failures", METADATA,
    sqlalchemy.Column("key", sqlalchemy.String(16), primary_key=True),
    sqlalchemy.Column("failures", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("last_ms", sqlalchemy.BigInteger, nullable=False),
    sqlalchemy.Index("mlflow_server_login_failures_last_ms", "last_ms"),
)


def create(engine: sqlalchemy.Engine) -> list[str]:
    """Create the tables that do not exist yet; returns their names."""
    missing = [t.name for t in METADATA.sorted_tables if not sqlalchemy.inspect(engine).has_table(t.name)]
    METADATA.create_all(engine, checkfirst=True)
    return missing
