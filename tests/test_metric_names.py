"""server.borrowed.metric_names gives every metric name the outcome MLflow's own check gives it.

MLflow's ``_validate_metric_name`` is the oracle: for names of every kind (good ones, and each
kind of bad one: None, bad characters, paths that resolve elsewhere), called twice and more with
different paths, ours must pass what it passes and refuse what it refuses with the same error.
"""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils import validation

from server.borrowed import metric_names
from tests.oracle import outcome

NAMES = ["loss", "x", "a/b", "val loss", "ütf-8 / key.name", "m:1", "a.b-c_d", "", ".", "..", "../x", "/abs",
         "a//b", "a/./b", "a/../b", "trailing/", "bad*char", "semi;colon", "new\nline", "tab\t", "q\"uote",
         None, 5, "k" * 300]


@pytest.fixture(autouse=True)
def fresh_memory():
    metric_names._passed.clear()
    yield
    metric_names._passed.clear()


def test_every_name_meets_mlflows_check_each_time():
    outcomes = set()
    for round_ in range(3):
        for index, name in enumerate(NAMES):
            path = f"metrics[{index + round_}].name"
            ours = outcome(metric_names.validate_metric_name, name, path, also=(TypeError,))
            assert ours == outcome(metric_names._mlflow_validate_metric_name, name, path, also=(TypeError,)), name
            outcomes.add(ours)
    assert "ok" in outcomes and len(outcomes) > 8  # good names and several kinds of refusal
    assert metric_names._passed == {n for n in NAMES if outcome(metric_names._mlflow_validate_metric_name, n, "p",
                                                                also=(TypeError,)) == "ok" and isinstance(n, str)}


def test_the_memory_stays_bounded():
    for i in range(metric_names.MAX_REMEMBERED + 50):
        metric_names.validate_metric_name(f"m{i}")
    assert 0 < len(metric_names._passed) <= metric_names.MAX_REMEMBERED


def test_installed_where_mlflows_metric_check_finds_it():
    saved = validation._validate_metric_name
    try:
        metric_names.install()
        validation._validate_metric("seen-by-ours", 1.0, 0, 0)
        assert "seen-by-ours" in metric_names._passed
        with pytest.raises(MlflowException, match=r"metrics\[3\]\.name"):
            validation._validate_batch_log_data([_Metric("ok")] * 3 + [_Metric("../x")] * 2, [], [])
    finally:
        validation._validate_metric_name = saved


class _Metric:
    def __init__(self, key):
        self.key, self.value, self.timestamp, self.step = key, 1.0, 0, 0
