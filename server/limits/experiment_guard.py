"""Keep every experiment's artifacts inside the server's artifact store.

MLflow accepts any ``artifact_location`` when an experiment is created (``file:///etc``,
``file:///``, a URI whose query or fragment swallows the run path, another bucket). The
server then lists and serves the artifacts of that experiment's runs from there: the published
file-read chains go through this. Every artifact of this server goes through its proxy, so an
experiment's location must be under the default artifact root (``mlflow-artifacts:/``).

The rule is enforced on the tracking store's ``create_experiment``, where every request that
creates an experiment ends, whatever endpoint it came through and however its JSON spelled the
field (MLflow's parser also takes ``artifactLocation``) or framed its body. MLflow turns the
refusal into a 400 with ``INVALID_PARAMETER_VALUE``.
"""

from __future__ import annotations

import functools

from server.limits.route_guard import percent_decoded

FORBIDDEN = ("?", "#", "\\", "\x00")


def allowed_location(location: str | None, root: str) -> bool:
    """Whether an experiment may keep its artifacts at ``location`` (empty: the default root)."""
    if not location:
        return True
    root = root.rstrip("/")
    decoded = percent_decoded(location, 4)  # every layer a later reader might undo
    for text in (location, decoded):
        if any(ch in text for ch in FORBIDDEN):
            return False
        if ".." in text.replace("\\", "/").split("/"):
            return False
    return location == root or location.startswith(root + "/")


def install(store, root: str) -> None:
    """Make ``store.create_experiment`` refuse a location outside ``root``."""
    from mlflow.exceptions import MlflowException

    create = store.create_experiment

    @functools.wraps(create)
    def create_experiment(name, artifact_location=None, tags=None, *args, **kwargs):
        if not allowed_location(artifact_location, root):
            raise MlflowException.invalid_parameter_value(
                f"artifact_location must be under this server's artifact store ({root.rstrip('/')}); "
                "leave it empty to use the default")
        return create(name, artifact_location, tags, *args, **kwargs)

    store.create_experiment = create_experiment
