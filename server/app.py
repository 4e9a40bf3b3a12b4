"""Build the WSGI application: MLflow's tracking server behind our middleware.

Order, outermost first: the client address from X-Forwarded-For (only with proxy hops set, and
only from a peer in FORWARDED_ALLOW_IPS), the security headers, authentication (Basic, IAP), the
UI's account endpoints, the role gate, the request limits, the server-error bodies, the route
guard, the routes only MLflow's FastAPI app serves (handed to it), the UI listing fix, MLflow's
Flask app; the experiment-location rule sits on the tracking store itself, the write-once
artifact rule on MLflow's artifact views. Schema migrations and the
MLflow import happen here, in gunicorn's master when ``preload_app`` is on, so workers fork
with MLflow already loaded.
"""

from __future__ import annotations

import logging
import os

from server import config
from server.borrowed import mlflow_env
from server.borrowed.migrate import ensure_schema
from server.borrowed.native_routes import NativeRoutes
from server.borrowed.ui_compat import UiCompat
from server.gate import account, workspace_views
from server.gate.account import AccountRoutes
from server.gate.auth import BasicAuthMiddleware
from server.gate.failures import FailureLimiter, HashBudget, SharedCounters
from server.gate.fleet_failures import FleetFailures, fleet_key
from server.gate.iap import IapKeys, IapVerifier
from server.gate.role_gate import RoleGate
from server.gate.route_access import RouteAccess, scopes
from server.gate.watched_table import WatchedTable
from server.gate.workspace_gate import WorkspaceGate
from server.jobs import runner as job_runner
from server.limits import experiment_guard, write_once
from server.limits.request_limits import RequestLimits
from server.limits.route_guard import RouteGuard
from server.serving import logs
from server.serving.error_bodies import PlainServerErrors
from server.serving.security_headers import SecurityHeaders
from server.serving.trusted_proxy import TrustedProxyFix

log = logging.getLogger("server.app")


def _migrate(settings: config.Settings) -> None:
    uris = dict.fromkeys(u for u in (settings.backend_store_uri, settings.registry_store_uri) if u)
    for uri in uris:
        if uri.startswith("sqlite:"):
            path = uri.split(":///", 1)[-1]
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        ensure_schema(uri, auto_upgrade=settings.db_auto_upgrade)


# (user, password) of the job runner's calls back to this server, made by create_app in
# gunicorn's master and handed to the runner by gunicorn.conf's when_ready; None: no runner.
job_credential: tuple[str, str] | None = None


