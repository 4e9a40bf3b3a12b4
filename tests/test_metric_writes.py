"""server.borrowed.metric_writes stores and answers exactly what MLflow's own metric writes do.

MLflow's path is the oracle: the same sequence of ``log_metric`` calls (out of order,
duplicates, NaN, infinities, ties broken by timestamp then value) and of ``log_batch`` calls
(duplicates within a call and already stored, keys in any order, ties within a call, NaN
beside a real zero, invalid items), and of bad calls (missing or deleted run, invalid
values), goes through the store's public methods with each path into two databases on a real
PostgreSQL; the rows in ``metrics`` and ``latest_metrics``, what the store reads back and
every error must be equal. Then: it is one statement, concurrent writers (single metrics and
overlapping batches) leave the true latest values and surface no deadlock, a logged model's
metric still reaches the model, and the server installs it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import random

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from server.borrowed import metric_writes
from server.borrowed.metric_sql import statement_columns
from server.config import normalize_backend_uri
from tests.oracle import outcome
from tests.services import run_app_probe, statements

T0 = 1_700_000_000_000
BIG = 2**62 + 1
PATHS = {"mlflow": metric_writes._mlflow_log_metrics_once, "ours": metric_writes.log_metrics_once}

# (run, key, value, timestamp, step): run "a" and "b" are active, "deleted" is deleted,
# "missing" does not exist.
SINGLE = [
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

# (run, [(key, value, timestamp, step), ...]) for log_batch
BATCHES = [
    ("a", [("z", 1.0, T0, 0), ("y", 2.0, T0, 0), ("z", 3.0, T0, 1), ("x", 0.5, T0, 0)]),
    ("a", [("z", 3.0, T0, 1), ("z", 3.0, T0, 1), ("y", 1.0, T0, 5)]),  # stored and in-call duplicates
    ("a", [("t", 0.0, T0, 4), ("t", math.nan, T0, 4)]),  # same (step, timestamp, value): first wins
    ("a", [("u", math.nan, T0, 4), ("u", 0.0, T0, 4)]),  # and the other way round
    ("a", [("w", math.nan, T0, 1), ("w", math.nan, T0, 1), ("w", math.inf, T0, 0)]),
    ("a", [(f"k{i:03d}", float(i), T0 + i, i % 7) for i in range(300)][::-1]),  # many keys, reversed
    ("a", [("z", 9.0, T0 + 1, 1), ("z", 8.0, T0 + 1, 1), ("z", 9.0, T0, 1)]),  # newer than stored
    ("a", [("v", 1.0, T0, 2), ("v", 3.0, T0, 2), ("v", 2.0, T0, 2)]),  # same step and time: the largest value
    ("a", []),  # params only
    # values and integers at the edges of their types, as the statement's array literals carry them
    ("a", [("e0", -0.0, T0, 0), ("e1", 5e-324, T0, 0), ("e2", 0.1 + 0.2, T0, 0), ("e3", 1 / 3, T0, 0),
           ("e4", 1.7976931348623157e308, 2**63 - 1, 2**63 - 1), ("e5", -2.5e-308, T0, -(2**63)), ("e6", 12, T0, 0)]),
    ("b", [("y", 5.0, T0, 0)]),
    ("a", [("ok", 1.0, T0, 0), ("bad", None, T0, 0)]),  # an invalid item: nothing is stored
    ("a", [("ok", 1.0, T0, 0), ("bad", 1.0, -5, 0)]),
    ("deleted", [("z", 1.0, T0, 0)]),
    ("missing", [("z", 1.0, T0, 0)]),
]


@contextlib.contextmanager
def path(name: str):
    """Metric writes go through MLflow's path or ours (the store's public methods unchanged)."""
    saved = SqlAlchemyStore._log_metrics_once
    SqlAlchemyStore._log_metrics_once = PATHS[name]
    try:
        yield
    finally:
        SqlAlchemyStore._log_metrics_once = saved


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


def apply(store: SqlAlchemyStore, runs: dict[str, str]) -> list[str]:
    """Log SINGLE, then BATCHES; the outcome of each call, with run ids replaced by labels."""
    outcomes = [outcome(lambda r=runs[label], m=(key, value, ts, step): store.log_metric(r, Metric(*m)))
                .replace(runs[label], label) for label, key, value, ts, step in SINGLE]
    for i, (label, items) in enumerate(BATCHES):
        metrics = [Metric(*item) for item in items]
        params = [Param(f"p{i}", "v")]  # log_batch's own statements stay MLflow's
        outcomes.append(outcome(lambda r=runs[label], m=metrics, p=params: store.log_batch(r, m, p, [RunTag("t", "v")]))
                        .replace(runs[label], label))
    return outcomes


def stored(store: SqlAlchemyStore, runs: dict[str, str]) -> dict:
    def rows(table, run_id):
        with store.engine.connect() as conn:
            return sorted(conn.exec_driver_sql(
                f"SELECT key, value, timestamp, step, is_nan FROM {table} WHERE run_uuid = %s", (run_id,)).all(),
                key=repr)

    out = {}
    for label in ("a", "b", "deleted"):
        run_id = runs[label]
        run = store.get_run(run_id)
        latest = {m.key: (m.value, m.timestamp, m.step) for m in run.data._metric_objs}
        history = {key: sorted(((m.value, m.timestamp, m.step) for m in store.get_metric_history(run_id, key)),
                               key=repr) for key in latest}
        out[label] = {"metrics": rows("metrics", run_id), "latest_metrics": rows("latest_metrics", run_id),
                      "latest": repr(sorted(latest.items())), "history": repr(sorted(history.items())),
                      "params": sorted(run.data.params.items())}
    return out


@pytest.fixture(scope="module")
def both(postgres):
    """The oracle's and ours: (outcomes, stored rows) of the calls through each path."""
    results = {}
    for name in PATHS:
        store = make_store(postgres, f"metric_writes_{name}")
        runs = make_runs(store)
        with path(name):
            results[name] = (apply(store, runs), stored(store, runs))
    return results


