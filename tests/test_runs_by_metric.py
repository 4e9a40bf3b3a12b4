"""server.borrowed.runs_by_metric answers exactly what MLflow's own ``_search_runs`` does.

MLflow's path is the oracle, on one real PostgreSQL database: runs whose metric is a number
(ties in value and in start time), NaN, +/-inf, or missing; deleted runs; two experiments; a
metric named like an attribute alias. Every page of every walk (orders, filters, view types,
page sizes that end inside and exactly on a range's end) is compared, runs and token, with
MLflow's, and the pages were read by our ranges (the statements sent say so). Then: the requests
that keep MLflow's path (and its errors), the decision to walk, and the server installs it. The
plan (our index) is checked at 30,000 runs in tests/test_own_indexes.py.
"""

from __future__ import annotations

import math

import pytest
import sqlalchemy
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from server.borrowed import own_indexes, runs_by_metric
from server.config import normalize_backend_uri
from tests.services import run_app_probe, statements

MLFLOWS = SqlAlchemyStore._search_runs  # MLflow's own path: the oracle (this process installs nothing)
T0 = 1_700_000_000_000
RUNS = 150


def value_of(i: int):
    """Metric "m" of run i: ties, NaN, infinities, missing."""
    if i % 5 == 0:
        return None
    if i % 11 == 0:
        return math.nan
    if i % 13 == 0:
        return math.inf
    if i % 17 == 0:
        return -math.inf
    return (i % 7) / 2


@pytest.fixture(scope="module")
def store(postgres):
    uri = normalize_backend_uri(postgres.create_database("runs_by_metric"))
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    own_indexes.create(store.engine)
    big = store.create_experiment("by-metric")
    small = store.create_experiment("by-metric-2")
    for i in range(RUNS):
        exp = big if i < 130 else small
        # start times in threes: ties that run_uuid breaks
        run = store.create_run(exp, "u", T0 + (i // 3) * 1000, [RunTag("t", f"v{i % 3}")], f"run-{i}")
        rid = run.info.run_id
        metrics = [Metric("other", i, T0, 0)]
        if value_of(i) is not None:
            metrics.append(Metric("m", value_of(i), T0, 0))
        if i % 4 == 0:
            metrics.append(Metric("start_time", -i, T0, 0))  # "metrics.created" sorts by this key
        store.log_batch(rid, metrics, [Param("p", str(i % 4))], [])
        if i % 19 == 0:
            store.delete_run(rid)
    with store.engine.begin() as conn:  # the planner's row counts, which the walk decision reads
        conn.execute(sqlalchemy.text("ANALYZE"))
    yield store, [str(big), str(small)]
    store.engine.dispose()


def page(path, store, exps, filter_string, view, size, order, token):
    runs, next_token = path(store, exps, filter_string, view, size, [order], token)
    return [r.to_proto().SerializeToString(deterministic=True) for r in runs], next_token


def is_range(statement: str) -> bool:
    """One of our ranges (MLflow's own query starts with SELECT DISTINCT and the run's columns)."""
    return statement.startswith("SELECT runs.run_uuid \nFROM runs JOIN latest_metrics")


def walk_both(store, exps, filter_string="", view=1, size=7, order="metrics.m DESC") -> int:
    """Walk every page with both paths; assert each is equal; return how many pages our ranges
    answered."""
    token, walked = None, 0
    while True:
        with statements(store.engine) as sent:
            ours = page(runs_by_metric.search_runs, store, exps, filter_string, view, size, order, token)
        walked += any(is_range(statement) for statement, _ in sent)
        theirs = page(MLFLOWS, store, exps, filter_string, view, size, order, token)
        assert ours == theirs, (filter_string, view, size, order, token)
        token = ours[1]
        if token is None:
            return walked


ORDERS = ("metrics.m DESC", "metrics.m ASC", "metrics.`m`", "metrics.created DESC", "metrics.absent DESC")


@pytest.mark.parametrize("order", ORDERS)
def test_every_page_is_mlflows(store, order):
    store_, exps = store
    for size in (7, 1000):
        assert walk_both(store_, exps, "", 1, size, order) > 0


@pytest.mark.parametrize("filter_string", ("params.p = '1'", "metrics.m > 1", "attributes.run_name LIKE 'run-1%'"))
def test_a_filter_keeps_mlflows_path(store, filter_string):
    store_, exps = store
    assert walk_both(store_, exps, filter_string) == 0


def test_the_walk_is_taken_where_it_pays(store):
    """A page of the big experiment walks; a page of 1000 from the small one (20 runs of 150) sorts."""
    store_, exps = store
    assert walk_both(store_, exps[:1], size=50) > 0
    assert walk_both(store_, exps[1:], size=1000) == 0


@pytest.mark.parametrize(("need", "experiment_runs", "all_runs", "walk"), [
    (101, 500_000, 611_000, True), (101, 100_000, 611_000, True), (101, 12_343, 611_000, True),
    (101, 12_342, 611_000, False), (101, 1_000, 611_000, False), (5_001, 500_000, 611_000, False),
    (101, 10, 10, True), (101, 0, -1, False), (101, 5, 0, False)])
def test_worth_walking(need, experiment_runs, all_runs, walk):
    assert runs_by_metric.worth_walking(need, experiment_runs, all_runs) is walk


def test_the_ranges_the_page_sizes_are_chosen_for(store):
    store_, exps = store
    values = [r.data.metrics.get("m") for r in store_.search_runs(exps[:1], "", 1, max_results=1000)]
    numbers = [v for v in values if v is not None and not math.isnan(v)]
    assert (len(numbers), len(values) - len(numbers) - values.count(None), values.count(None)) == (90, 9, 24)


@pytest.mark.parametrize("view", (1, 2, 3))
@pytest.mark.parametrize("size", (1, 9, 10, 11, 30, 45, 101))
def test_every_view_and_page_size(store, view, size):
    """Pages of 1, and pages that end exactly where a range ends and just before or after it: the
    big experiment's active runs are 90 with a number, 9 with NaN and 24 without the metric, so
    pages of 9, 10, 30 and 45 end at 90, and of 9 and 11 at 99."""
    store_, exps = store
    assert walk_both(store_, exps, view=view, size=size) > 0
    assert walk_both(store_, exps[:1], view=view, size=size, order="metrics.m ASC") > 0


def test_a_page_that_starts_past_a_range(store):
    """A token may name any offset (the UI keeps them): one inside the NaN range, one inside the
    missing range, one past the end."""
    store_, exps = store
    for offset in (100, 108, 126, 140, 500):
        token = runs_by_metric.SearchUtils.create_page_token(offset)
        ours = page(runs_by_metric.search_runs, store_, exps, "", 1, 10, "metrics.m DESC", token)
        theirs = page(MLFLOWS, store_, exps, "", 1, 10, "metrics.m DESC", token)
        assert ours == theirs, offset


def test_a_value_changed_between_two_ranges_moves_no_run(store):
    """All ranges read one snapshot: a run whose value turns NaN after the numbers were read (by
    another writer, committed) is still answered once, where it was."""
    store_, exps = store
    before = page(MLFLOWS, store_, exps[:1], "", 1, 1000, "metrics.m DESC", None)
    moved = next(r.info.run_id for r in store_.search_runs(exps[:1], "metrics.m > 1", 1)
                 if not math.isinf(r.data.metrics["m"]))
    changed = []

    def change_before_the_nan_range(conn, cursor, statement, parameters, context, executemany):
        if is_range(statement) and "latest_metrics.is_nan = true" in statement and not changed:
            with store_.engine.connect() as other, other.begin():
                other.execute(sqlalchemy.text("UPDATE latest_metrics SET is_nan = true, value = 0 "
                                              "WHERE run_uuid = :r AND key = 'm'"), {"r": moved})
            changed.append(moved)

    sqlalchemy.event.listen(store_.engine, "before_cursor_execute", change_before_the_nan_range)
    try:
        ours = page(runs_by_metric.search_runs, store_, exps[:1], "", 1, 1000, "metrics.m DESC", None)
    finally:
        sqlalchemy.event.remove(store_.engine, "before_cursor_execute", change_before_the_nan_range)
        with store_.engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE latest_metrics SET is_nan = false, value = :v "
                                         "WHERE run_uuid = :r AND key = 'm'"),
                         {"v": next(m.value for m in store_.get_metric_history(moved, "m")), "r": moved})
    assert changed == [moved]
    assert ours == before


