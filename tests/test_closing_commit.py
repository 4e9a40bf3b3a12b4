"""server.borrowed.closing_commit: a store call's closing commit leaves what it loaded unexpired,
and changes nothing else (rollbacks, commits inside the block, answers)."""

from __future__ import annotations

import pytest
import sqlalchemy
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlRun
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from server.borrowed import closing_commit
from server.config import normalize_backend_uri
from tests.services import run_app_probe

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def store(postgres):
    store = SqlAlchemyStore(normalize_backend_uri(postgres.create_database("closing_commit")), "mlflow-artifacts:/")
    experiment = store.create_experiment("e")
    for i in range(30):
        run = store.create_run(experiment, "u", T0 + i, [], f"r{i}")
        store.log_batch(run.info.run_id, [Metric("m", i / 3, T0, i)], [Param("p", str(i))], [RunTag("t", "v")])
    store.test_experiment = experiment
    return store


def expired_after(managed, store) -> list[bool]:
    with managed() as session:
        runs = session.query(SqlRun).all()
    return [bool(sqlalchemy.inspect(run).expired_attributes) for run in runs]


def test_the_closing_commit_expires_nothing(store):
    assert all(expired_after(store.ManagedSessionMaker, store))  # MLflow's: every loaded row expired
    assert not any(expired_after(closing_commit.wrap(store.ManagedSessionMaker), store))


def test_a_failed_block_still_rolls_back(store):
    managed = closing_commit.wrap(store.ManagedSessionMaker)
    experiment = store.test_experiment
    with pytest.raises(MlflowException), managed(read_only=False) as session:
        session.add(SqlRun(run_uuid="f" * 32, name="never", experiment_id=int(experiment), user_id="u",
                           status="RUNNING", start_time=T0, lifecycle_stage="active", artifact_uri="x"))
        session.flush()
        raise MlflowException("fails after a write")
    with pytest.raises(MlflowException, match="not found"):
        store.get_run("f" * 32)


def test_a_commit_inside_the_block_expires_as_before(store):
    with closing_commit.wrap(store.ManagedSessionMaker)() as session:
        run = session.query(SqlRun).first()
        session.commit()
        assert sqlalchemy.inspect(run).expired_attributes  # the caller's own commit is MLflow's


def test_same_answers_with_and_without(store):
    def answers():
        page = store.search_runs([store.test_experiment], "", ViewType.ALL, max_results=25)
        rest = store.search_runs([store.test_experiment], "", ViewType.ALL, max_results=25, page_token=page.token)
        return [r.to_dictionary() for r in page + rest], store.get_run(page[0].info.run_id).to_dictionary()

    mlflow_answers = answers()
    saved = store.ManagedSessionMaker
    store.ManagedSessionMaker = closing_commit.wrap(saved)
    try:
        assert answers() == mlflow_answers
        assert len(mlflow_answers[0]) == 30
    finally:
        store.ManagedSessionMaker = saved


APP_PROBE = """
from mlflow.server import handlers
from server.borrowed import closing_commit
wrapped = [getattr(s.ManagedSessionMaker, "wrapped", None) is not None
           for s in (handlers._tracking_store, handlers._model_registry_store)]
exp = client.post("/api/2.0/mlflow/experiments/create", json={"name": "e"}, headers=auth).get_json()
created = client.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp["experiment_id"]}, headers=auth)
found = client.post("/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp["experiment_id"]]}, headers=auth)
print(json.dumps({"wrapped": wrapped, "status": [created.status_code, found.status_code],
                  "runs": len(found.get_json()["runs"])}))
"""


def test_the_server_installs_it(postgres, tmp_path):
    result = run_app_probe(APP_PROBE, postgres.create_database("closing_commit_server"), tmp_path)
    assert result == {"wrapped": [True, True], "status": [200, 200], "runs": 1}
