"""Keep every experiment's artifacts inside the server's artifact store.

MLflow accepts any ``artifact_location`` when an experiment is created (``file:///etc``,
``file:///``, a URI whose query or fragment swallows the run path, another bucket). The
server then lists and serves the artifacts of that experiment's runs from there: the published
file-read chains go through this. Every artifact of this server goes through its proxy, so an
experiment's location must be under the default artifact root (``mlflow-artifacts:/``); any
other location is refused with 400 before MLflow sees the request.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

CREATE_EXPERIMENT = re.compile(r"^/(ajax-)?api/[^/]+/mlflow/experiments/create$")
MAX_BODY = 1024 * 1024


class ExperimentLocationGuard:
    """Args:
    app: the WSGI application.
    allowed_root: the only artifact root new experiments may name (e.g. ``mlflow-artifacts:/``).
    """

    def __init__(self, app: Callable, allowed_root: str):
        self.app = app
        self._root = allowed_root.rstrip("/")

    def _allowed(self, location: str) -> bool:
        if not location:
            return True  # MLflow then uses the default root
        if any(ch in location for ch in "?#\\\x00") or ".." in location:
            return False
        return location == self._root or location.startswith(self._root + "/")

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("REQUEST_METHOD") != "POST" or not CREATE_EXPERIMENT.match(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(min(length, MAX_BODY)) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # MLflow reads the same bytes
        try:
            location = (json.loads(body) or {}).get("artifact_location") or ""
        except (ValueError, AttributeError):
            location = ""  # not JSON: MLflow answers it
        if isinstance(location, str) and self._allowed(location):
            return self.app(environ, start_response)
        message = (f"artifact_location must be under this server's artifact store ({self._root}); "
                   "leave it empty to use the default")
        data = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": message}).encode()
        start_response("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]
