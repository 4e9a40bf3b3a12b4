"""server.metric_writes stores and answers exactly what MLflow's own log_metric does.

MLflow's path is the oracle: the same sequence of metrics (out of order, duplicates, NaN,
infinities, ties broken by timestamp then value) and of bad calls (missing or deleted run,
invalid values) goes through both paths into two databases on a real PostgreSQL; the rows
in ``metrics`` and ``latest_metrics``, what the store reads back and every error must be
equal. Then: it is one statement, concurrent writers leave the true latest value, a
logged model's metric still takes MLflow's path, and the server installs it.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import random
import subprocess
import sys

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import event

from server import metric_writes
from server.config import normalize_backend_uri
from tests.services import ROOT

T0 = 1_700_000_000_000
BIG = 2**62 + 1

# (run, key, value, timestamp, step): run "a" and "b" are active, "deleted" is deleted,
# "missing" does not exist.
SEQUENCE = [
    ("a", "loss", 1.0, T0, 0),
    ("a", "loss", 0.5, T0 + 10, 2),
    ("a", "loss", 0.7, T0 + 20, 1),  # older step logged later: latest stays step 2
    ("a", "loss", 0.4, T0 + 5, 2),  # same step, older timestamp: not newer
    ("a", "loss", 0.6, T0 + 10, 2),  # same step and timestamp, larger value: newer
    ("a", "loss", 0.55, T0 + 10, 2),  # same step and timestamp, smaller value: not newer
    ("a", "loss", 0.6, T0 + 10, 2),  # exact duplicate: ignored
    ("a", "acc", math.nan, T0, 0),
    ("a", "acc", math.nan, T0, 0),  # duplicate NaN
    ("a", "acc", math.inf, T0, 1),
    ("a", "acc", -math.inf, T0 + 1, 1),  # same step, newer timestamp, -inf
    ("a", "big", 3.0, 0, BIG),
    ("a", "big", 2.0, T0, -5),
    ("a", "neg", -1e308, T0, 0),
    ("a", "neg", 1e-300, T0, 0),
    ("a", "int", 7, T0, 3),
    ("a", "ütf-8 / key.name", 1.5, T0, 0),
    ("b", "loss", 2.0, T0, 0),  # same key, another run
    ("b", "loss", math.nan, T0, 1),  # a NaN becomes the latest
    ("deleted", "loss", 1.0, T0, 0),
    ("missing", "loss", 1.0, T0, 0),
    ("a", "bad", None, T0, 0),
    ("a", "bad", "1.0", T0, 0),
    ("a", "bad", 1.0, -1, 0),
    ("a", "bad", 1.0, T0, None),
    ("a", "../bad", 1.0, T0, 0),
    ("a", "k" * 251, 1.0, T0, 0),
    ("a", "", 1.0, T0, 0),
]


def make_store(postgres, name: str) -> SqlAlchemyStore:
    """A tracking store on a fresh database, through the driver the server uses."""
    uri = normalize_backend_uri(postgres.create_database(name))
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    assert store.engine.dialect.driver == "psycopg2"
    return store


def make_runs(store: SqlAlchemyStore) -> dict[str, str]:
    experiment = store.create_experiment(f"exp-{random.random()}")
    runs = {label: store.create_run(experiment, "u", T0, [], label).info.run_id for label in ("a", "b", "deleted")}
    store.delete_run(runs["deleted"])
    runs["missing"] = "0" * 32
    return runs


def apply(log_metric, store: SqlAlchemyStore, runs: dict[str, str]) -> list[str]:
    """Log SEQUENCE; the outcome of each call, with run ids replaced by their labels."""
    outcomes = []
    for label, key, value, timestamp, step in SEQUENCE:
        try:
            log_metric(store, runs[label], Metric(key, value, timestamp, step))
            outcomes.append("ok")
        except MlflowException as exc:
            outcomes.append(f"{exc.error_code}: {exc.message.replace(runs[label], label)}")
    return outcomes


def stored(store: SqlAlchemyStore, runs: dict[str, str]) -> dict:
    def rows(table, run_id):
        with store.engine.connect() as conn:
            return sorted(conn.exec_driver_sql(
                f"SELECT key, value, timestamp, step, is_nan FROM {table} WHERE run_uuid = %s", (run_id,)).all())

    out = {}
    for label in ("a", "b", "deleted"):
        run_id = runs[label]
        run = store.get_run(run_id)
        latest = {m.key: (m.value, m.timestamp, m.step) for m in run.data._metric_objs}
        history = {key: sorted((m.value, m.timestamp, m.step) for m in store.get_metric_history(run_id, key))
                   for key in latest}
        out[label] = {"metrics": rows("metrics", run_id), "latest_metrics": rows("latest_metrics", run_id),
                      "latest": repr(latest), "history": repr(history)}
    return out


@pytest.fixture(scope="module")
def both(postgres):
    """The oracle's and ours: (outcomes, stored rows) of SEQUENCE through each path."""
    results = {}
    for name, log_metric in (("mlflow", metric_writes._mlflow_log_metric), ("ours", metric_writes.log_metric)):
        store = make_store(postgres, f"metric_writes_{name}")
        runs = make_runs(store)
        results[name] = (apply(log_metric, store, runs), stored(store, runs))
    return results


