"""server.borrowed.run_pages answers exactly what MLflow's own ``_search_runs`` does.

MLflow's path is the oracle, on one real PostgreSQL database of 620 runs in two experiments
(more than one 500-run statement of children): metrics that are numbers, NaN or infinite,
several of each kind per run, params, tags, runs whose name is only in their ``mlflow.runName``
tag, runs without any children, deleted runs, dataset inputs and model outputs. Every page of
every query (filters of every kind, orders, view types, page sizes, no ``max_results``) is
compared byte for byte, runs and page token, children in their order included. Then: its errors
are MLflow's, and no child is loaded as an ORM object.
"""

from __future__ import annotations

import json
import math

import pytest
import sqlalchemy
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from server.borrowed import run_pages
from server.config import normalize_backend_uri
from tests.services import run_app_probe, statements

MLFLOWS = SqlAlchemyStore._search_runs  # MLflow's own path (this process installs nothing)
T0 = 1_700_000_000_000
RUNS = 620


def metrics_of(i: int) -> list[Metric]:
    values = [(i % 7) / 2, math.nan, math.inf, -math.inf, -0.0]
    found = [Metric("loss", values[i % 5], T0 + i, i % 3), Metric("acc", i / RUNS, T0, 0)]
    if i % 4 == 0:
        found.append(Metric("loss", 0.25, T0 + i + 1, 9))  # a later step: the latest value changes
    return [] if i % 10 == 9 else found


