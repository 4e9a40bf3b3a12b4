"""Every internal of MLflow, gunicorn and protobuf that this server patches, replaces,
subclasses or reads: the one list to read when a pin moves.

Each entry names what it touches, the module of ours that touches it, why, and the kind:

* ``safety``: without it the server would be less safe or lose data (the auth gate, shutdown,
  memory and connection bounds, routes). If its target is missing or changed shape, the server
  refuses to start with an error that names the entry.
* ``speed``: a faster path for the same result. If its target changed, the patch switches
  itself off with a warning and MLflow's own code runs.

"Shape" is what our code relies on: the attribute exists, and a callable's parameters are the
ones listed. ``verify()`` runs at start-up (``server/app.py``, through ``verdict.py``, which reuses
the image build's run while the files it read are unchanged); ``tests/test_internals.py`` is
the contract test, and also pins a digest of each target's source, so a pin bump whose target
changed at all fails there and points at the entry to re-read.

Upgrading MLflow (or gunicorn, protobuf): bump the pin, run the tests, read the entries that
fail, re-check their code against the new version, update ``WRITTEN_FOR`` and the digests.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass, field

log = logging.getLogger("server.internals")

WRITTEN_FOR = {"mlflow": "3.17.2", "gunicorn": "27.0.1", "protobuf": "7.36.2", "fastapi": "0.165.0", "huey": "3.5.4", "werkzeug": "3.1.9"}

# Names MLflow's server reads from the environment; ``mlflow server`` sets them for its workers.
BACKEND_STORE_URI_ENV_VAR = "_MLFLOW_SERVER_FILE_STORE"
REGISTRY_STORE_URI_ENV_VAR = "_MLFLOW_SERVER_REGISTRY_STORE"
ARTIFACT_ROOT_ENV_VAR = "_MLFLOW_SERVER_ARTIFACT_ROOT"
SERVE_ARTIFACTS_ENV_VAR = "_MLFLOW_SERVER_SERVE_ARTIFACTS"
ARTIFACTS_DESTINATION_ENV_VAR = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"
HUEY_STORAGE_PATH_ENV_VAR = "_MLFLOW_HUEY_STORAGE_PATH"
STATIC_PREFIX_ENV_VAR = "_MLFLOW_STATIC_PREFIX"  # prefixes every route's path, Flask's and FastAPI's


# the speed entries, by the names create_app asks verify() about
COMPACT_JSON = "compact JSON responses"
METRIC_WRITES = "one-statement metric writes"
BATCH_PARSING = "log_batch metrics parsed directly"
CLOSING_COMMIT = "a store session's closing commit expires nothing"
RUNS_BY_METRIC = "runs ordered by a metric from an index"
RUN_PAGES = "runs pages made from rows"
FIELD_ALIASES = "a body's field spellings checked by a planned walk"
METRIC_NAMES = "a metric name checked once"
CHART_SAMPLES = "a chart's sampled history read by position"
SEARCH_RUNS_JSON = "runs/search answered as JSON built from the runs"
URL_BUILDERS = "URL builders on first use"


class InternalsChangedError(RuntimeError):
    """A safety entry's target is missing or changed shape: the server must not start."""


