"""MLflow's metric-name check, remembered for the names that passed it.

``_validate_metric`` (MLflow 3.17's ``mlflow.utils.validation``) checks each metric's name with
``_validate_metric_name``: a regular expression and a path normalisation, ~2.4 us a metric. A
``log_batch`` of 1000 metrics usually carries a handful of names, so most of those checks
repeat one already passed. The check depends on the name alone (and on the platform, fixed for
the process), so a name that passed once passes again: those are remembered and skipped. A name
that fails is never remembered, so every refusal still comes from MLflow's function, with its
message and the item's path. At most MAX_REMEMBERED names are kept; past that the memory starts
over, so no client can make it grow. ``tests/test_metric_names.py`` compares outcomes with
MLflow's function. Pinned to MLflow 3.17.
"""

from __future__ import annotations

from mlflow.utils import validation

MAX_REMEMBERED = 10_000

_mlflow_validate_metric_name = validation._validate_metric_name
_passed: set[str] = set()


def validate_metric_name(name, path="name") -> None:
    """MLflow's ``_validate_metric_name``, skipped for a name that has passed it before."""
    if type(name) is str and name in _passed:
        return
    _mlflow_validate_metric_name(name, path)  # raises for a bad name
    if type(name) is str:
        if len(_passed) >= MAX_REMEMBERED:
            _passed.clear()
        _passed.add(name)


def install() -> None:
    """``_validate_metric`` (log_metric's and log_batch's check) finds this one by its module name."""
    validation._validate_metric_name = validate_metric_name