def test_same_answers_as_mlflow(both):
    mlflow_outcomes, ours = both["mlflow"][0], both["ours"][0]
    assert ours == mlflow_outcomes
    # the calls exercise every kind of answer, so equality says something
    assert "ok" in ours and any(o.startswith("RESOURCE_DOES_NOT_EXIST") for o in ours)
    assert any("must be in the 'active' state" in o for o in ours)
    assert any("metrics[1]" in o for o in ours)  # a batch item's error names its position


def test_same_rows_and_reads_as_mlflow(both):
    assert both["ours"][1] == both["mlflow"][1]
    latest = {k: (v, t, s, n) for k, v, t, s, n in both["ours"][1]["a"]["latest_metrics"]}
    assert latest["loss"] == (0.6, T0 + 10, 2, False)
    assert latest["z"] == (9.0, T0 + 1, 1, False) and latest["v"] == (3.0, T0, 2, False)
    assert latest["t"] == (0.0, T0, 4, False) and latest["u"] == (0.0, T0, 4, True)  # the first of a tie
    assert len([k for k in latest if k.startswith("k")]) == 300
    assert not any(row[0] in ("ok", "bad") for row in both["ours"][1]["a"]["metrics"])
    assert both["ours"][1]["deleted"]["metrics"] == []


# The array literals' hard cases, beyond what MLflow's name rule lets through to the statement.
HOSTILE_KEYS = ['"', "\\", '\\"', "{a,b}", " padded ", "NULL", "", "it's", "ü ñ 漢", "a\tb", ",", "}"]
EDGE_VALUES = [0.0, -0.0, 5e-324, -5e-324, 0.1, 1 / 3, 1e-300, 1.7976931348623157e308, -1.7976931348623157e308,
               0, 7, -12, 2**70]
EDGE_INTEGERS = [0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63)]


def read_back(postgres, columns: dict) -> tuple:
    """What PostgreSQL reads from the binds with the statement's own casts."""
    [(keys, values, timestamps, steps, is_nans)] = postgres.query(
        "postgres", "SELECT CAST(%(keys)s AS varchar[]), CAST(%(metric_values)s AS double precision[]), "
        "CAST(%(timestamps)s AS bigint[]), CAST(%(steps)s AS bigint[]), CAST(%(is_nans)s AS boolean[])", columns)
    return keys, [repr(v) for v in values], timestamps, steps, is_nans


def test_array_literals_read_back_as_psycopg2s_lists(postgres):
    n = max(len(HOSTILE_KEYS), len(EDGE_VALUES), len(EDGE_INTEGERS))
    keys = (HOSTILE_KEYS * n)[:n]
    values, timestamps = (EDGE_VALUES * n)[:n], (EDGE_INTEGERS * n)[:n]
    steps, is_nans = timestamps[::-1], [i % 3 == 0 for i in range(n)]
    literals = statement_columns(keys, values, timestamps, steps, is_nans)
    assert all(isinstance(v, str) for v in literals.values())  # the literal form was taken
    lists = {"keys": keys, "metric_values": values, "timestamps": timestamps, "steps": steps, "is_nans": is_nans}
    got = read_back(postgres, literals)
    assert got == read_back(postgres, lists)
    assert got[0] == keys and got[1][:3] == ["0.0", "0.0", "5e-324"]  # -0.0 stored as 0.0, as MLflow stores it


def test_other_item_types_keep_psycopg2s_lists():
    # a float step or a bool value reaches PostgreSQL's casts as psycopg2 sends it, not as text
    for columns in ((["k"], [1.0], [0], [1.5], [False]), (["k"], [True], [0], [0], [False]),
                    ([b"k"], [1.0], [0], [0], [False]), (["k"], [1.0], [None], [0], [False])):
        assert statement_columns(*columns)["steps"] == columns[3]


