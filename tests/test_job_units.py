"""Fast checks of the fleet's job pieces against MLflow's own code, on SQLite: the periodic
tasks MLflow registers land on our schedule, which runs each once per period among instances;
a job submitted with provider credentials keeps them on its instance; every job kind MLflow has
is given a policy for a runner that dies."""

from __future__ import annotations

import ast
import inspect
import json
import os
import stat
import textwrap
import time

import pytest
import sqlalchemy

from server.jobs import submit as job_submit
from server.jobs.fleet import LOST_RUNNER, RERUN_SAFE
from server.jobs.periodic import FleetSchedule
from server.jobs.table import JobTable


@pytest.fixture
def sqlite(tmp_path):
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = SqlAlchemyJobStore(uri)
    return JobTable(sqlalchemy.create_engine(uri), 5_000), store


def test_mlflows_periodic_tasks_are_registered_on_the_fleet_schedule(sqlite):
    from mlflow.server.jobs import utils

    schedule = FleetSchedule(sqlite[0])
    utils.register_periodic_tasks(schedule)
    assert sorted(t.name for t in schedule.tasks) == ["online_scoring_scheduler", "trace_archival_scheduler"]
    import datetime

    assert len(schedule.due(datetime.datetime(2026, 12, 6, 5, 7))) == 2  # both every minute


def test_register_periodic_tasks_asks_nothing_else_of_its_huey_instance():
    # FleetSchedule stands in for huey with these two methods only: a new one would be missing
    from mlflow.server.jobs import utils

    tree = ast.parse(textwrap.dedent(inspect.getsource(utils.register_periodic_tasks)))
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "huey_instance"}
    assert used == {"periodic_task", "lock_task"}


def test_a_periodic_task_runs_once_per_period_among_instances(sqlite):
    table, _ = sqlite
    runs = []
    instances = [FleetSchedule(table, lease_seconds=1) for _ in range(3)]
    for i, schedule in enumerate(instances):
        @schedule.periodic_task(lambda when: True)
        @schedule.lock_task("demo-lock")
        def demo(i=i):  # the same task on three instances
            runs.append(i)
    assert sum(s.run_once(s.tasks[0]) for s in instances) == 1
    time.sleep(1.1)  # the next period
    assert sum(s.run_once(s.tasks[0]) for s in instances) == 1
    assert len(runs) == 2


def test_a_job_with_credentials_is_reserved_and_they_stay_on_its_instance(sqlite, tmp_path, monkeypatch):
    table, store = sqlite
    monkeypatch.setattr(job_submit, "_table", table)
    queue = job_submit.DatabaseQueue(str(tmp_path), 5)
    plain = store.create_job("invoke_scorer", "{}")
    queue.submit_task(plain.job_id, None, "invoke_scorer", {}, None, False)
    secret = store.create_job("invoke_issue_detection", "{}")
    queue.submit_task(secret.job_id, None, "invoke_issue_detection", {}, None, False, {"OPENAI_API_KEY": "sk-S3cret"})
    handoff = tmp_path / f"{secret.job_id}.env.json"
    assert json.loads(handoff.read_text()) == {"OPENAI_API_KEY": "sk-S3cret"}
    assert stat.S_IMODE(os.stat(handoff).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".json")) == [handoff.name]
    assert (tmp_path / f"{plain.job_id}.local").exists()  # its own instance's runner takes it first
    with store.engine.begin() as conn:
        rows = {r.id: r for r in conn.execute(sqlalchemy.text("SELECT * FROM jobs"))}
    assert rows[plain.job_id].lease_expires_at is None  # free for any instance
    assert rows[secret.job_id].lease_expires_at is not None  # reserved for this one
    assert "sk-S3cret" not in json.dumps([list(map(str, r)) for r in rows.values()])
    assert table.claim(["invoke_issue_detection"], [], 0) is None
    assert table.claim(["invoke_issue_detection"], [secret.job_id], 0).job_id == secret.job_id


def test_every_job_kind_of_mlflow_has_a_policy_for_a_dead_runner():
    from mlflow.server.jobs import utils

    assert set(LOST_RUNNER) == set(utils._job_name_to_fn_fullname_map)
    assert RERUN_SAFE <= set(LOST_RUNNER)


def test_a_runner_module_mlflow_moved_is_left_to_the_runner_with_a_warning(monkeypatch, caplog):
    from server.jobs import runner

    monkeypatch.setattr(runner, "RUNNER_MODULES", ("json", "mlflow.store.jobs.no_such_module"))
    with caplog.at_level("WARNING", logger="server.job_runner"):
        runner.preload()  # the server still starts: only a memory saving is lost
    assert [r.getMessage() for r in caplog.records] == [
        "not imported before the job runner's fork: mlflow.store.jobs.no_such_module "
        "(No module named 'mlflow.store.jobs.no_such_module')"]