@dataclass(frozen=True)
class Target:
    """One attribute we rely on: ``module`` plus a dotted ``attr`` path (empty: the module)."""

    module: str
    attr: str = ""
    params: tuple[str, ...] | None = None  # a callable's parameter names, in order
    value: object = None  # a constant's expected value
    contains: str | None = None  # text its source must hold (an instance attribute it sets)

    @property
    def name(self) -> str:
        return f"{self.module}:{self.attr}" if self.attr else self.module

    def resolve(self):
        obj = importlib.import_module(self.module)
        for part in filter(None, self.attr.split(".")):
            obj = getattr(obj, part)
        return obj

    def problem(self) -> str | None:
        """Why this target no longer fits our code, or None."""
        try:
            obj = self.resolve()
        except (ImportError, AttributeError) as exc:
            return f"{self.name} is gone ({exc.__class__.__name__}: {exc})"
        if self.params is not None:
            try:
                params = tuple(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                return f"{self.name} is no longer a function"
            if params != self.params:
                return f"{self.name} now takes {params}, written for {self.params}"
        if self.value is not None and obj != self.value:
            return f"{self.name} is now {obj!r}, written for {self.value!r}"
        if self.contains is not None:
            try:
                source = inspect.getsource(obj)
            except (OSError, TypeError):
                return f"{self.name}: its source cannot be read"
            if self.contains not in source:
                return f"{self.name} no longer has {self.contains!r}"
        return None


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "safety" or "speed"
    used_by: str
    why: str
    targets: tuple[Target, ...] = field(default_factory=tuple)

    def problems(self) -> list[str]:
        return [p for p in (t.problem() for t in self.targets) if p]


H = "mlflow.server.handlers"
SEARCH_RUNS_PARAMS = ("self", "experiment_ids", "filter_string", "run_view_type", "max_results", "order_by",
                      "page_token")
SQL_TRACKING = "mlflow.store.tracking.sqlalchemy_store"
SQL_REGISTRY = "mlflow.store.model_registry.sqlalchemy_store"

ENTRIES: tuple[Entry, ...] = (
    Entry("server environment", "safety", "server/borrowed/mlflow_env.py",
          "the variables MLflow's Flask app reads for its stores and artifact proxy at import",
          (Target("mlflow.server.constants", "BACKEND_STORE_URI_ENV_VAR", value=BACKEND_STORE_URI_ENV_VAR),
           Target("mlflow.server.constants", "REGISTRY_STORE_URI_ENV_VAR", value=REGISTRY_STORE_URI_ENV_VAR),
           Target("mlflow.server.constants", "ARTIFACT_ROOT_ENV_VAR", value=ARTIFACT_ROOT_ENV_VAR),
           Target("mlflow.server.constants", "SERVE_ARTIFACTS_ENV_VAR", value=SERVE_ARTIFACTS_ENV_VAR),
           Target("mlflow.server.constants", "ARTIFACTS_DESTINATION_ENV_VAR",
                  value=ARTIFACTS_DESTINATION_ENV_VAR))),
    Entry("store start-up", "safety", "server/app.py",
          "the stores are opened in gunicorn's master and their engines disposed after the fork "
          "(the workspace store's too: shared by the workers, its connection gave wrong rows)",
          (Target(H, "initialize_backend_stores",
                  params=("backend_store_uri", "registry_store_uri", "default_artifact_root",
                          "workspace_store_uri", "read_replica_backend_store_uri")),
           Target(H, "_tracking_store"), Target(H, "_model_registry_store"), Target(H, "_job_store"),
           Target("mlflow.server.workspace_helpers", "_workspace_store"),
           Target("mlflow.store.workspace.sqlalchemy_store", "SqlAlchemyStore.__init__",
                  contains="self._engine = db_utils.create_sqlalchemy_engine_with_retry(db_uri)"))),
    Entry("MLflow's auth app marked absent", "safety", "server/app.py",
          "search_runs imports mlflow.server.auth per call: without Flask-WTF that fails slowly and, "
          "under concurrency, with a 500; None in sys.modules makes it fail fast and alike",
          (Target(H, "search_runs_impl", contains="from mlflow.server import auth"),)),
    Entry("one connection pool per worker", "safety", "server/app.py",
          "the registry store shares the tracking store's engine map: the connection bound in the README",
          (Target(SQL_TRACKING, "SqlAlchemyStore._engine_map"), Target(SQL_REGISTRY, "SqlAlchemyStore._engine_map"))),
    Entry("own indexes", "speed", "server/borrowed/own_indexes.py, server/borrowed/planner_settings.py",
          "indexes of ours on MLflow's tables serve these queries' shapes: search_runs ordered by start "
          "time within an experiment (with and without MLflow's NULLs-last CASE), and search_traces' "
          "EXISTS on a span's name (driven from the matching spans once the server's connections plan "
          "with an SSD's random_page_cost), and runs_by_metric's ranges of latest values by key and value; "
          "tests/test_own_indexes.py checks with EXPLAIN that each is used",
          (Target(SQL_TRACKING, "_get_orderby_clauses", params=("order_by_list", "session"),
                  contains="clauses.append(SqlRun.start_time.desc())"),
           Target(SQL_TRACKING, "_get_orderby_clauses",
                  contains="case = sql.case((order_value.is_(None), 1), else_=0)"),
           Target(SQL_TRACKING, "_get_filter_clauses_for_search_traces",
                  contains="span_column = getattr(SqlSpan, key_name)"))),
    Entry("schema migration", "safety", "server/borrowed/migrate.py",
          "migrations once, under an advisory lock, before the workers fork",
          (Target("mlflow.store.db.utils", "_all_tables_exist", params=("engine",)),
           Target("mlflow.store.db.utils", "_is_empty_database", params=("engine",)),
           Target("mlflow.store.db.utils", "_initialize_tables", params=("engine",)),
           Target("mlflow.store.db.utils", "_get_latest_schema_revision", params=()),
           Target("mlflow.store.db.utils", "_get_schema_version", params=("engine",)),
           Target("mlflow.store.db.utils", "_upgrade_db", params=("engine",)))),
    Entry("streaming artifact proxy", "safety", "server/borrowed/artifact_streaming.py",
          "uploads and downloads through the proxy in bounded chunks instead of whole temp files "
          "(on Cloud Run /tmp is memory)",
          (Target(H, "_send_artifact", params=("artifact_repository", "path")),
           Target(H, "validate_path_is_safe", params=("path",)),
           Target(H, "_get_workspace_scoped_repo_path_if_enabled", params=("artifact_path",)),
           Target(H, "_get_artifact_repo_mlflow_artifacts", params=()),
           Target(H, "_content_disposition_attachment", params=("filename",)),
           Target(H, "_guess_mime_type", params=("file_path",)),
           Target(H, "catch_mlflow_exception"),
           Target("mlflow.store.artifact.artifact_repository_registry", "_artifact_repository_registry"),
           Target("mlflow.store.artifact.artifact_repo", "StreamUploadMixin"),
           Target("mlflow.store.artifact.gcs_artifact_repo", "GCSArtifactRepository"),
           Target("mlflow.store.artifact.s3_artifact_repo", "S3ArtifactRepository"))),
    Entry("metric history in batches", "safety", "server/borrowed/metric_history.py",
          "get-history reads a metric's points through a server-side cursor, a batch at a time, "
          "instead of MLflow's whole history in memory (1.9 GB for 1M points)",
          (Target(H, "_get_metric_history",
                  contains="max_results = request_message.max_results if request_message.HasField(\"max_results\")"),
           Target(H, "_get_request_message", params=("request_message", "flask_request", "schema")),
           Target(H, "_assert_string"), Target(H, "_assert_required"),
           Target(H, "catch_mlflow_exception"), Target(H, "_disable_if_artifacts_only"),
           Target(H, "_get_tracking_store"), Target(H, "message_to_json"),
           Target(SQL_TRACKING, "SqlAlchemyStore.get_metric_history",
                  params=("self", "run_id", "metric_key", "max_results", "page_token"),
                  contains="query.order_by(SqlMetric.timestamp, SqlMetric.step, SqlMetric.value)"),
           Target(SQL_TRACKING, "SqlAlchemyStore._validate_run_accessible", params=("self", "session", "run_id")),
           Target("mlflow.store.tracking.dbmodels.models", "SqlMetric.to_mlflow_entity",
                  contains='value=self.value if not self.is_nan else float("nan")'),
           Target("mlflow.utils.search_utils", "SearchUtils.parse_start_offset_from_page_token"),
           Target("mlflow.utils.search_utils", "SearchUtils.create_page_token"))),
    Entry("FastAPI-only routes", "safety", "server/borrowed/native_routes.py, server/borrowed/verdict.py",
          "MLflow's FastAPI app (OTLP traces, jobs, gateway, MCP registry, assistant) behind our gate; the "
          "build records its routes (each router's module is named so that its file is in the record's "
          "digests) and the app is built on first use",
          (Target("mlflow.server.fastapi_app", "create_fastapi_app", params=("flask_app",)),
           Target("mlflow.server.otel_api", "otel_router"),
           Target("mlflow.server.job_api", "job_api_router"),
           Target("mlflow.server.gateway_api", "gateway_router"),
           Target("mlflow.server.assistant.api", "assistant_router"),
           Target("mlflow.server.mcp_server_api", "mcp_server_router"),
           Target("mlflow.server.mcp_server_api", "get_mcp_server_api_route_prefixes", params=()),
           Target(H, "STATIC_PREFIX_ENV_VAR", value=STATIC_PREFIX_ENV_VAR),
           Target("mlflow.server.artifact_router", "artifact_router"),
           Target("mlflow.server.server_info_api", "server_info_router"),
           Target("fastapi.routing", "_RouterIncludeContext"))),
    Entry("job runner", "safety", "server/jobs/runner.py, server/jobs/fleet.py, server/jobs/periodic.py",
          "MLflow's job runner done in one process beside the server, taking jobs from the database as one of "
          "a fleet: its job functions, their subprocess, the store's transitions and its periodic tasks",
          (Target("mlflow.server.constants", "HUEY_STORAGE_PATH_ENV_VAR", value=HUEY_STORAGE_PATH_ENV_VAR),
           Target("mlflow.server.jobs.utils", "_job_name_to_fn_fullname_map"),
           Target("mlflow.server.jobs.utils", "_load_function", params=("fullname",)),
           Target("mlflow.server.jobs.utils", "get_job_fn_fullname", params=("job_name",)),
           Target("mlflow.server.jobs.utils", "_prepare_job_subprocess",
                  params=("function_fullname", "params", "python_env", "transient_error_classes", "tmpdir",
                          "job_id", "job_name", "workspace", "extra_envs")),
           Target("mlflow.server.jobs.utils", "_SubprocessJobResult.load", params=("path",)),
           Target("mlflow.server.jobs.utils", "_SubprocessJobResult.from_error",
                  params=("e", "transient_error_classes")),
           Target("mlflow.server.jobs.utils", "_compute_job_lock_key",
                  params=("job_name", "params", "exclusive", "workspace")),
           Target("mlflow.server.jobs.utils", "register_periodic_tasks", params=("huey_instance",)),
           Target("mlflow.server.jobs.utils", "_start_watcher_to_kill_job_runner_if_mlflow_server_dies",
                  params=("check_interval",)),
           # the forked runner drops the master's stores and engines (server/jobs/runner.py, _own_stores)
           Target(H, "_job_store"),
           Target("mlflow.store.jobs.sqlalchemy_store", "SqlAlchemyJobStore._engine_map"),
           Target("mlflow.server.jobs.logging_utils", "configure_logging_for_jobs", params=()),
           Target("mlflow.utils.process", "_exec_cmd"),
           Target("mlflow.utils.workspace_context", "ServerWorkspaceContext"),
           Target("mlflow.environment_variables", "MLFLOW_SERVER_JOB_LEASE_TTL"),
           *(Target("mlflow.store.jobs.sqlalchemy_store", f"SqlAlchemyJobStore.{name}", params=("self", "job_id", *rest))
             for name, rest in (("finish_job", ("result",)), ("fail_job", ("error",)),
                                ("retry_or_fail_job", ("error",)), ("mark_job_timed_out", ()),
                                ("cancel_job", ()))),
           *(Target("mlflow.entities._job_status", "JobStatus.to_int", contains=f"JobStatus.{status}: {number}")
             for status, number in (("PENDING", 0), ("RUNNING", 1), ("FAILED", 3), ("CANCELED", 5),
                                    ("NEEDS_RECOVERY", 6))))),
    Entry("one queue for the fleet", "safety", "server/jobs/submit.py, server/jobs/table.py",
          "a submitted job stays in MLflow's jobs table, which every instance's runner claims from under "
          "leases; exclusive jobs and periodic tasks take rows of MLflow's job_locks and scheduler_leases",
          (Target("mlflow.server.jobs", "submit_job", contains="huey_instance.submit_task("),
           Target("mlflow.server.jobs", "submit_job", contains="job_store.create_job("),
           Target("mlflow.server.jobs.utils", "_get_or_init_huey_instance", params=("instance_key",)),
           *(Target("mlflow.store.tracking.dbmodels.models", f"SqlJob.{column}")
             for column in ("id", "creation_time", "job_name", "params", "workspace", "timeout", "status",
                            "result", "retry_count", "last_update_time", "lease_expires_at", "status_message",
                            "progress", "progress_updated_at", "token_hash", "scoped_permissions",
                            "next_attempt_at")),
           *(Target("mlflow.store.tracking.dbmodels.models", f"SqlJobLock.{column}")
             for column in ("lock_key", "job_id", "acquired_at")),
           *(Target("mlflow.store.tracking.dbmodels.models", f"SqlSchedulerLease.{column}")
             for column in ("lease_key", "acquired_at", "ttl_seconds")))),
    Entry("request heads in the event loop", "safety", "server/serving/worker.py",
          "a thread takes a connection only once its request head (or HTTP/2 preface) is in: slow and "
          "silent clients cannot hold the threads; idle HTTP/2 connections wait in the loop",
          (Target("gunicorn.workers.gthread", "TConn.__init__", params=("self", "cfg", "sock", "client", "server")),
           Target("gunicorn.workers.gthread", "TConn.init", contains="negotiation.read_preface_blocking(self.sock)"),
           Target("gunicorn.workers.gthread", "_DEFER"),
           Target("gunicorn.workers.gthread", "ThreadWorker.accept", params=("self", "listener")),
           Target("gunicorn.workers.gthread", "ThreadWorker.enqueue_req", params=("self", "conn")),
           Target("gunicorn.workers.gthread", "ThreadWorker.on_client_socket_readable",
                  params=("self", "conn", "client")),
           Target("gunicorn.workers.gthread", "ThreadWorker.murder_pending", params=("self",)),
           Target("gunicorn.workers.gthread", "ThreadWorker.finish_request", contains="result is _DEFER"),
           Target("gunicorn.workers.gthread", "ThreadWorker.handle", contains="return self.handle_http2(conn)"),
           Target("gunicorn.workers.gthread", "ThreadWorker.handle_http2", params=("self", "conn")),
           Target("gunicorn.workers.gthread", "ThreadWorker._serve_http2_stream",
                  params=("self", "req", "conn", "h2_conn")),
           Target("gunicorn.http.unreader", "Unreader.unread", params=("self", "data")),
           Target("gunicorn.http2.negotiation", "H2C_PREFACE", value=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
           Target("gunicorn.http2.negotiation", "prior_knowledge_allowed", params=("cfg", "peer_addr")),
           Target("gunicorn.http2.negotiation", "mismatch_is_error", params=("cfg",)),
           Target("gunicorn.http.wsgi", "Response.should_close", contains="self.must_close"))),
    Entry("job runner stopped before the workers drain", "safety", "server/gunicorn.conf.py",
          "on SIGTERM the master settles the fleet's jobs it runs before its workers drain (the jobs call back "
          "into them), inside Cloud Run's 10 s",
          (Target("gunicorn.arbiter", "Arbiter.handle_term", params=("self",)),
           Target("gunicorn.arbiter", "Arbiter.run", contains='getattr(self, "handle_%s" % signame, None)'))),
    Entry("HTTP/2 streams served side by side", "safety", "server/serving/h2_streams.py",
          "one reader per HTTP/2 connection, each request in its own thread: a stalled upload does not "
          "hold up the connection's other streams",
          (Target("gunicorn.http2.connection", "HTTP2ServerConnection.__init__",
                  params=("self", "cfg", "sock", "client_addr")),
           Target("gunicorn.http2.connection", "HTTP2ServerConnection.pump", params=("self", "stream_id")),
           Target("gunicorn.http2.connection", "HTTP2ServerConnection._read_and_process",
                  params=("self", "data", "waiting_stream_id")),
           Target("gunicorn.http2.connection", "HTTP2ServerConnection._wait_for_flow_control_window",
                  params=("self", "stream_id", "deadline")),
           Target("gunicorn.http2.connection", "HTTP2ServerConnection.receive_data", params=("self", "data")),
           Target("gunicorn.http2.connection", "HTTP2ServerConnection.send_data",
                  contains="self._wait_for_flow_control_window(stream_id, deadline)"),
           Target("gunicorn.http2.request", "HTTP2Body._next_chunk", contains="pump(stream.stream_id)"),
           Target("gunicorn.http2.stream", "HTTP2Stream.pop_chunk", params=("self",)),
           Target("gunicorn.http2.stream", "HTTP2Stream.__init__", contains="self._body_chunks = []"),
           *(Target("gunicorn.http2.connection", f"HTTP2ServerConnection.{name}")
             for name in ("send_informational", "send_response_headers", "end_stream", "send_response",
                          "send_trailers", "send_error", "reset_stream", "abort_stream", "close",
                          "cleanup_stream", "acknowledge_data", "initiate_connection")))),
    Entry("gthread worker", "safety", "server/serving/worker.py",
          "refuse new connections on SIGTERM, keep stop signals that arrive while a worker boots, "
          "400 for unknown transfer codings",
          (Target("gunicorn.workers.gthread", "ThreadWorker.set_accept_enabled", params=("self", "enabled")),
           Target("gunicorn.workers.gthread", "ThreadWorker.init_signals", params=("self",)),
           Target("gunicorn.workers.gthread", "ThreadWorker.handle_error",
                  params=("self", "req", "client", "addr", "exc")),
           Target("gunicorn.arbiter", "Arbiter.__init__", contains="self.SIG_QUEUE = queue.SimpleQueue()"),
           Target("gunicorn.http.errors", "UnsupportedTransferCoding"),
           Target("gunicorn.http.errors", "InvalidHeader"))),
    Entry("experiment location rule", "safety", "server/limits/experiment_guard.py",
          "the tracking store's create_experiment refuses artifact locations outside the store, "
          "whatever the request looked like",
          (Target("mlflow.store.tracking.abstract_store", "AbstractStore.create_experiment",
                  params=("self", "name", "artifact_location", "tags")),
           Target(H, "_create_experiment", contains="_get_tracking_store().create_experiment("))),
    Entry("write-once artifacts", "safety", "server/limits/write_once.py",
          "the repository class MLflow's registry makes for the store's scheme is subclassed, so that "
          "every write through the proxy (any handler) is checked for the request's user and made create-only",
          (Target("mlflow.store.artifact.artifact_repository_registry", "_artifact_repository_registry._registry"),
           Target("mlflow.store.artifact.artifact_repository_registry", "ArtifactRepositoryRegistry.register",
                  params=("self", "scheme", "repository")),
           Target("mlflow.store.artifact.artifact_repository_registry",
                  "ArtifactRepositoryRegistry.get_artifact_repository", contains="self._registry.get(scheme)"),
           Target("mlflow.utils.uri", "get_uri_scheme", params=("uri_or_path",)),
           Target(H, "_artifact_repo"),
           Target(H, "_get_artifact_repo_mlflow_artifacts",
                  contains="get_artifact_repository(os.environ[ARTIFACTS_DESTINATION_ENV_VAR])"),
           Target("mlflow.store.artifact.artifact_repo", "ArtifactRepository.log_artifact",
                  params=("self", "local_file", "artifact_path")),
           Target("mlflow.store.artifact.artifact_repo", "ArtifactRepository.log_artifacts",
                  params=("self", "local_dir", "artifact_path")),
           Target("mlflow.store.artifact.artifact_repo", "ArtifactRepository.delete_artifacts",
                  params=("self", "artifact_path")),
           Target("mlflow.store.artifact.artifact_repo", "MultipartUploadMixin.create_multipart_upload",
                  params=("self", "local_file", "num_parts", "artifact_path")),
           Target("mlflow.store.artifact.artifact_repo", "StreamUploadMixin.log_artifact_from_stream",
                  params=("self", "stream", "artifact_file_name", "artifact_path")),
           Target("mlflow.exceptions", "MlflowException.get_http_status_code", params=("self",)),
           Target(H, "catch_mlflow_exception", contains="e.get_http_status_code()"),
           Target(H, "_get_model_registry_store", params=("registry_store_uri",)),
           Target("mlflow.store.model_registry.dbmodels.models", "SqlModelVersion.storage_location"),
           Target("mlflow.store.model_registry.dbmodels.models", "SqlModelVersion.source"),
           Target("mlflow.store.model_registry.dbmodels.models", "SqlModelVersion.current_stage"),
           Target("mlflow.entities.model_registry.model_version_stages", "STAGE_DELETED_INTERNAL",
                  value="Deleted_Internal"))),
    Entry("GraphQL is a read", "safety", "server/gate/route_access.py",
          "POST /graphql is a viewer's read because every field of MLflow's schema, its mutations "
          "included, searches or gets; a mutation that writes would need the table to change",
          (Target("mlflow.server.graphql.graphql_schema_extensions", "Mutation"),
           Target("mlflow.server.graphql.autogenerated_graphql_schema", "MutationType"),
           Target("mlflow.server.graphql.graphql_schema_extensions", "schema"))),
    Entry("workspace roles", "safety", "server/gate/workspace_gate.py, server/gate/workspace_views.py, server/gate/roles.py",
          "a request's workspace is read as MLflow reads it (the header, trimmed; the default workspace "
          "without one), its role decided there and the header rewritten to it; the workspace list and get "
          "answer for the user's workspaces only; an artifact path of another workspace is a 403; "
          "a job's credential is admin in the job's workspace only",
          (Target("mlflow.environment_variables", "MLFLOW_ENABLE_WORKSPACES"),
           Target("mlflow.utils.workspace_utils", "WORKSPACE_HEADER_NAME", value="X-MLFLOW-WORKSPACE"),
           Target("mlflow.utils.workspace_utils", "DEFAULT_WORKSPACE_NAME", value="default"),
           Target("mlflow.utils.workspace_utils", "_normalize_workspace", params=("workspace",),
                  contains="workspace.strip()"),
           Target("mlflow.server.workspace_helpers", "workspace_before_request_handler",
                  contains="request.headers.get(WORKSPACE_HEADER_NAME)"),
           Target("mlflow.server.workspace_helpers", "resolve_workspace_from_header",
                  contains="_normalize_workspace(header_workspace)"),
           Target("mlflow.store.workspace.abstract_store", "WorkspaceNameValidator._PATTERN",
                  value=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
           Target("mlflow.store.workspace.abstract_store", "WorkspaceNameValidator._MAX_LENGTH", value=63),
           Target("mlflow.store.workspace.dbmodels.models", "SqlWorkspace.name"),
           Target("mlflow.utils.workspace_context", "get_request_workspace", params=()),
           Target(H, "_get_workspace_scoped_repo_path_if_enabled", params=("artifact_path",),
                  contains='leading_segments[0] == "workspaces"'),
           Target(H, "_list_workspaces_handler", params=()),
           Target(H, "_get_workspace_handler", params=("workspace_name",)),
           Target("mlflow.store.workspace.sqlalchemy_store", "SqlAlchemyStore._get_workspace",
                  contains="f\"Workspace '{workspace_name}' not found\""),
           Target("mlflow.store.tracking.sqlalchemy_workspace_store", "WorkspaceAwareSqlAlchemyStore._get_query"),
           Target("mlflow.store.jobs.sqlalchemy_workspace_store", "WorkspaceAwareSqlAlchemyJobStore._get_query"),
           Target("mlflow.server.jobs.utils", "_prepare_job_subprocess", contains="**(extra_envs or {}),"))),
    Entry("route allowlist", "safety", "server/gate/route_access.py",
          "the role decision matches each request against the Flask app's url_map, as Flask itself does",
          (Target("mlflow.server", "app.url_map"),
           Target("werkzeug.routing", "MapAdapter.match",
                  params=("self", "path_info", "method", "return_rule", "query_args", "websocket")))),
    Entry("frameable trace renderer", "safety", "server/serving/security_headers.py",
          "the one path other sites (Jupyter) may frame, as MLflow exempts it from X-Frame-Options",
          (Target("mlflow.tracing.constant", "TRACE_RENDERER_ASSET_PATH",
                  value="/static-files/lib/notebook-trace-renderer"),)),
    Entry("JSON logs", "safety", "server/serving/logs.py",
          "gunicorn's logger subclassed for JSON access lines with every secret redacted",
          (Target("gunicorn.glogging", "Logger.access", params=("self", "resp", "req", "environ", "request_time")),
           Target("gunicorn.glogging", "Logger.setup", params=("self", "cfg")))),
    Entry(URL_BUILDERS, "speed", "server/borrowed/url_builders.py",
          "werkzeug compiles each route's URL builders when the route is added (~75 ms of a start for "
          "MLflow's routes); compiled instead on a builder's first call, the same function",
          (Target("werkzeug.routing.rules", "Rule._compile_builder", params=("self", "append_unknown")),
           Target("werkzeug.routing.rules", "Rule.compile",
                  contains="self._build = self._compile_builder(False).__get__(self, None)"),
           Target("werkzeug.routing.rules", "Rule.compile",
                  contains="self._build_unknown = self._compile_builder(True).__get__(self, None)"),
           Target("werkzeug.routing.rules", "Rule.build", contains="return self._build_unknown(**values)"),
           Target("werkzeug.routing.rules", "Rule.build", contains="return self._build(**values)"))),
    Entry(COMPACT_JSON, "speed", "server/borrowed/json_responses.py",
          "MLflow's handlers print JSON in one pass without pretty-printing, each field's way of "
          "printing decided once; well-known types and rare values go to protobuf's printer",
          (Target(H, "message_to_json", params=("message", "pretty", "convert_int64_to_number")),
           Target("google.protobuf.json_format", "_Printer._MessageToJsonObject", params=("self", "message")),
           Target("google.protobuf.json_format", "_Printer._FieldToJsonObject", params=("self", "field", "value")),
           Target("google.protobuf.json_format", "_IsWrapperMessage", params=("message_descriptor",)),
           Target("google.protobuf.json_format", "_IsMapEntry", params=("field",)),
           Target("google.protobuf.json_format", "_WKTJSONMETHODS"))),
    Entry("half-parsed bodies refused", "safety", "server/borrowed/unparsed_bodies.py",
          "a request body protobuf cannot parse is a 400: MLflow's _get_request_message catches the "
          "ParseError and, when the handler's schema passes, goes on with the half-filled message",
          (Target(H, "_get_request_message", params=("request_message", "flask_request", "schema"),
                  contains="except ParseError:\n        proto_parsing_succeeded = False"),
           Target(H, "parse_dict", params=("js_dict", "message")),
           Target("google.protobuf.json_format", "ParseError"))),
    Entry(BATCH_PARSING, "speed", "server/borrowed/batch_parsing.py",
          "a log_batch body whose metrics are plain JSON fields fills its message without ParseDict "
          "(the metric message's fields are checked by batch_parsing.fits at start-up)",
          (Target(H, "parse_dict", params=("js_dict", "message")),
           Target(H, "_get_request_message", params=("request_message", "flask_request", "schema"),
                  contains="parse_dict(request_json, request_message)"),
           Target(H, "_log_batch", contains="LogBatch(),"),
           Target("google.protobuf.json_format", "_ConvertFloat", params=("value", "field")),
           Target("google.protobuf.json_format", "_ConvertInteger", params=("value",)))),
    Entry(FIELD_ALIASES, "speed", "server/borrowed/field_aliases.py",
          "MLflow's refusal of a body that spells a field two ways (run_id and runId), with each message "
          "type's fields to check worked out once instead of per JSON object",
          (Target(H, "_reject_conflicting_field_aliases", params=("request_json", "message_descriptor")),
           Target(H, "_get_request_message", params=("request_message", "flask_request", "schema"),
                  contains="_reject_conflicting_field_aliases(request_json, request_message.DESCRIPTOR)"),
           Target("mlflow.exceptions", "MlflowException.invalid_parameter_value",
                  params=("message", "sqlstate", "error_class", "kwargs")))),
    Entry(METRIC_NAMES, "speed", "server/borrowed/metric_names.py",
          "MLflow's metric-name check skipped for a name that has passed it (it depends on the name alone): "
          "a log_batch of 1000 metrics repeats a few names",
          (Target("mlflow.utils.validation", "_validate_metric_name", params=("name", "path")),
           Target("mlflow.utils.validation", "_validate_metric",
                  contains='_validate_metric_name(key, append_to_json_path(path, "name"))'),
           Target("mlflow.utils.validation", "validate_param_and_metric_name", params=("name",)),
           Target("mlflow.utils.validation", "path_not_unique", params=("name",)))),
    Entry(CLOSING_COMMIT, "speed", "server/borrowed/closing_commit.py",
          "the tracking and registry stores' managed sessions commit at the end of a call without expiring "
          "what they loaded, since the session is closed right after",
          (Target("mlflow.store.db.utils", "_get_managed_session_maker", params=("SessionMaker", "db_type"),
                  contains="yield session\n                session.commit()"),
           Target("mlflow.store.db.utils", "_get_routing_session_maker",
                  params=("write_session_maker", "read_session_maker", "db_type")),
           Target(H, "_tracking_store"), Target(H, "_model_registry_store"))),
    Entry(METRIC_WRITES, "speed", "server/borrowed/metric_writes.py",
          "log_metric and log_batch's metrics on PostgreSQL in one statement",
          (Target(SQL_TRACKING, "SqlAlchemyStore._log_metrics_once", params=("self", "run_id", "metrics")),
           Target("mlflow.utils.validation", "_validate_metric"),
           # the only callers of _log_metrics: log_metric with one metric, log_batch after validating
           Target(SQL_TRACKING, "SqlAlchemyStore.log_metric", contains="self._log_metrics(run_id, [metric])"),
           Target(SQL_TRACKING, "SqlAlchemyStore.log_batch",
                  contains="metrics, params, tags = _validate_batch_log_data(metrics, params, tags)"),
           Target("mlflow.utils.validation", "_validate_batch_log_data",
                  contains="_validate_metric(metric.key, metric.value, metric.timestamp, metric.step, path=path)"))),
    Entry(RUN_PAGES, "speed", "server/borrowed/run_pages.py",
          "search_runs is MLflow's _search_runs with the page's runs made into entities from plain rows "
          "(their latest metrics, params and tags read as selectinload reads them) instead of ORM objects",
          (Target(SQL_TRACKING, "SqlAlchemyStore._search_runs",
                  params=SEARCH_RUNS_PARAMS,
                  contains="runs = [run.to_mlflow_entity() for run in queried_runs]"),
           Target(SQL_TRACKING, "_get_orderby_clauses", params=("order_by_list", "session")),
           Target(SQL_TRACKING, "_get_sqlalchemy_filter_clauses", params=("parsed", "session", "dialect")),
           Target("mlflow.store.tracking.dbmodels.models", "SqlRun.to_mlflow_entity",
                  contains="if run_name := _get_run_name_from_tags(tags):"),
           Target("mlflow.store.tracking.dbmodels.models", "SqlLatestMetric.to_mlflow_entity",
                  contains='value=self.value if not self.is_nan else float("nan"),'),
           Target("mlflow.store.tracking.dbmodels.models", "SqlParam.to_mlflow_entity"),
           Target("mlflow.store.tracking.dbmodels.models", "SqlTag.to_mlflow_entity"),
           Target("mlflow.utils.mlflow_tags", "_get_run_name_from_tags", params=("tags",)),
           Target("sqlalchemy.orm.strategies", "_SelectInLoader._chunksize", value=500),
           Target(SQL_TRACKING, "SqlAlchemyStore._get_run_inputs", params=("self", "session", "run_uuids")),
           Target(SQL_TRACKING, "SqlAlchemyStore._get_model_outputs_bulk", params=("self", "run_ids", "session")),
           Target(SQL_TRACKING, "SqlAlchemyStore._filter_experiment_ids",
                  params=("self", "session", "experiment_ids", "lifecycle_stage")),
           Target(SQL_TRACKING, "_parse_experiment_ids", params=("experiment_ids",)))),
    Entry(RUNS_BY_METRIC, "speed", "server/borrowed/runs_by_metric.py",
          "search_runs ordered by one metric reads three ranges (numbers by value, NaN, missing) in "
          "MLflow's order from our latest_metrics index instead of sorting the whole experiment, then "
          "answers the page as MLflow's _search_runs does",
          (Target(SQL_TRACKING, "SqlAlchemyStore._search_runs",
                  params=SEARCH_RUNS_PARAMS,
                  contains="inputs = self._get_run_inputs(run_uuids=run_ids, session=session)"),
           Target(SQL_TRACKING, "_get_orderby_clauses",
                  contains="(subquery.c.is_nan == sqlalchemy.true(), 1),"),
           Target(SQL_TRACKING, "_get_orderby_clauses", contains="(order_value.is_(None), 2),"),
           Target(SQL_TRACKING, "_get_orderby_clauses", contains="clauses.append(SqlRun.run_uuid)"),
           Target(SQL_TRACKING, "SqlAlchemyStore._filter_experiment_ids",
                  params=("self", "session", "experiment_ids", "lifecycle_stage")),
           Target(SQL_TRACKING, "_parse_experiment_ids", params=("experiment_ids",)),
           Target("mlflow.utils.search_utils", "SearchUtils.parse_order_by_for_search_runs"),
           Target("mlflow.utils.search_utils", "SearchUtils.translate_key_alias"),
           Target("mlflow.store.tracking.dbmodels.models", "SqlLatestMetric"))),
    Entry(CHART_SAMPLES, "speed", "server/borrowed/chart_samples.py",
          "get-history-bulk-interval on PostgreSQL takes the number of points from the first, second and last "
          "step when the steps are evenly spaced (the walk checks it; otherwise it counts them), walks the "
          "(run_uuid, key, step) index to the positions where ntile's buckets start and reads those rows, "
          "instead of numbering and sorting the whole history; a step holding several points keeps MLflow's "
          "query",
          (Target(SQL_TRACKING, "SqlAlchemyStore._sample_metric_history_single_run",
                  params=("self", "session", "run_id", "metric_key", "max_results", "start_step", "end_step"),
                  contains='value=row.value if not row.is_nan else float("nan"),'),
           Target(SQL_TRACKING, "SqlAlchemyStore._sample_metric_history_single_run",
                  contains="order_by = [SqlMetric.step, SqlMetric.timestamp, SqlMetric.value, SqlMetric.is_nan]"),
           Target(SQL_TRACKING, "SqlAlchemyStore._sample_rows_with_window_functions",
                  contains="func.ntile(max_results).over(order_by=order_by)"),
           Target(SQL_TRACKING, "SqlAlchemyStore._sample_rows_with_window_functions",
                  contains="rows[-1] = last_row"),
           Target(SQL_TRACKING, "SqlAlchemyStore.get_metric_history_bulk_interval",
                  contains="max_results = max(1, max_results)"),
           Target("mlflow.store.tracking.dbmodels.models", "SqlMetric"),
           Target("mlflow.entities.metric", "MetricWithRunId"))),
    Entry(SEARCH_RUNS_JSON, "speed", "server/borrowed/search_runs_json.py",
          "runs/search is MLflow's _search_runs and search_runs_impl up to the store's answer, each run then "
          "written as the JSON object the printer makes of Run.to_proto(), without the protobuf messages",
          (Target(H, "_search_runs", contains="lambda x: _assert_less_than_or_equal(int(x), 50000),"),
           Target(H, "_search_runs", contains="response_message = search_runs_impl(request_message)"),
           Target(H, "search_runs_impl", contains="page_token=request_message.page_token or None,"),
           Target(H, "search_runs_impl", contains="response_message.runs.extend([r.to_proto() for r in run_entities])"),
           Target(H, "search_runs_impl", contains="run_view_type = ViewType.from_proto(request_message.run_view_type)"),
           Target(H, "_get_request_message", params=("request_message", "flask_request", "schema")),
           Target(H, "catch_mlflow_exception"), Target(H, "_disable_if_artifacts_only"),
           Target(H, "_assert_array"), Target(H, "_assert_string"), Target(H, "_assert_intlike"),
           Target(H, "_assert_less_than_or_equal"), Target(H, "_assert_item_type_string"),
           Target("mlflow.entities.run", "Run.to_proto", contains="if self.inputs:"),
           Target("mlflow.entities.run_info", "RunInfo.to_proto", contains="if self.end_time:"),
           Target("mlflow.entities.run_info", "RunInfo.to_proto", contains="if self.run_name is not None:"),
           Target("mlflow.entities.run_data", "RunData.to_proto",
                  contains="run_data.metrics.extend([m.to_proto() for m in self._metric_objs])"),
           Target("mlflow.entities.metric", "Metric.to_proto", contains="if self.dataset_digest:"))),
)


def verify(entries: tuple[Entry, ...] = ENTRIES) -> set[str]:
    """Check every entry; return the names of the speed entries to leave off.

    Raises InternalsChangedError when a safety entry no longer fits.
    """
    return set(switched_off(entries))


def switched_off(entries: tuple[Entry, ...] = ENTRIES) -> dict[str, str]:
    """``verify()`` with each speed entry left off mapped to its problems (what a warning says)."""
    off, fatal = {}, []
    for entry in entries:
        problems = entry.problems()
        if not problems:
            continue
        if entry.kind == "safety":
            fatal.append(f"{entry.name} ({entry.used_by}): " + "; ".join(problems))
        else:
            off[entry.name] = "; ".join(problems)
    warn_off(off)
    if fatal:
        raise InternalsChangedError(
            "this server was written for " + ", ".join(f"{k} {v}" for k, v in WRITTEN_FOR.items())
            + "; what it relies on has changed, see server/borrowed/internals.py:\n  " + "\n  ".join(fatal))
    return off


def warn_off(off: dict[str, str]) -> set[str]:
    """Log each speed entry left off, with why; return their names."""
    for name, problems in off.items():
        log.warning("%s switched off, MLflow's own code runs instead: %s", name, problems)
    return set(off)
