"""Answer every server error with a plain message, and keep the details in the log.

MLflow puts an exception's text in the body of its 500s: the store's URI (host, database name)
from ``model-versions/get-artifact``, the database's host and port during an outage. The body
of any 5xx is replaced by a JSON message with an id that finds the original in the log; the
original is logged (redacted, at most ``MAX_LOGGED`` bytes). A database that cannot be reached
is a 503 with ``Retry-After``, which the MLflow client retries.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable

from server.serving import logs

log = logging.getLogger("server.errors")
MAX_LOGGED = 4096
# signs of a database that is down or unreachable, as psycopg2 and SQLAlchemy word them
DATABASE_DOWN = ("OperationalError", "could not connect to server", "Connection refused",
                 "server closed the connection unexpectedly", "the database system is")


def _close(iterable) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class PlainServerErrors:
    """Args:
    app: the WSGI application whose 5xx bodies are replaced.
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        captured = {}

        def capture(status, headers, exc_info=None):
            if status[:1] == "5":
                captured["status"] = status
                return lambda data: None  # nothing of the original is written
            return start_response(status, headers, exc_info)

        result = self.app(environ, capture)
        if not captured:
            return result
        original = b""
        try:
            for chunk in result:
                if len(original) < MAX_LOGGED:
                    original += chunk
        finally:
            _close(result)
        return self._plain(environ, start_response, captured["status"], original[:MAX_LOGGED])

    def _plain(self, environ, start_response, status: str, original: bytes) -> list[bytes]:
        error_id = secrets.token_hex(6)
        text = logs.redact(original.decode("utf-8", "replace"))
        down = any(sign in text for sign in DATABASE_DOWN)
        log.error("%s %s answered %s (error id %s): %s", environ.get("REQUEST_METHOD"),
                  environ.get("PATH_INFO"), status, error_id, text)
        if down:
            status = "503 Service Unavailable"
            message = f"the database is not reachable; retry shortly (error id {error_id})"
            code = "TEMPORARILY_UNAVAILABLE"
        else:
            message = f"internal error; the server log has the details under error id {error_id}"
            code = "INTERNAL_ERROR"
        body = json.dumps({"error_code": code, "message": message}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if down:
            headers.append(("Retry-After", "5"))
        start_response(status, headers)
        return [body]
