"""server.borrowed.chart_samples answers exactly what MLflow's own chart sampling does.

MLflow's ``_sample_metric_history_single_run`` is the oracle, on one real PostgreSQL database:
histories of every size around the bucket counts (empty, one point, k - 1, k, k + 1, 2k + 1,
...), NaN and infinite values, negative and extreme steps, step ranges, several runs in one
call. Histories where a step holds several points (logged without steps, or twice at one step)
keep MLflow's query, and the tests check which path answered, so the fast path is the one the
equal answers came from. Then: the server installs it.
"""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import event

from server.borrowed import chart_samples
from server.config import normalize_backend_uri
from tests.services import run_app_probe

MLFLOWS = chart_samples.MLFLOWS  # MLflow's own sampling: the oracle (this process installs nothing)
T0 = 1_700_000_000_000
SIZES = (0, 1, 2, 3, 6, 7, 8, 13, 14, 15, 319, 320, 321, 639, 640, 641, 1000, 2503)
BUCKETS = (1, 2, 3, 7, 320)


def value(i: int) -> float:
    if i % 97 == 5:
        return math.nan
    if i % 89 == 3:
        return math.inf
    if i % 83 == 7:
        return -math.inf
    return (i * 7919 % 1000) / 7


def distinct_steps(n: int) -> list[Metric]:
    """Steps unique but uneven (gaps, negatives); timestamps repeat."""
    return [Metric("m", value(i), T0 + i // 3, i * 3 - 50 + (i % 5)) for i in range(n)]


def even_steps(n: int, first: int = 0, gap: int = 1) -> list[Metric]:
    """Steps evenly spaced, as a training loop logs them: the guessed count holds."""
    return [Metric("m", value(i), T0 + i // 3, first + i * gap) for i in range(n)]


@pytest.fixture(scope="module")
def store(postgres):
    uri = normalize_backend_uri(postgres.create_database("chart_samples"))
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    exp = store.create_experiment("charts")
    runs = {}

    def run_with(name: str, metrics: list[Metric]) -> str:
        rid = store.create_run(exp, "u", T0, [], name).info.run_id
        for start in range(0, len(metrics), 1000):
            store.log_batch(rid, metrics[start:start + 1000], [], [])
        runs[name] = rid
        return rid

    for n in SIZES:
        run_with(f"n{n}", distinct_steps(n))
    run_with("extremes", [Metric("m", 1.5, T0, -(2**63)), Metric("m", math.nan, T0, 0),
                          Metric("m", 2.5, T0 + 1, 2**63 - 1)])
    # a step holding several points: MLflow's query must answer
    run_with("no steps", [Metric("m", value(i), T0 + i, 0) for i in range(900)])
    run_with("one step twice", [*distinct_steps(700), Metric("m", 0.25, T0 + 5, 600 * 3 - 50 + 0)])
    # steps 1, 2, 2, 3 sampled by 3: the walk finds steps 1, 2, 2, whose rows are as many as the
    # positions (3) but not the points at them
    run_with("as many rows", [Metric("m", 1.0, T0, 1), Metric("m", 2.0, T0, 2), Metric("m", 3.0, T0 + 1, 2),
                              Metric("m", 4.0, T0, 3)])
    for n in SIZES:
        run_with(f"even{n}", even_steps(n))
    run_with("every tenth", even_steps(2503, first=-70, gap=10))
    # evenly spaced but for one step: the guess is one too many, one too few
    run_with("bigint ends", [Metric("m", 1.5, T0, -(2**63)), Metric("m", 2.5, T0, 2**63 - 1)])
    run_with("one missing", [m for m in even_steps(1000) if m.step != 500])
    run_with("one between", [*even_steps(700, gap=10), Metric("m", 0.5, T0, 5005)])
    run_with("far last", [Metric("m", 1.0, T0, 0), Metric("m", 2.0, T0, 1), Metric("m", 3.0, T0, 10**15)])
    run_with("last twice", [*even_steps(700), Metric("m", 0.5, T0 + 9, 699)])
    run_with("first twice", [*even_steps(700), Metric("m", 0.5, T0 + 9, 0)])
    run_with("two keys", [*distinct_steps(400), *(Metric("other", 1.0, T0, s) for s in range(0, 4000, 7))])
    yield store, runs
    store.engine.dispose()


def answer(store, run_ids, max_results, start_step=None, end_step=None) -> list[tuple]:
    """What get_metric_history_bulk_interval returns, NaN made comparable."""
    found = store.get_metric_history_bulk_interval(run_ids, "m", max_results, start_step, end_step)
    return [(m.run_id, m.key, "nan" if math.isnan(m.value) else m.value, m.timestamp, m.step) for m in found]


@pytest.fixture
def guesses(store):
    """The ``guess`` flag of each walk statement ours sends: [True] when a guessed count held,
    [True, False] when it did not and the points were counted."""
    store_, _ = store
    sent = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "WITH RECURSIVE" in statement:
            sent.append(parameters["guess"])

    event.listen(store_.engine, "before_cursor_execute", record)
    yield sent
    event.remove(store_.engine, "before_cursor_execute", record)


@pytest.fixture
def paths(store, monkeypatch):
    """``both(...)``: MLflow's answer and ours for the same call, and how often ours handed over."""
    store_, _ = store
    handed_over = []

    def counted_mlflows(*args):
        handed_over.append(args[2])
        return MLFLOWS(*args)

    def both(run_ids, max_results, start_step=None, end_step=None):
        monkeypatch.setattr(SqlAlchemyStore, "_sample_metric_history_single_run", MLFLOWS)
        expected = answer(store_, run_ids, max_results, start_step, end_step)
        monkeypatch.setattr(chart_samples, "MLFLOWS", counted_mlflows)
        monkeypatch.setattr(SqlAlchemyStore, "_sample_metric_history_single_run",
                            chart_samples._sample_metric_history_single_run)
        return expected, answer(store_, run_ids, max_results, start_step, end_step)

    return both, handed_over


@pytest.mark.parametrize("k", BUCKETS)
def test_every_size_is_sampled_as_mlflow_does(store, paths, k):
    _, runs = store
    both, handed_over = paths
    for n in SIZES:
        expected, ours = both([runs[f"n{n}"]], k)
        assert ours == expected, (n, k)
        assert len(ours) == min(n, k)
    assert handed_over == []  # every answer came from the walk


@pytest.mark.parametrize("k", BUCKETS)
def test_evenly_spaced_steps_are_sampled_from_a_guessed_count(store, paths, guesses, k):
    _, runs = store
    both, handed_over = paths
    for name in [*(f"even{n}" for n in SIZES), "every tenth", "bigint ends"]:
        guesses.clear()
        expected, ours = both([runs[name]], k)
        assert ours == expected, (name, k)
        # one statement, no count (an empty history is counted to tell it from a guess too large)
        assert guesses == ([True, False] if name == "even0" else [True]), name
    assert handed_over == []


@pytest.mark.parametrize("name", ["one missing", "one between", "far last", "last twice", "first twice"])
def test_a_wrong_guess_is_caught_and_the_points_counted(store, paths, guesses, name):
    _, runs = store
    both, handed_over = paths
    for k in (1, 3, 7, 320, 2500):
        guesses.clear()
        expected, ours = both([runs[name]], k)
        assert ours == expected, (name, k)
        assert guesses == [True, False], (name, k)
    # a step holding two points still hands over to MLflow's query; a step missing or added does not
    assert bool(handed_over) == name.endswith("twice")


@pytest.mark.parametrize("window", [(-50, 10), (0, 0), (-10**6, -51), (100, 2000), (1, 10**12), (2500, 2600),
                                    (-(2**63), 2**63 - 1)])
def test_step_ranges(store, paths, window):
    _, runs = store
    both, handed_over = paths
    for name in ("n15", "n641", "n2503", "even641", "even2503", "every tenth"):
        for k in (1, 7, 320):
            expected, ours = both([runs[name]], k, *window)
            assert ours == expected, (name, k, window)
    assert handed_over == []


def test_extreme_steps_nan_and_several_runs_in_one_call(store, paths):
    _, runs = store
    both, handed_over = paths
    for k in (1, 2, 3, 320):
        expected, ours = both([runs["extremes"]], k)
        assert ours == expected
    several = [runs["n321"], runs["extremes"], runs["n0"], runs["two keys"]]
    expected, ours = both(several, 10)
    assert ours == expected and len(ours) == 10 + 3 + 0 + 10
    assert handed_over == []


@pytest.mark.parametrize("name", ["no steps", "one step twice", "as many rows"])
def test_a_step_holding_several_points_keeps_mlflows_query(store, paths, name):
    _, runs = store
    both, handed_over = paths
    for k in (1, 3, 7, 320, 2500):
        for window in ((None, None), (0, 10**6)):
            expected, ours = both([runs[name]], k, *window)
            assert ours == expected, (k, window)
    assert handed_over and set(handed_over) == {runs[name]}


def test_a_step_twice_outside_the_range_leaves_the_walk_on(store, paths):
    _, runs = store
    both, handed_over = paths
    expected, ours = both([runs["one step twice"]], 50, -50, 1000)  # the doubled step is 1750
    assert ours == expected
    assert handed_over == []


SERVER_PROBE = """
found = client.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval", headers=auth,
                   query_string={"run_ids": sys.argv[1], "metric_key": "m", "max_results": 5})
print(json.dumps({"status": found.status_code, "steps": [m["step"] for m in found.get_json()["metrics"]],
                  "walked": any("WITH RECURSIVE" in s for s in statements)}))
"""


def test_the_server_answers_through_it(store, tmp_path):
    store_, runs = store
    result = run_app_probe(SERVER_PROBE, store_.db_uri, tmp_path, runs["n641"])
    expected = [m.step for m in store_.get_metric_history_bulk_interval([runs["n641"]], "m", 5, None, None)]
    assert result == {"status": 200, "steps": expected, "walked": True}