def create_app(settings: config.Settings):
    global job_credential
    job_credential = job_runner.internal_credential() if settings.job_execution else None
    logs.install_redaction(settings.secret_values + ((job_credential[1],) if job_credential else ()))
    mlflow_env.apply(settings)
    import mlflow  # noqa: F401 - configures MLflow's own log handler, which we then make JSON

    from server.borrowed import internals, url_builders, verdict

    logs.configure_python_logging(settings.log_level)
    for warning in settings.warnings:
        log.warning("%s", warning)
    # refuses to start if a safety patch's target changed; the image build's verdict, while it
    # holds, is read without importing MLflow's Flask app, so the URL builders' patch is in
    # before that app adds its routes (after the full check, which imports it, it changes nothing)
    checked = verdict.verify()
    speed_patches_off = checked.off
    url_builders.install(internals.URL_BUILDERS not in speed_patches_off)
    _migrate(settings)

    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server import app as mlflow_app
    from mlflow.server import handlers

    from server.borrowed import (
        artifact_streaming,
        batch_parsing,
        chart_samples,
        closing_commit,
        field_aliases,
        json_responses,
        metric_history,
        metric_names,
        metric_writes,
        planner_settings,
        run_pages,
        runs_by_metric,
        search_runs_json,
        unparsed_bodies,
    )

    _settle_mlflow_auth_module()
    artifact_streaming.install()  # before any artifact repository is created
    if internals.COMPACT_JSON not in speed_patches_off:
        json_responses.install()
    if internals.BATCH_PARSING not in speed_patches_off:
        batch_parsing.install()  # log_batch's plain metrics into its message without ParseDict
    unparsed_bodies.install()  # a body protobuf cannot parse is a 400, not half stored with a 200
    if internals.FIELD_ALIASES not in speed_patches_off:
        field_aliases.install()  # MLflow's two-spellings refusal, each message type's walk planned once
    if internals.METRIC_NAMES not in speed_patches_off:
        metric_names.install()  # a metric name that passed MLflow's check is not checked again
    if internals.METRIC_WRITES not in speed_patches_off:
        metric_writes.install()  # the metrics of log_metric and log_batch on PostgreSQL in one statement
    if internals.RUN_PAGES not in speed_patches_off:
        run_pages.install()  # a page of runs made into entities from rows, not ORM objects
        if internals.RUNS_BY_METRIC not in speed_patches_off:
            runs_by_metric.install()  # a runs page ordered by a metric, from our index (built on run_pages)
    if internals.CHART_SAMPLES not in speed_patches_off:
        chart_samples.install()  # a chart's sampled history read by position, not numbered point by point
    _share_connection_pool()
    # Open the stores now (in the master with preload_app): the first request pays nothing.
    handlers.initialize_backend_stores(
        settings.backend_store_uri, settings.registry_store_uri, settings.default_artifact_root
    )
    if internals.CLOSING_COMMIT not in speed_patches_off:
        closing_commit.install(handlers._tracking_store, handlers._model_registry_store)
    planner_settings.install(_store_engines())  # PostgreSQL's planner costs for SSDs, where left at default
    _release_connections()  # the master serves nothing: its workers open their own
    metric_history.install(mlflow_app)  # a metric's whole history, a batch at a time
    if not {internals.COMPACT_JSON, internals.SEARCH_RUNS_JSON} & speed_patches_off:
        search_runs_json.install(mlflow_app)  # runs/search written as JSON from the runs, no protobuf messages
    if job_credential:
        from mlflow.environment_variables import MLFLOW_SERVER_JOB_LEASE_TTL

        from server.jobs import submit as job_submit

        # before the workers fork: a submitted job goes to the database, where every
        # instance's runner can take it (server/jobs/fleet.py)
        job_submit.install(job_runner.prepare_queue_folder(), MLFLOW_SERVER_JOB_LEASE_TTL.get())
        job_runner.preload()

    # every experiment keeps its artifacts in this server's store, whichever way it is created
    experiment_guard.install(handlers._tracking_store, settings.default_artifact_root)
    write_once.install(settings)  # existing artifacts and registered models' files: admins only
    flask_side = UiCompat(mlflow_app.wsgi_app)
    # with the build's record of its routes, MLflow's FastAPI app is built on first use
    native = NativeRoutes.from_mlflow(flask_side, mlflow_app, checked.native_routes)
    app = RouteGuard(
        native,
        enable_webhooks=settings.enable_webhooks,
        enable_gateway_proxy=bool(os.environ.get("MLFLOW_DEPLOYMENTS_TARGET")),
    )
    app = RequestLimits(PlainServerErrors(app))  # after the gates: an anonymous client's body is never parsed
    app = AccountRoutes(RoleGate(app, _route_access(mlflow_app, native)))
    workspaces_on = MLFLOW_ENABLE_WORKSPACES.get()  # as MLflow reads it, so both agree
    app = _workspace_gate(app, settings, mlflow_app, native, workspaces_on)
    users = WatchedTable(settings.users, settings.users_files,
                         _reloader(config.reload_users, workspace_views.users_workspaces, workspaces_on))
    # made here, in gunicorn's master: every worker forks with the same failure counts and budget;
    # instances on one PostgreSQL share the counts too, so their digests share a key
    shared = SharedCounters(key=fleet_key(settings.backend_store_uri) if settings.backend_is_postgres else None)
    app = BasicAuthMiddleware(
        app,
        users=users,
        realm=settings.realm,
        limiter=FailureLimiter(settings.max_failures, settings.lockout_seconds, counters=shared,
                               fleet=_fleet_failures(settings, shared)),
        hash_budget=HashBudget(counters=shared),
        internal=job_credential,
        iap=_iap(settings, workspaces_on),
    )
    app = SecurityHeaders(app)
    if settings.trusted_proxy_hops:
        app = TrustedProxyFix(app, settings.trusted_proxy_hops, settings.forwarded_allow_ips)
    log.info(
        "MLflow server ready: %d user(s)%s, artifacts proxied to a %s destination",
        len(settings.users),
        ", Google sign-in through IAP" if settings.iap_audience else "",
        mlflow_env.artifacts_destination(settings).split("://")[0] if "://" in settings.artifacts_destination else "local",
    )
    return app