def test_same_answers_as_mlflow(both):
    mlflow_outcomes, ours = both["mlflow"][0], both["ours"][0]
    assert ours == mlflow_outcomes
    # the sequence exercises both kinds of answer, so equality says something
    assert "ok" in ours and any(o.startswith("RESOURCE_DOES_NOT_EXIST") for o in ours)
    assert any("must be in the 'active' state" in o for o in ours)


def test_same_rows_and_reads_as_mlflow(both):
    assert both["ours"][1] == both["mlflow"][1]
    latest = dict((k, (v, t, s)) for k, v, t, s, _ in both["ours"][1]["a"]["latest_metrics"])
    assert latest["loss"] == (0.6, T0 + 10, 2)
    assert both["ours"][1]["deleted"]["metrics"] == []


def test_one_statement_per_call(postgres):
    store = make_store(postgres, "metric_writes_count")
    run = make_runs(store)["a"]
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        metric_writes.log_metric(store, run, Metric("m", 1.0, T0, 0))
        ours = [s for s in statements if s.strip() != "SELECT 1"]  # SQLAlchemy's pool pre-ping
        statements.clear()
        metric_writes._mlflow_log_metric(store, run, Metric("m", 2.0, T0, 1))
        theirs = [s for s in statements if s.strip() != "SELECT 1"]
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert len(ours) == 1 and len(theirs) >= 4


def test_concurrent_writers_leave_the_newest_value(postgres):
    store = make_store(postgres, "metric_writes_concurrent")
    run = make_runs(store)["a"]
    rng = random.Random(7)
    metrics = [Metric("m", rng.choice([0.1, 0.2, 0.3]), T0 + rng.randrange(20), rng.randrange(50))
               for _ in range(400)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: metric_writes.log_metric(store, run, m), metrics))
    newest = max((m.step, m.timestamp, m.value) for m in metrics)
    (latest,) = store.get_run(run).data._metric_objs
    assert (latest.step, latest.timestamp, latest.value) == newest
    assert len(store.get_metric_history(run, "m")) == len(set(metrics))


def test_logged_model_metric_keeps_mlflow_path(postgres):
    store = make_store(postgres, "metric_writes_model")
    runs = make_runs(store)
    experiment = store.get_run(runs["a"]).info.experiment_id
    model = store.create_logged_model(experiment_id=experiment, source_run_id=runs["a"])
    metric_writes.log_metric(store, runs["a"], Metric("auc", 0.9, T0, 0, model_id=model.model_id))
    assert [(m.key, m.value) for m in store.get_logged_model(model.model_id).metrics] == [("auc", 0.9)]
    assert store.get_run(runs["a"]).data.metrics == {"auc": 0.9}


SERVER_PROBE = """
import base64, json
from sqlalchemy import event
from werkzeug.test import Client
from server.app import create_app
from server.config import load_settings
from mlflow.server import handlers

app = create_app(load_settings())
statements = []
event.listen(handlers._get_tracking_store().engine, "before_cursor_execute",
             lambda conn, cursor, statement, *args: statements.append(statement))
auth = {"Authorization": "Basic " + base64.b64encode(b"alice:Long-enough-passw0rd").decode()}
client = Client(app)
exp = client.post("/api/2.0/mlflow/experiments/create", json={"name": "e"}, headers=auth).get_json()
run = client.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp["experiment_id"]}, headers=auth)
run_id = run.get_json()["run"]["info"]["run_id"]
statements.clear()
logged = client.post("/api/2.0/mlflow/runs/log-metric", headers=auth,
                     json={"run_id": run_id, "key": "m", "value": 0.5, "timestamp": 1, "step": 3})
during_log_metric = [s for s in statements if s.strip() != "SELECT 1"]  # not SQLAlchemy's pre-ping
got = client.get(f"/api/2.0/mlflow/runs/get?run_id={run_id}", headers=auth).get_json()
print(json.dumps({"status": logged.status_code, "statements": during_log_metric,
                  "metrics": got["run"]["data"]["metrics"]}))
"""


def test_the_server_logs_metrics_in_one_statement(postgres, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WSGI_AUTH"))}
    env.update(MLFLOW_BACKEND_STORE_URI=postgres.create_database("metric_writes_server"),
               MLFLOW_AUTH_USERS="alice:Long-enough-passw0rd", MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path),
               MLFLOW_SECRETS_DIR="", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    out = subprocess.run([sys.executable, "-c", SERVER_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert [s.split()[0] for s in result["statements"]] == ["WITH"]
    assert result["metrics"] == [{"key": "m", "value": 0.5, "timestamp": 1, "step": 3}]
