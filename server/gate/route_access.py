"""The level (read, write, admin) each of MLflow's routes needs: an allowlist by method and path.

The table below names every route of MLflow 3.17.2's server once, by method and by its path
without the API prefix (``/api/2.0/``, ``/ajax-api/3.0/``...: MLflow serves most routes under
several). :class:`RouteAccess` is built at start-up from the routes the app really has (the
Flask ``url_map`` and the FastAPI routes ``server/borrowed/native_routes.py`` serves) and answers, per
request, the level the matched route needs. A route the table does not name is a write (logged
at start-up); ``tests/test_roles.py`` fails when MLflow adds one, or drops one the table names.

How the table was drawn: every GET is a read; a POST is a read only when it is a search or a
batch get (the UI's searches, the GraphQL reads, the trace metrics). Admin only: deletes of
experiments, registered models and model versions; renaming a registered model (it frees the
name for another model, which consumers loading by name would then get); the server's own
settings (AI gateway secrets, endpoints, budgets and guardrails; workspaces; webhooks; the
assistant's configuration and skills; the demo data). Everything else a training script or a
person at the UI does is a write.
"""

from __future__ import annotations

import re

from server.borrowed.native_routes import RouteMatcher
from server.gate.roles import ADMIN_ONLY, READ, WRITE

# Columns: methods (comma-separated), then the route's path as the app declares it (Flask
# ``<converter:name>`` or FastAPI ``{name:converter}``), without the API prefix.
READ_ROUTES = """
GET           /
POST          /ajax-api/2.0mlflow/experiments/search-datasets
POST          /api/2.0mlflow/experiments/search-datasets
GET           /build/<path:filename>
GET           /gateway/mlflow/v1/models
GET           /get-artifact
GET,POST      /graphql
GET           /health
GET           /model-versions/get-artifact
GET           /static-files/<path:path>
GET           /version
POST          jobs/search
GET           jobs/{job_id}
GET           mlflow-artifacts/artifacts
GET           mlflow-artifacts/artifacts/<path:artifact_path>
GET           mlflow-artifacts/presigned/<path:artifact_path>
GET           mlflow/artifacts/list
POST          mlflow/artifacts/presigned-download-url
GET           mlflow/assistant/config
GET           mlflow/assistant/providers
GET           mlflow/assistant/providers/{provider}/health
GET           mlflow/assistant/providers/{provider}/models
GET           mlflow/assistant/sessions/{session_id}/stream
GET           mlflow/datasets/<dataset_id>
GET           mlflow/datasets/<dataset_id>/experiment-ids
GET           mlflow/datasets/<dataset_id>/records
GET,POST      mlflow/datasets/search
GET           mlflow/experiments/get
GET           mlflow/experiments/get-by-name
GET,POST      mlflow/experiments/search
POST          mlflow/experiments/search-datasets
GET           mlflow/gateway-proxy
GET           mlflow/gateway/budgets/get
GET           mlflow/gateway/budgets/list
GET           mlflow/gateway/budgets/windows
GET           mlflow/gateway/endpoints/bindings/list
GET           mlflow/gateway/endpoints/get
GET           mlflow/gateway/endpoints/list
GET           mlflow/gateway/guardrails/get
GET           mlflow/gateway/guardrails/list
GET           mlflow/gateway/guardrails/list-for-endpoint
GET           mlflow/gateway/model-definitions/get
GET           mlflow/gateway/model-definitions/list
GET           mlflow/gateway/provider-config
GET           mlflow/gateway/secrets/config
GET           mlflow/gateway/secrets/get
GET           mlflow/gateway/secrets/list
GET           mlflow/gateway/supported-models
GET           mlflow/gateway/supported-providers
GET           mlflow/get-online-trace-details
GET           mlflow/get-trace-artifact
GET           mlflow/issues/<issue_id>
POST          mlflow/issues/search
GET           mlflow/jobs/<job_id>
GET           mlflow/label-schemas/get
GET           mlflow/label-schemas/get-by-name
GET           mlflow/label-schemas/list
GET           mlflow/logged-models/<model_id>
GET           mlflow/logged-models/<model_id>/artifacts/directories
GET           mlflow/logged-models/<model_id>/artifacts/files
POST          mlflow/logged-models/search
GET           mlflow/mcp-servers
GET           mlflow/mcp-servers/endpoints
GET           mlflow/mcp-servers/{name:path}
GET           mlflow/mcp-servers/{name:path}/aliases/{alias:path}
GET           mlflow/mcp-servers/{name:path}/endpoints
GET           mlflow/mcp-servers/{name:path}/endpoints/{endpoint_id}
GET           mlflow/mcp-servers/{name:path}/versions
GET           mlflow/mcp-servers/{name:path}/versions/{version:path}
GET           mlflow/metrics/get-history
GET           mlflow/metrics/get-history-bulk
GET           mlflow/metrics/get-history-bulk-interval
GET           mlflow/model-versions/get
GET           mlflow/model-versions/get-download-uri
GET           mlflow/model-versions/search
GET           mlflow/prompt-optimization/jobs/<job_id>
GET,POST      mlflow/prompt-optimization/jobs/search
GET           mlflow/registered-models/alias
GET           mlflow/registered-models/get
GET,POST      mlflow/registered-models/get-latest-versions
GET           mlflow/registered-models/search
GET           mlflow/review-queues/get
GET           mlflow/review-queues/get-by-name
GET           mlflow/review-queues/items/list
GET           mlflow/review-queues/list
GET           mlflow/runs/get
POST          mlflow/runs/search
GET           mlflow/scorers/get
GET           mlflow/scorers/list
GET           mlflow/scorers/online-configs
GET           mlflow/scorers/versions
GET           mlflow/server-info
GET           mlflow/traces
GET           mlflow/traces/<request_id>/info
GET           mlflow/traces/<trace_id>
GET           mlflow/traces/<trace_id>/assessments/<assessment_id>
GET           mlflow/traces/batchGet
POST          mlflow/traces/batchGetInfos
POST          mlflow/traces/calculate-filter-correlation
GET           mlflow/traces/get
POST          mlflow/traces/metrics
POST          mlflow/traces/search
GET,POST      mlflow/ui-telemetry
GET           mlflow/unified-traces
GET           mlflow/webhooks
GET           mlflow/webhooks/<webhook_id>
GET           mlflow/workspaces
GET           mlflow/workspaces/<workspace_name>
"""

