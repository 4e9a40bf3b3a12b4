"""The Postgres URIs users paste all work (SQLAlchemy 2.1 reads postgresql:// as psycopg 3)."""

from __future__ import annotations

import pytest
import requests

from server.config import normalize_backend_uri
from tests.conftest import ALICE, USERS_FILE
from tests.services import Server


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"])
def test_every_postgres_scheme_maps_to_the_shipped_driver(scheme):
    assert normalize_backend_uri(f"{scheme}://u:p@h:5432/db?sslmode=require") == \
        "postgresql+psycopg2://u:p@h:5432/db?sslmode=require"


@pytest.mark.parametrize("form", ["heroku", "cloudsql-socket"])
def test_server_runs_on_pasted_uri_forms(tmp_path, postgres, form):
    postgres.create_database(f"mlflow_uri_{form.replace('-', '_')}")
    db = f"mlflow_uri_{form.replace('-', '_')}"
    if form == "heroku":
        uri = f"postgres://{postgres.user}:{postgres.password}@127.0.0.1:{postgres.port}/{db}"
    else:  # Cloud SQL's unix socket form: host (and here port) as query parameters
        uri = f"postgresql://{postgres.user}:{postgres.password}@/{db}?host={postgres.dir}&port={postgres.port}"
    server = Server(tmp_path, {}, {"mlflow_backend_store_uri": uri, "mlflow_auth_users": USERS_FILE,
                                   "mlflow_artifacts_destination": str(tmp_path / "artifacts")}).start()
    try:
        r = requests.post(f"{server.url}/api/2.0/mlflow/experiments/create", json={"name": form}, auth=ALICE,
                          timeout=30)
        assert r.status_code == 200, r.text
        assert postgres.query(db, "SELECT count(*) FROM experiments WHERE name = %s", (form,)) == [(1,)]
    finally:
        server.stop()
