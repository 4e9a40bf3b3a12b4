"""Logs as one JSON object a line, which Cloud Logging parses (``severity``, ``httpRequest``),
with every known secret value redacted from every line.

``JsonFormatter`` is used for gunicorn's error log, MLflow's loggers and ours;
``GunicornLogger`` (gunicorn's ``logger_class``) also writes the access log as JSON with the
authenticated user, their role, the gate's decision, the status and the latency. A small
formatter of our own instead of python-json-logger: Cloud Logging needs two field names and the
redaction step, nothing more.
"""

from __future__ import annotations

import datetime
import json
import logging
import re

from gunicorn import glogging

from server.gate.role_gate import DECISION, ROLE

REDACTED = "***"
# user:password@ in any URI, whatever the scheme (DB URIs, proxies); the user name stays
_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^@\s/]*@")

_secret_values: tuple[str, ...] = ()


def install_redaction(values: tuple[str, ...]) -> None:
    """Set the values no log line may contain (passwords, secret file contents)."""
    global _secret_values
    # longest first, so a value that contains another is replaced whole
    _secret_values = tuple(sorted({v for v in values if len(v) >= 3}, key=len, reverse=True))


def redact(text: str) -> str:
    for value in _secret_values:
        if value in text:
            text = text.replace(value, REDACTED)
    return _URI_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        entry = {
            "severity": record.levelname if record.levelname != "WARN" else "WARNING",
            "message": redact(message),
            "logger": record.name,
            "time": _now(),
        }
        return json.dumps(entry, ensure_ascii=False)


def json_handlers(logger: logging.Logger) -> None:
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


# Libraries that log the wire at DEBUG: hpack decodes every header of an HTTP/2 request
# (Authorization included), botocore prints each S3 request's headers and parameters, urllib3
# and the Google clients print URLs (signed ones carry credentials). They stay at INFO whatever
# LOG_LEVEL says: turning on debug logs must not turn them into a credential log.
WIRE_LOGGERS = ("hpack", "h2", "botocore", "boto3", "s3transfer", "urllib3", "google", "httpx", "httpcore")


def configure_python_logging(level: str) -> None:
    """Root, MLflow and our own loggers write JSON to stderr; so do Python warnings."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(level.upper())
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    json_handlers(root)
    for name in ("mlflow", "server", "alembic"):
        logger = logging.getLogger(name)
        json_handlers(logger)


class GunicornLogger(glogging.Logger):
    """gunicorn's logger with JSON lines for the error log and the access log."""

    def setup(self, cfg):
        super().setup(cfg)
        json_handlers(self.error_log)
        # the access log gets our own JSON line; its handlers print the message only
        for handler in self.access_log.handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        try:
            code = int(status)
        except (TypeError, ValueError):
            code = 0
        latency = request_time.total_seconds()
        path = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
        entry = {
            "severity": "ERROR" if code >= 500 else ("WARNING" if code >= 400 else "INFO"),
            "message": f"{environ.get('REQUEST_METHOD')} {path} {code} {latency * 1000:.1f}ms",
            "time": _now(),
            "user": environ.get("REMOTE_USER") or "-",
            "role": environ.get(ROLE) or "-",
            # allowed, denied (role), conflict (write-once), unauthenticated, throttled, open, unavailable
            "decision": environ.get(DECISION) or "-",
            "httpRequest": {
                "requestMethod": environ.get("REQUEST_METHOD"),
                "requestUrl": path,
                "status": code,
                "responseSize": str(getattr(resp, "sent", 0) or 0),
                "userAgent": environ.get("HTTP_USER_AGENT", ""),
                "remoteIp": environ.get("REMOTE_ADDR", ""),
                "protocol": environ.get("SERVER_PROTOCOL", ""),
                "latency": f"{latency:.6f}s",
            },
        }
        try:
            self.access_log.info(redact(json.dumps(entry, ensure_ascii=False)))
        except Exception:  # noqa: BLE001 - logging must never break a response
            self.error_log.exception("cannot write the access log line")
