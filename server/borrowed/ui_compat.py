"""Fix one answer of MLflow's Flask app that crashes its own UI.

``GET /ajax-api/2.0/mlflow/artifacts/list`` (the UI's own path only): an empty listing is sent
as ``{}`` (protobuf JSON drops empty lists) and the UI's run-comparison page then throws
``Cannot read properties of undefined (reading 'includes')`` when one of the runs has no
artifacts; the listing gets an explicit ``"files": []``. ``mlflow server`` 3.17.2 has the same
crash; the API path (``/api/2.0/...``) is left exactly as MLflow answers it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

UI_LIST_ARTIFACTS = "/ajax-api/2.0/mlflow/artifacts/list"


class UiCompat:
    """Args:
    app: the MLflow WSGI app; every other request goes to it unchanged.
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and environ.get("PATH_INFO") == UI_LIST_ARTIFACTS:
            return self._with_files_list(environ, start_response)
        return self.app(environ, start_response)

    def _with_files_list(self, environ: dict, start_response: Callable):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers, exc_info=exc_info)

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        if captured["status"].startswith("200"):
            try:
                listing = json.loads(body)
            except ValueError:
                listing = None
            if isinstance(listing, dict) and "files" not in listing:
                listing["files"] = []
                body = json.dumps(listing).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers, captured["exc_info"])
        return [body]