def _route_access(mlflow_app, native: NativeRoutes) -> RouteAccess:
    access = RouteAccess(mlflow_app, native.matcher)
    if access.unclassified:
        log.warning("%d route(s) of MLflow are not in server/gate/route_access.py's table; they count as writes: %s",
                    len(access.unclassified), ", ".join(f"{m} {p}" for m, p in access.unclassified))
    return access


def _workspace_gate(app, settings: config.Settings, mlflow_app, native: NativeRoutes, enabled: bool) -> WorkspaceGate:
    """The role of each request from the user's grants (server-wide, or per MLflow workspace)."""
    named = workspace_views.users_workspaces(settings.users) | workspace_views.iap_workspaces(settings.iap_roles)
    if named and not enabled:
        log.warning("the users file or IAP roles give roles in %d workspace(s), but workspaces are off "
                    "(MLFLOW_ENABLE_WORKSPACES): those roles do not apply", len(named))
    elif named:
        workspace_views.log_unknown(named, _tracking_engine())  # then disposed: the master serves nothing
    if enabled:
        workspace_views.install(mlflow_app)
    return WorkspaceGate(app, scopes(mlflow_app, native.matcher), enabled,
                         account_paths=account.CURRENT | account.PERMISSIONS | account.ROLES_LIST)


def _fleet_failures(settings: config.Settings, shared: SharedCounters) -> FleetFailures | None:
    """Failed logins counted across instances, where instances can share a database."""
    if not settings.backend_is_postgres:
        return None  # SQLite: one instance
    return FleetFailures(_tracking_engine, shared, settings.lockout_seconds)


def _tracking_engine():
    from mlflow.server import handlers

    return handlers._tracking_store.engine  # in a worker, the worker's own pool


def _reloader(reload, workspaces_of, workspaces_on: bool):
    """A rotated users file or IAP roles table: with workspaces on, its unknown workspaces are logged."""
    return workspace_views.checked_on_reload(reload, workspaces_of, _tracking_engine) if workspaces_on else reload


def _iap(settings: config.Settings, workspaces_on: bool) -> IapVerifier | None:
    if settings.iap_audience is None:
        return None
    table = WatchedTable(settings.iap_roles, settings.iap_roles_files,
                         _reloader(config.reload_iap_roles, workspace_views.iap_workspaces, workspaces_on),
                         label="IAP roles")
    return IapVerifier(settings.iap_audience, table, IapKeys(settings.iap_keys_url))


def _settle_mlflow_auth_module() -> None:
    """Mark MLflow's own basic-auth app absent for good: our gate replaces it.

    ``search_runs`` imports ``mlflow.server.auth`` on every call to ask whether MLflow's auth app
    filters experiments. Without Flask-WTF (which we do not install) the import fails after
    running ~480 lines of the module each time (1.6 ms a call), and under concurrent searches a
    thread can get the half-initialised module: a 500 with ``AttributeError: ... has no attribute
    'auth_config'`` (seen under 16 clients). ``None`` in ``sys.modules`` makes that import fail at
    once, always, with the ImportError MLflow handles; set without trying the import, which would
    load its ORM models (~12 ms of the cold start) only to fail.
    """
    import sys

    sys.modules["mlflow.server.auth"] = None


def _share_connection_pool() -> None:
    """One SQLAlchemy engine (one pool) per process for the tracking and registry stores.

    MLflow caches engines per store class, so each worker would otherwise hold two pools of
    ``pool_size + max_overflow`` connections against the same database.
    """
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    RegistryStore._engine_map = TrackingStore._engine_map


def _store_engines():
    """The engines of every store MLflow keeps for the process (the workspace store among them,
    made in the master when workspaces are on): each must be dropped across the fork."""
    from mlflow.server import handlers, workspace_helpers

    stores = (handlers._tracking_store, handlers._model_registry_store, handlers._job_store,
              workspace_helpers._workspace_store)
    engines = {id(e): e for e in (getattr(s, "engine", None) or getattr(s, "_engine", None) for s in stores) if e}
    return engines.values()


def _release_connections() -> None:
    for engine in _store_engines():
        engine.dispose()


def after_fork() -> None:
    """In each new worker: drop the database connections inherited from the master.

    SQLAlchemy's advice for forked processes: ``dispose(close=False)`` so the child opens its
    own connections and never touches (or closes) the parent's sockets.
    """
    for engine in _store_engines():
        engine.dispose(close=False)