@pytest.fixture(scope="module")
def store(postgres):
    uri = normalize_backend_uri(postgres.create_database("run_pages"))
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    exps = [store.create_experiment("pages"), store.create_experiment("pages-2")]
    nameless = []
    for i in range(RUNS):
        run = store.create_run(exps[i % 5 == 0], "ünï", T0 + (i // 3) * 1000,
                               [RunTag("t", f"v{i % 3}")] if i % 10 != 9 else [], f"run-{i}")
        rid = run.info.run_id
        store.log_batch(rid, metrics_of(i), [Param("p", str(i % 4)), Param("q", "x" * (i % 50))] if i % 10 != 9 else [],
                        [RunTag("note", "\u2028 \"quoted\"")] if i % 6 == 0 else [])
        if i % 7 == 0:
            store.log_inputs(rid, [DatasetInput(Dataset(f"d{i % 2}", f"digest{i % 2}", "local", "{}"),
                                                [InputTag("mlflow.data.context", "train")])])
        if i % 11 == 0:
            model = store.create_logged_model(run.info.experiment_id, f"model-{i}", rid)
            store.log_outputs(rid, [LoggedModelOutput(model.model_id, i % 3)])
        if i % 13 == 0:
            nameless.append(rid)
        if i % 19 == 0:
            store.delete_run(rid)
    with store.engine.begin() as conn:  # runs named only by their mlflow.runName tag, as older MLflow left them
        conn.execute(sqlalchemy.text("UPDATE runs SET name = NULL WHERE run_uuid = ANY(:ids)"), {"ids": nameless})
    yield store, [str(e) for e in exps]
    store.engine.dispose()


def pages(path, store, exps, filter_string, view, size, order_by) -> list:
    """Every page of a query, each as its runs' bytes and its token."""
    found, token = [], None
    while True:
        runs, token = path(store, exps, filter_string, view, size, order_by, token)
        found.append(([r.to_proto().SerializeToString(deterministic=True) for r in runs], token))
        if token is None or size is None:
            return found


FILTERS = ("", "metrics.loss > 1", "metrics.loss = 0.25", "params.p = '1'", "tags.t != 'v0'",
           "attributes.run_name LIKE 'run-1%'", "attributes.status = 'RUNNING'", "datasets.name = 'd1'",
           "metrics.acc < 0.5 AND params.q LIKE 'xx%'", "tags.`mlflow.runName` = 'run-26'")
ORDERS = (None, ["attributes.start_time DESC"], ["metrics.loss DESC"], ["metrics.acc ASC", "params.p DESC"],
          ["tags.t"], ["attributes.run_name"])


@pytest.mark.parametrize("filter_string", FILTERS)
def test_every_filter_answers_mlflows_pages(store, filter_string):
    store_, exps = store
    for order_by in ORDERS:
        ours = pages(run_pages.search_runs, store_, exps, filter_string, 1, 250, order_by)
        assert ours == pages(MLFLOWS, store_, exps, filter_string, 1, 250, order_by), (filter_string, order_by)


@pytest.mark.parametrize("view", (1, 2, 3))
@pytest.mark.parametrize("size", (1, 37, 600, 1000, None))
def test_every_view_and_page_size(store, view, size):
    store_, exps = store
    if size == 1:
        exps = exps[1:]  # a page at a time through the smaller experiment
    ours = pages(run_pages.search_runs, store_, exps, "", view, size, None)
    assert ours == pages(MLFLOWS, store_, exps, "", view, size, None)
    assert sum(len(runs) for runs, _ in ours) > 0


def test_the_answers_hold_what_the_data_holds(store):
    """Not only equal to MLflow's: the cases the data was made for are in the answer."""
    store_, exps = store
    runs, _ = run_pages.search_runs(store_, exps, "", 3, None, None, None)
    assert len(runs) == RUNS
    assert {r.info.run_name for r in runs} >= {"run-13", "run-26"}  # from their tags
    assert any(math.isnan(m.value) for r in runs for m in r.data._metric_objs)
    assert any(r.inputs.dataset_inputs for r in runs) and any(r.outputs.model_outputs for r in runs)
    assert sum(not r.data.metrics and not r.data.params for r in runs) == RUNS // 10
    assert {r.data.metrics.get("loss") for r in runs if r.info.run_name == "run-8"} == {0.25}


@pytest.mark.parametrize("request_", [
    ("metrics.loss >>> 1", None, None, 10),
    ("", ["metrics.loss SIDEWAYS"], None, 10),
    ("", None, "not a token", 10),
    ("", None, None, 50_001),
])
def test_bad_requests_fail_as_in_mlflow(store, request_):
    store_, exps = store
    filter_string, order_by, token, size = request_
    errors = []
    for path in (run_pages.search_runs, MLFLOWS):
        with pytest.raises(MlflowException) as caught:
            path(store_, exps, filter_string, 1, size, order_by, token)
        errors.append((caught.value.error_code, caught.value.message))
    assert errors[0] == errors[1]


def test_children_are_read_as_rows_500_runs_a_statement(store):
    store_, exps = store
    with statements(store_.engine) as sent:
        runs, _ = run_pages.search_runs(store_, exps, "", 3, 1000, None, None)
    assert len(runs) == RUNS
    children = [s for s, _ in sent if any(f"FROM {table} WHERE run_uuid IN" in s
                                         for table in ("latest_metrics", "params", "tags"))]
    assert len(children) == 3 * 2, children  # 620 runs: two statements for each kind of child


SERVER_PROBE = """
found = client.post("/api/2.0/mlflow/runs/search", headers=auth, json={
    "experiment_ids": sys.argv[1:], "max_results": 300, "run_view_type": "ALL"})
print(json.dumps({"status": found.status_code, "body": found.get_json(),
                  "children": [s for s in statements if "FROM latest_metrics WHERE run_uuid IN" in s]}))
"""


def test_the_server_answers_through_it(store, tmp_path):
    """Through the app the server runs: MLflow's answer, with the children read as plain rows
    (MLflow's selectinload labels every column ``AS latest_metrics_<column>``)."""
    from mlflow.protos import service_pb2
    from mlflow.utils.proto_json_utils import message_to_json

    store_, exps = store
    result = run_app_probe(SERVER_PROBE, store_.db_uri, tmp_path, *exps)
    expected, token = MLFLOWS(store_, exps, "", 3, 300, None, None)
    response = service_pb2.SearchRuns.Response(next_page_token=token)
    response.runs.extend([run.to_proto() for run in expected])
    assert result["status"] == 200 and result["body"] == json.loads(message_to_json(response))
    assert result["children"] and not any(" AS latest_metrics_" in s for s in result["children"]), result["children"]