WRITE_ROUTES = """
POST          /gateway/anthropic/v1/messages
POST          /gateway/gemini/v1beta/models/{endpoint_name}:generateContent
POST          /gateway/gemini/v1beta/models/{endpoint_name}:streamGenerateContent
POST          /gateway/mlflow/v1/chat/completions
POST          /gateway/openai/v1/chat/completions
POST          /gateway/openai/v1/embeddings
POST          /gateway/openai/v1/responses
POST          /gateway/openai/v1/responses/compact
POST          /gateway/proxy/{endpoint_name}/{path:path}
POST          /gateway/typesafe/v1/systemone
POST          /gateway/{endpoint_name}/mlflow/invocations
POST          /v1/traces
POST          jobs/
PATCH         jobs/cancel/{job_id}
DELETE,PUT    mlflow-artifacts/artifacts/<path:artifact_path>
POST          mlflow-artifacts/mpu/abort/<path:artifact_path>
POST          mlflow-artifacts/mpu/complete/<path:artifact_path>
POST          mlflow-artifacts/mpu/create/<path:artifact_path>
POST          mlflow/artifacts/presigned-upload-url
POST          mlflow/assistant/message
PATCH         mlflow/assistant/sessions/{session_id}
POST          mlflow/assistant/sessions/{session_id}/permission
POST          mlflow/assistant/sessions/{session_id}/tool-result
DELETE        mlflow/datasets/<dataset_id>
POST          mlflow/datasets/<dataset_id>/add-experiments
DELETE,POST   mlflow/datasets/<dataset_id>/records
POST          mlflow/datasets/<dataset_id>/remove-experiments
PATCH         mlflow/datasets/<dataset_id>/tags
DELETE        mlflow/datasets/<dataset_id>/tags/<key>
POST          mlflow/datasets/create
POST          mlflow/experiments/create
POST          mlflow/experiments/delete-experiment-tag
POST          mlflow/experiments/restore
POST          mlflow/experiments/set-experiment-tag
POST          mlflow/experiments/update
POST          mlflow/genai/evaluate/invoke
POST          mlflow/issues
PATCH         mlflow/issues/<issue_id>
POST          mlflow/issues/invoke
PATCH         mlflow/jobs/cancel/<job_id>
POST          mlflow/label-schemas/create
DELETE        mlflow/label-schemas/delete
PATCH         mlflow/label-schemas/update
POST          mlflow/logged-models
DELETE,PATCH  mlflow/logged-models/<model_id>
POST          mlflow/logged-models/<model_id>/params
PATCH         mlflow/logged-models/<model_id>/tags
DELETE        mlflow/logged-models/<model_id>/tags/<tag_key>
POST          mlflow/mcp-servers
DELETE,PATCH  mlflow/mcp-servers/{name:path}
POST          mlflow/mcp-servers/{name:path}/aliases
DELETE        mlflow/mcp-servers/{name:path}/aliases/{alias:path}
POST          mlflow/mcp-servers/{name:path}/endpoints
DELETE,PATCH  mlflow/mcp-servers/{name:path}/endpoints/{endpoint_id}
POST          mlflow/mcp-servers/{name:path}/tags
DELETE        mlflow/mcp-servers/{name:path}/tags/{key:path}
POST          mlflow/mcp-servers/{name:path}/versions
DELETE,PATCH  mlflow/mcp-servers/{name:path}/versions/{version:path}
POST          mlflow/mcp-servers/{name:path}/versions/{version:path}/tags
DELETE        mlflow/mcp-servers/{name:path}/versions/{version:path}/tags/{key:path}
POST          mlflow/model-versions/create
DELETE        mlflow/model-versions/delete-tag
POST          mlflow/model-versions/set-tag
POST          mlflow/model-versions/transition-stage
PATCH         mlflow/model-versions/update
POST          mlflow/prompt-optimization/jobs
DELETE        mlflow/prompt-optimization/jobs/<job_id>
POST          mlflow/prompt-optimization/jobs/<job_id>/cancel
DELETE,POST   mlflow/registered-models/alias
POST          mlflow/registered-models/create
DELETE        mlflow/registered-models/delete-tag
POST          mlflow/registered-models/set-tag
PATCH         mlflow/registered-models/update
POST          mlflow/review-queues/create
POST          mlflow/review-queues/delete
POST          mlflow/review-queues/get-or-create-user
POST          mlflow/review-queues/items/add
POST          mlflow/review-queues/items/remove
POST          mlflow/review-queues/items/set-status
POST          mlflow/review-queues/update
POST          mlflow/runs/create
POST          mlflow/runs/create-promptlab-run
POST          mlflow/runs/delete
POST          mlflow/runs/delete-tag
POST          mlflow/runs/log-batch
POST          mlflow/runs/log-inputs
POST          mlflow/runs/log-metric
POST          mlflow/runs/log-model
POST          mlflow/runs/log-parameter
POST          mlflow/runs/outputs
POST          mlflow/runs/restore
POST          mlflow/runs/set-tag
POST          mlflow/runs/update
POST          mlflow/scorer/invoke
DELETE        mlflow/scorers/delete
PUT           mlflow/scorers/online-config
POST          mlflow/scorers/register
POST          mlflow/traces
PATCH         mlflow/traces/<request_id>
DELETE,PATCH  mlflow/traces/<request_id>/tags
POST          mlflow/traces/<trace_id>/assessments
DELETE,PATCH  mlflow/traces/<trace_id>/assessments/<assessment_id>
DELETE,PATCH  mlflow/traces/<trace_id>/tags
POST          mlflow/traces/delete-traces
POST          mlflow/traces/link-prompts
POST          mlflow/traces/link-to-run
POST          mlflow/upload-artifact
"""

