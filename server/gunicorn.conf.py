# gunicorn settings for the MLflow server, in plain variables (gunicorn reads this file first).
# Every value comes from server.config, the one place that reads configuration: a bad or
# missing setting stops here, before gunicorn binds a port or forks a worker.
import gc
import os
import sys

from server.config import ConfigError, current_settings
from server.serving import logs

# No garbage collection while the master imports MLflow and opens the stores: collections
# over a growing heap of long-lived objects cost ~0.8 s of every cold start (measured).
gc.disable()

try:
    settings = current_settings()
except ConfigError as exc:
    print(exc.report(), file=sys.stderr)
    sys.exit(2)

# Files the server creates (the local mode's SQLite database and artifact folder, temporary
# upload files) are readable by this account only.
os.umask(0o077)

wsgi_app = "server.wsgi:application"
bind = [f"{settings.host}:{settings.port}"]

# gthread: a slow multi-GB upload holds one thread, not a whole worker, and the worker's
# heartbeat keeps running, so `timeout` (a hung worker's limit) never cuts a long transfer.
worker_class = "server.serving.worker.ThreadWorker"  # gthread; see server/serving/worker.py
workers = settings.workers
threads = settings.threads
timeout = settings.worker_timeout
# Cloud Run sends SIGTERM and kills 10 s later: finish in-flight requests within 8 s.
graceful_timeout = 8
keepalive = 30
# Import MLflow and migrate the schema once in the master; workers fork ready to serve.
preload_app = True

# Read-only root filesystem: heartbeat files in memory, no control socket to create.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
control_socket_disable = True

# X-Forwarded-Proto and friends are trusted only from these peers (Cloud Run: '*').
forwarded_allow_ips = settings.forwarded_allow_ips

# HTTP/2 cleartext (h2c) for Cloud Run's "HTTP/2 end-to-end" mode, which lifts its 32 MiB
# request limit: only peers in forwarded_allow_ips may speak it; off unless configured.
http2_cleartext = settings.http2_cleartext
http_protocols = "h1" if settings.http2_cleartext == "off" else "h1,h2"

# Request line and header limits: MLflow's GET APIs carry filters in the query string.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# One JSON line per request (user, status, latency) and JSON error logs, secrets redacted.
logger_class = "server.serving.logs.GunicornLogger"
accesslog = "-"
errorlog = "-"
loglevel = settings.log_level
logs.install_redaction(settings.secret_values)


# Garbage collection. The preloaded master holds ~300,000 long-lived objects (MLflow, SQLAlchemy,
# protobuf); frozen before the fork, no worker's collector walks them (or dirties their
# pages). A larger young generation stops one 1000-run search_runs from triggering hundreds
# of collections: measured, GC was half of that request's time (docs/benchmarks.md).
gc_thresholds = (50_000, 20, 20)


def when_ready(server):
    # after preload_app, before the first fork; the few MB of import-time garbage are frozen
    # with the rest rather than paying a full collection on the cold-start path
    gc.freeze()
    gc.enable()
    _start_job_runner(server)
    _stop_jobs_first(server)


# MLflow's job runner (judges, scorers, evaluation and the periodic tasks), started by the
# master once the app is loaded and stopped with it: see server/jobs/runner.py.
_job_runner = None


def _start_job_runner(server):
    global _job_runner
    app = sys.modules.get("server.app")  # none when gunicorn serves another app (the benchmarks' floor)
    if app is None or app.job_credential is None:
        return
    from server.jobs import runner as job_runner

    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    env = job_runner.runner_environment(settings.backend_store_uri, settings.default_artifact_root,
                                        f"http://{host}:{settings.port}", app.job_credential, os.getpid())
    _job_runner = job_runner.start(env, settings.log_level, server.LISTENERS)


def _stop_jobs_first(server):
    # On SIGTERM the master stops the job runner before it drains its workers: the jobs call
    # back into those workers (gateway, tracking), so while they run the drain can take the
    # whole graceful_timeout, and a job still running at Cloud Run's SIGKILL is left to its lease
    # instead of being settled now (server/jobs/fleet.py, FleetRunner.stop).
    if _job_runner is None:
        return
    drain = server.handle_term

    def handle_term():
        from server.jobs import runner as job_runner

        job_runner.stop(_job_runner)
        drain()

    server.handle_term = handle_term


def on_exit(server):
    from server.jobs import runner as job_runner

    job_runner.stop(_job_runner)
    if _job_runner is not None:
        job_runner.remove_queue_folder()


def post_fork(server, worker):
    # a stop signal caught by the master's handlers this process still has (server/serving/worker.py)
    worker.inherited_signals = server.SIG_QUEUE
    gc.set_threshold(*gc_thresholds)
    app = sys.modules.get("server.app")  # loaded by preload_app; not imported here for another app
    if app is not None:
        app.after_fork()