@pytest.mark.parametrize("order_by", (["metrics.m DESC", "params.p"], ["params.p"], ["attributes.start_time"],
                                      None, []))
def test_other_orders_keep_mlflows_path(order_by):
    assert runs_by_metric.metric_order(order_by) is None


@pytest.mark.parametrize("request_", [
    ("", ["metrics.m SIDEWAYS"], None),
    ("metrics.m >>> 1", ["metrics.m DESC"], None),
    ("", ["metrics.m DESC"], "not a token"),
    ("", ["metrics.m DESC", "metrics.m ASC"], None),
])
def test_bad_requests_fail_as_in_mlflow(store, request_):
    store_, exps = store
    filter_string, order_by, token = request_
    errors = []
    for path in (runs_by_metric.search_runs, MLFLOWS):
        with pytest.raises(MlflowException) as caught:
            path(store_, exps, filter_string, 1, 10, order_by, token)
        errors.append((caught.value.error_code, caught.value.message))
    assert errors[0] == errors[1]


SERVER_PROBE = """
found = client.post("/ajax-api/2.0/mlflow/runs/search", headers=auth, json={
    "experiment_ids": [sys.argv[1]], "order_by": ["metrics.`m` DESC"], "max_results": 7})
print(json.dumps({"status": found.status_code, "names": [r["info"]["run_name"] for r in found.get_json()["runs"]],
                  "walked": any(s.startswith("SELECT runs.run_uuid \\nFROM runs JOIN latest_metrics")
                                for s in statements)}))
"""


def test_the_server_answers_through_it(store, tmp_path):
    store_, exps = store
    result = run_app_probe(SERVER_PROBE, store_.db_uri, tmp_path, exps[0])
    expected, _ = MLFLOWS(store_, exps[:1], "", 1, 7, ["metrics.`m` DESC"], None)
    assert result == {"status": 200, "names": [r.info.run_name for r in expected], "walked": True}