ADMIN_ROUTES = """
PUT           mlflow/assistant/config
POST          mlflow/assistant/skills/install
POST          mlflow/demo/delete
POST          mlflow/demo/generate
POST          mlflow/experiments/delete
POST          mlflow/gateway-proxy
POST          mlflow/gateway/budgets/create
DELETE        mlflow/gateway/budgets/delete
POST          mlflow/gateway/budgets/update
POST          mlflow/gateway/endpoints/bindings/create
DELETE        mlflow/gateway/endpoints/bindings/delete
POST          mlflow/gateway/endpoints/create
DELETE        mlflow/gateway/endpoints/delete
DELETE        mlflow/gateway/endpoints/delete-tag
POST          mlflow/gateway/endpoints/models/attach
POST          mlflow/gateway/endpoints/models/detach
POST          mlflow/gateway/endpoints/set-tag
POST          mlflow/gateway/endpoints/update
POST          mlflow/gateway/guardrails/add-to-endpoint
POST          mlflow/gateway/guardrails/create
DELETE        mlflow/gateway/guardrails/delete
DELETE        mlflow/gateway/guardrails/remove-from-endpoint
PATCH         mlflow/gateway/guardrails/update-config
POST          mlflow/gateway/model-definitions/create
DELETE        mlflow/gateway/model-definitions/delete
POST          mlflow/gateway/model-definitions/update
POST          mlflow/gateway/secrets/create
DELETE        mlflow/gateway/secrets/delete
POST          mlflow/gateway/secrets/update
DELETE        mlflow/model-versions/delete
DELETE        mlflow/registered-models/delete
POST          mlflow/registered-models/rename
POST          mlflow/webhooks
DELETE,PATCH  mlflow/webhooks/<webhook_id>
POST          mlflow/webhooks/<webhook_id>/test
POST          mlflow/workspaces
DELETE,PATCH  mlflow/workspaces/<workspace_name>
"""