def count_statements(store: SqlAlchemyStore, call) -> list[str]:
    with statements(store.engine) as sent:
        call()
    return [s for s, _ in sent if s.strip() != "SELECT 1"]  # SQLAlchemy's pool pre-ping


def test_one_statement_per_call(postgres):
    store = make_store(postgres, "metric_writes_count")
    run = make_runs(store)["a"]
    batch = [Metric(f"m{i}", float(i), T0, 0) for i in range(100)]
    counts = {}
    for name in PATHS:
        with path(name):
            log_metric = count_statements(store, lambda: store.log_metric(run, Metric("m", 1.0, T0, len(counts))))
            log_batch = count_statements(store, lambda: store.log_batch(run, batch, [], []))
            counts[name] = (log_metric, [s for s in log_batch if "metrics" in s])
    assert len(counts["ours"][0]) == 1 and len(counts["mlflow"][0]) >= 4
    assert len(counts["ours"][1]) == 1 and len(counts["mlflow"][1]) >= 3


def test_concurrent_writers_leave_the_newest_values(postgres):
    store = make_store(postgres, "metric_writes_concurrent")
    run = make_runs(store)["a"]
    rng = random.Random(7)
    singles = [Metric("m", rng.choice([0.1, 0.2, 0.3]), T0 + rng.randrange(20), rng.randrange(50))
               for _ in range(400)]
    # overlapping batches, keys in different orders: the same rows locked in one order
    batches = [[Metric(f"b{k}", rng.choice([1.0, 2.0]), T0, rng.randrange(30)) for k in rng.sample(range(20), 20)]
               for _ in range(60)]
    with path("ours"), concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: store.log_metric(run, m), singles))
        list(pool.map(lambda b: store.log_batch(run, b, [], []), batches))
    latest = {m.key: (m.step, m.timestamp, m.value) for m in store.get_run(run).data._metric_objs}
    assert latest["m"] == max((m.step, m.timestamp, m.value) for m in singles)
    for k in range(20):
        assert latest[f"b{k}"] == max((m.step, m.timestamp, m.value) for b in batches for m in b if m.key == f"b{k}")
    assert len(store.get_metric_history(run, "m")) == len(set(singles))


def test_logged_model_metric_still_reaches_the_model(postgres):
    store = make_store(postgres, "metric_writes_model")
    runs = make_runs(store)
    experiment = store.get_run(runs["a"]).info.experiment_id
    model = store.create_logged_model(experiment_id=experiment, source_run_id=runs["a"])
    with path("ours"):
        store.log_metric(runs["a"], Metric("auc", 0.9, T0, 0, model_id=model.model_id))
    assert [(m.key, m.value) for m in store.get_logged_model(model.model_id).metrics] == [("auc", 0.9)]
    assert store.get_run(runs["a"]).data.metrics == {"auc": 0.9}


SERVER_PROBE = """
exp = client.post("/api/2.0/mlflow/experiments/create", json={"name": "e"}, headers=auth).get_json()
run = client.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp["experiment_id"]}, headers=auth)
run_id = run.get_json()["run"]["info"]["run_id"]
statements.clear()
logged = client.post("/api/2.0/mlflow/runs/log-metric", headers=auth,
                     json={"run_id": run_id, "key": "m", "value": 0.5, "timestamp": 1, "step": 3})
during_log_metric = [s for s in statements if s.strip() != "SELECT 1"]  # not SQLAlchemy's pre-ping
statements.clear()
batch = client.post("/api/2.0/mlflow/runs/log-batch", headers=auth, json={"run_id": run_id, "metrics": [
    {"key": "m", "value": 0.25, "timestamp": 2, "step": 4}, {"key": "n", "value": 1.0, "timestamp": 2, "step": 0}]})
metric_statements_in_batch = [s for s in statements if "metrics" in s]
got = client.get(f"/api/2.0/mlflow/runs/get?run_id={run_id}", headers=auth).get_json()
print(json.dumps({"status": [logged.status_code, batch.status_code], "statements": during_log_metric,
                  "batch_statements": metric_statements_in_batch, "metrics": got["run"]["data"]["metrics"]}))
"""


def test_the_server_writes_metrics_in_one_statement(postgres, tmp_path):
    result = run_app_probe(SERVER_PROBE, postgres.create_database("metric_writes_server"), tmp_path)
    assert result["status"] == [200, 200]
    assert [s.split()[0] for s in result["statements"]] == ["WITH"]
    assert [s.split()[0] for s in result["batch_statements"]] == ["WITH"]
    assert sorted(result["metrics"], key=lambda m: m["key"]) == [
        {"key": "m", "value": 0.25, "timestamp": 2, "step": 4}, {"key": "n", "value": 1.0, "timestamp": 2, "step": 0}]
