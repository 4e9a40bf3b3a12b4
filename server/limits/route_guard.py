"""Refuse the MLflow routes that make the server call URLs chosen by a client.

Webhooks (MLflow 3.3+) POST to any registered URL on registry events, and the gateway proxy
forwards requests to a deployments server: both are server-side request forgery surfaces on a
server reachable from the internet. They answer 403 unless the operator turns them on
(``MLFLOW_ENABLE_WEBHOOKS=true``; ``MLFLOW_DEPLOYMENTS_TARGET`` set for the gateway proxy).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable

WEBHOOKS = re.compile(r"/(ajax-)?api/[^/]+/mlflow/webhooks(/|$)")
GATEWAY_PROXY = re.compile(r"/(ajax-)?api/[^/]+/mlflow/gateway-proxy(/|$)")


def percent_decoded(text: str, layers: int) -> str:
    """``text`` with up to ``layers`` layers of percent-encoding undone, as a later reader might."""
    for _ in range(layers):
        decoded = urllib.parse.unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def _normalized(path: str) -> str:
    # fold case, repeated slashes and any remaining percent-encoding, so no spelling slips past
    return re.sub(r"/+", "/", percent_decoded(path, 3)).lower()


class RouteGuard:
    """Args:
    app: the WSGI application.
    enable_webhooks: let the webhooks API through.
    enable_gateway_proxy: let the gateway proxy through.
    """

    def __init__(self, app: Callable, enable_webhooks: bool = False, enable_gateway_proxy: bool = False):
        self.app = app
        self._blocked = []
        if not enable_webhooks:
            self._blocked.append((WEBHOOKS, "webhooks are disabled on this server (MLFLOW_ENABLE_WEBHOOKS)"))
        if not enable_gateway_proxy:
            self._blocked.append((GATEWAY_PROXY, "the gateway proxy is disabled on this server"))

    def __call__(self, environ: dict, start_response: Callable):
        path = _normalized(environ.get("PATH_INFO", ""))
        for pattern, reason in self._blocked:
            if pattern.search(path):
                body = json.dumps({"error_code": "PERMISSION_DENIED", "message": reason}).encode()
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self.app(environ, start_response)