# Routes MLflow 3.18 adds, classified from reading its code (not served by the pinned version,
# so not in the tables above, where a route that is not served fails the route-table test):
# the skill registry (reads for viewers; its tags, aliases and versions are written like a
# model's; deleting a skill or one of its versions is admin-only, like prompts and models) and
# the issue-detection schedule (a write, like ``issues/invoke``). A served route found here is
# classified by it; when the pin moves to 3.18, move these lines into the tables above.
PREPARED_READ_ROUTES = """
GET           mlflow/skills
GET           mlflow/skills/@{organization}/{name}
GET           mlflow/skills/@{organization}/{name}/aliases/{alias}
GET           mlflow/skills/@{organization}/{name}/versions
GET           mlflow/skills/@{organization}/{name}/versions/{version}
GET           mlflow/skills/{name}
GET           mlflow/skills/{name}/aliases/{alias}
GET           mlflow/skills/{name}/versions
GET           mlflow/skills/{name}/versions/{version}
"""

PREPARED_WRITE_ROUTES = """
POST          mlflow/issues/schedule/state
POST          mlflow/skills
POST          mlflow/skills/bulk-register
PATCH         mlflow/skills/@{organization}/{name}
POST          mlflow/skills/@{organization}/{name}/aliases
DELETE        mlflow/skills/@{organization}/{name}/aliases/{alias}
POST          mlflow/skills/@{organization}/{name}/tags
DELETE        mlflow/skills/@{organization}/{name}/tags/{key:path}
POST          mlflow/skills/@{organization}/{name}/versions
PATCH         mlflow/skills/@{organization}/{name}/versions/{version}
POST          mlflow/skills/@{organization}/{name}/versions/{version}/tags
DELETE        mlflow/skills/@{organization}/{name}/versions/{version}/tags/{key:path}
PATCH         mlflow/skills/{name}
POST          mlflow/skills/{name}/aliases
DELETE        mlflow/skills/{name}/aliases/{alias}
POST          mlflow/skills/{name}/tags
DELETE        mlflow/skills/{name}/tags/{key:path}
POST          mlflow/skills/{name}/versions
PATCH         mlflow/skills/{name}/versions/{version}
POST          mlflow/skills/{name}/versions/{version}/tags
DELETE        mlflow/skills/{name}/versions/{version}/tags/{key:path}
"""

PREPARED_ADMIN_ROUTES = """
DELETE        mlflow/skills/@{organization}/{name}
DELETE        mlflow/skills/@{organization}/{name}/versions/{version}
DELETE        mlflow/skills/{name}
DELETE        mlflow/skills/{name}/versions/{version}
"""

# With MLflow's workspaces on, the routes that belong to no workspace: the UI's shell, the
# server's own state, the workspaces themselves and the AI assistant (configured per server).
# A request to one of them is judged by the user's server-wide role (a user with roles in
# workspaces only may read them: ``server/gate/workspace_gate.py``); every other route serves
# the data of the request's workspace and is judged by the role held there.
SERVER_ROUTES = """
GET           /
GET           /build/<path:filename>
GET           /static-files/<path:path>
GET           /health
GET           /version
GET           /gateway/mlflow/v1/models
GET           mlflow/server-info
GET,POST      mlflow/workspaces
DELETE,GET,PATCH mlflow/workspaces/<workspace_name>
GET,PUT       mlflow/assistant/config
GET           mlflow/assistant/providers
GET           mlflow/assistant/providers/{provider}/health
GET           mlflow/assistant/providers/{provider}/models
POST          mlflow/assistant/skills/install
POST          mlflow/demo/delete
POST          mlflow/demo/generate
"""
SERVER, WORKSPACE = "server", "workspace"

