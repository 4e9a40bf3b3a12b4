"""Answer the UI calls that only ``mlflow server``'s FastAPI app (or MLflow's own auth app)
implements, so the UI served by the Flask app runs without 404s and console errors.

* ``GET .../mlflow/users/current``: who the browser logged in as (our Basic-auth user), which
  the UI shows in its header. ``is_basic_auth`` is false: MLflow's change-password and logout
  affordances call endpoints of MLflow's auth app, which this server does not run.
* ``GET .../mlflow/assistant/config`` and ``/providers``: the AI assistant needs a local agent
  CLI and is not available on a server; answer "nothing configured", as the FastAPI app does
  when no provider exists.
* ``GET /ajax-api/2.0/mlflow/artifacts/list`` (the UI's own path only): an empty listing is
  sent as ``{}`` (protobuf JSON drops empty lists) and the UI's run-comparison page then throws
  ``Cannot read properties of undefined (reading 'includes')`` when one of the runs has no
  artifacts; the listing gets an explicit ``"files": []``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

CURRENT_USER = re.compile(r"^/(ajax-api|api)/2\.0/mlflow/users/current$")
ASSISTANT_CONFIG = re.compile(r"^/(ajax-api|api)/3\.0/mlflow/assistant/config$")
ASSISTANT_PROVIDERS = re.compile(r"^/(ajax-api|api)/3\.0/mlflow/assistant/providers$")
UI_LIST_ARTIFACTS = "/ajax-api/2.0/mlflow/artifacts/list"


class UiCompat:
    """Args:
    app: the MLflow WSGI app; every other request goes to it unchanged.
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            body = self._answer(environ.get("PATH_INFO", ""), environ.get("REMOTE_USER") or "")
            if body is not None:
                data = json.dumps(body).encode()
                start_response("200 OK", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
                return [data]
            if environ.get("PATH_INFO") == UI_LIST_ARTIFACTS:
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

    @staticmethod
    def _answer(path: str, user: str) -> dict | None:
        if CURRENT_USER.match(path):
            return {"user": {"id": 0, "username": user, "is_admin": False}, "is_basic_auth": False}
        if ASSISTANT_CONFIG.match(path):
            return {"providers": {}, "projects": {}, "remote_access_allowed": False}
        if ASSISTANT_PROVIDERS.match(path):
            return {"providers": [], "resolved": None, "gateway_vendor_options": {}}
        return None
