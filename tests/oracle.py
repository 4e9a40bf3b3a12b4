"""Outcomes of a call, as the tests that hold our code to MLflow's own (the oracle) compare them."""

from __future__ import annotations

from mlflow.exceptions import MlflowException


def outcome(call, *args, also: tuple[type[Exception], ...] = ()) -> str:
    """``"ok"`` when ``call(*args)`` returns, MLflow's error as ``"CODE: message"``, an exception of
    a type in ``also`` as ``"Type: text"``; any other exception fails the test."""
    try:
        call(*args)
        return "ok"
    except MlflowException as exc:
        return f"{exc.error_code}: {exc.message}"
    except also as exc:
        return f"{type(exc).__name__}: {exc}"