_API_PREFIX = re.compile(r"^/(ajax-)?api/\d+\.\d+/")


def route_key(path: str) -> str:
    """A route's path without its API prefix: the key of the table."""
    return _API_PREFIX.sub("", path)


def parse_table(text: str, level: str) -> dict[tuple[str, str], str]:
    table = {}
    for line in text.strip().splitlines():
        methods, key = line.split(None, 1)
        for method in methods.split(","):
            table[(method, key.strip())] = level
    return table


TABLE: dict[tuple[str, str], str] = {
    **parse_table(READ_ROUTES, READ), **parse_table(WRITE_ROUTES, WRITE), **parse_table(ADMIN_ROUTES, ADMIN_ONLY)}
PREPARED: dict[tuple[str, str], str] = {
    **parse_table(PREPARED_READ_ROUTES, READ), **parse_table(PREPARED_WRITE_ROUTES, WRITE),
    **parse_table(PREPARED_ADMIN_ROUTES, ADMIN_ONLY)}


def _declared(methods) -> list[str]:
    # HEAD and OPTIONS are added to every route by Flask and Starlette; they are reads
    return sorted(set(methods or ()) - {"HEAD", "OPTIONS"})


class RouteAccess:
    """Args:
    flask_app: MLflow's Flask app (its ``url_map`` is read once, here).
    native: the FastAPI routes served beside it (``NativeRoutes.matcher``): a request one of
        them serves is judged by that route, the one Starlette picks.
    table: the allowlist, ``{(method, path without prefix): level}``.
    prepared: levels of routes a later MLflow serves, used only for a route the app has.
    default: the answer for a route the table does not name (and for a path the app lacks).
    """

    def __init__(self, flask_app, native: RouteMatcher, table: dict = TABLE,
                 prepared: dict = PREPARED, default: str = WRITE):
        self.unclassified: list[tuple[str, str]] = []  # served, but not in the table: writes
        seen = set()

        def level_of(method: str, path: str) -> str:
            key = (method, route_key(path))
            seen.add(key)
            if key in table:
                return table[key]
            if key in prepared:
                return prepared[key]
            self.unclassified.append((method, path))
            return default

        # FastAPI's routes first, as server/borrowed/native_routes.py hands a request to FastAPI when one
        # of its routes matches method and path, and to Flask otherwise
        self._native = native
        self._by_native_route = {(method, path): level_of(method, path)
                                 for path, methods in native.table for method in _declared(methods)}
        self._default = default
        self._adapter = flask_app.url_map.bind("localhost")
        self._by_rule: dict[tuple[str, str], str] = {}
        self._flask_exact: dict[tuple[str, str], str] = {}  # paths without variables: a dict lookup
        for rule in flask_app.url_map.iter_rules():
            for method in _declared(rule.methods):
                level = self._by_rule[(method, rule.rule)] = level_of(method, rule.rule)
                if not rule.arguments:
                    self._flask_exact.setdefault((method, rule.rule), level)
        self.stale = sorted(set(table) - seen)  # in the table, not served: the table is out of date

    def level(self, method: str, path: str) -> str:
        """The level a request needs; the default (WRITE) for a route the app does not have."""
        if method == "OPTIONS":
            return READ if self._default == WRITE else self._default
        if method == "HEAD":
            method = "GET"
        if (route := self._native.route(method, path)) is not None:
            return self._by_native_route.get((method, route), self._default)
        if (found := self._flask_exact.get((method, path))) is not None:
            return found
        return self._flask_level(method, path)

    def _flask_level(self, method: str, path: str) -> str:
        from werkzeug.exceptions import HTTPException
        from werkzeug.routing import RequestRedirect

        try:
            rule, _ = self._adapter.match(path, method, return_rule=True)
        except RequestRedirect:
            # Flask answers with a redirect to the canonical path (``//x``, a missing slash) and
            # runs no view; the request that follows is judged. Only a GET passes for a viewer.
            return READ if method == "GET" and self._default == WRITE else self._default
        except HTTPException:
            return self._default  # no such route (404, 405): unknown, so a write
        return self._by_rule.get((method, rule.rule), self._default)


def scopes(flask_app, native: RouteMatcher) -> RouteAccess:
    """SERVER or WORKSPACE for each request: which role judges it when workspaces are on."""
    return RouteAccess(flask_app, native, table=parse_table(SERVER_ROUTES, SERVER), prepared={}, default=WORKSPACE)
