"""MLflow's job runner beside the server, as ``mlflow server`` starts it, made one of a fleet.

``mlflow server`` starts a job runner next to its web workers: it runs the jobs the UI and the
API start (judges and scorers, issue detection, ``genai.evaluate``, prompt optimisation) and the
periodic tasks (online scoring, trace archival, SQL trace roll-ups). Each job runs in a
subprocess of its own, and its code talks back to this server over HTTP.

Differences from ``mlflow server``, on purpose:

* the queue is the database, not a huey SQLite file per instance: every instance's runner takes
  PENDING jobs from MLflow's ``jobs`` table, holds each under a lease it renews, and settles the
  jobs of a runner that died (``server/jobs/fleet.py``); periodic tasks run once per period across
  the instances (``server/jobs/periodic.py``). So a job runs once, on one instance, whichever took
  the request and whichever instances start or stop meanwhile;
* one process hosts it all, as threads, instead of MLflow's runner process plus one
  ``huey_consumer`` process per queue (eight interpreters that each import MLflow, 1.4 GB PSS
  measured); it is forked from gunicorn's master once MLflow is loaded there (``start``), so
  it shares those pages as the web workers do; the jobs themselves still run in subprocesses,
  as in MLflow;
* the runner's HTTP calls go through our Basic-auth gate like any other client's, with a
  credential made at start-up for this process tree only (``internal_credential``): 256 random bits,
  never written anywhere, refused from any peer but loopback;
* its output, and that of every job it starts, is relayed as JSON log lines with every known
  secret redacted, like the server's own (``main`` below puts this process's standard output
  and error, which its jobs inherit, on a pipe);
* it holds one database connection of its own for the queue (``coordination_engine``); the jobs
  use MLflow's store without a pool (README "Database connections");
* it runs in a process group of its own, which gunicorn's master stops as a whole when it
  exits (SIGTERM, then SIGKILL after ``STOP_SECONDS``), so a stopped container leaves no
  job behind and the stop stays inside Cloud Run's 10 s; as it stops, the jobs it had started
  are marked FAILED with the reason, those it had not started go back to the queue.

Configuration is MLflow's: ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` starts no runner,
``MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS=false`` keeps this instance out of the periodic tasks,
``MLFLOW_SERVER_JOB_LEASE_TTL`` (seconds, default 60) is how long a job outlives its runner.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time

from server.borrowed.internals import (
    BACKEND_STORE_URI_ENV_VAR,
    HUEY_STORAGE_PATH_ENV_VAR,
    REGISTRY_STORE_URI_ENV_VAR,
)
from server.serving.logs import JsonFormatter

log = logging.getLogger("server.job_runner")

INTERNAL_USER = "mlflow-job-runner"
STOP_SECONDS = 1.5
RELAY_DRAIN_SECONDS = 0.3  # within STOP_SECONDS: the runner's last log lines reach the log
# The runner's own start (its store, the fleet's and the periodic tasks' threads: ~0.1 s of CPU)
# waits this long after the fork, so on a cold start it does not take a core from the web
# workers as they boot and answer the first request, which a client is waiting for.
START_DELAY_SECONDS = 2.0
# our own settings that hold users' passwords: the runner and its jobs need none of them
NOT_FOR_THE_RUNNER = frozenset({"MLFLOW_AUTH_USERS", "MLFLOW_AUTH_USERS_FILE", "WSGI_AUTH_CREDENTIALS",
                                "WSGI_AUTH_CREDENTIALS_FILE",
                                # the web workers' pool sizes: SQLAlchemy refuses them with NullPool
                                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"})
# What the runner imports that the web app does not: MLflow's job store (its import configures
# SQLAlchemy's mappers), its job logging, huey (the periodic tasks' crontab), the SQL trace
# roll-ups' task, our fleet. tests/test_job_runner.py checks the runner imports nothing else.
RUNNER_MODULES = ("huey", "mlflow.server.jobs.logging_utils", "mlflow.store.jobs.sqlalchemy_store",
                  "mlflow.store.jobs.sqlalchemy_workspace_store", "mlflow.store.db.trace_rollups",
                  "mlflow.tracing.trace_rollup_service", "server.jobs.fleet", "server.jobs.periodic")
_FORMATTER = JsonFormatter()
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


def preload() -> None:
    """In gunicorn's master, before the fork: imports what only the runner runs, so the runner
    shares those modules' pages with the master instead of importing them into pages of its
    own (15.7 instead of 22.5 MB of its own, measured)."""
    for name in RUNNER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module MLflow moved: memory, not a need
            log.warning("not imported before the job runner's fork: %s (%s)", name, exc)


def internal_credential() -> tuple[str, str]:
    """(user, password) for the runner's calls to this server; new at every start."""
    return INTERNAL_USER, secrets.token_urlsafe(32)


def prepare_queue_folder() -> str:
    """The instance's job folder (MLflow's huey folder variable), set in the environment before
    the web workers fork: they leave there what a job reserved for this instance needs
    (server/jobs/submit.py). In memory (/dev/shm) where there is one, readable by this account only."""
    folder = tempfile.mkdtemp(prefix="mlflow-jobs-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.environ[HUEY_STORAGE_PATH_ENV_VAR] = folder
    return folder


def remove_queue_folder() -> None:
    """On the way out: the jobs are in the database; what the folder held dies with the instance."""
    import shutil

    folder = os.environ.get(HUEY_STORAGE_PATH_ENV_VAR)
    if folder and os.path.basename(folder).startswith("mlflow-jobs-"):
        shutil.rmtree(folder, ignore_errors=True)


def runner_environment(backend_store_uri: str, default_artifact_root: str, server_url: str,
                       credential: tuple[str, str], server_pid: int) -> dict[str, str]:
    """What ``mlflow server`` gives its runner, plus the credential its HTTP calls need."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_FOR_THE_RUNNER}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": default_artifact_root,
        "MLFLOW_TRACKING_URI": server_url,
        "MLFLOW_TRACKING_USERNAME": credential[0],
        "MLFLOW_TRACKING_PASSWORD": credential[1],
        "MLFLOW_SERVER_PID": str(server_pid),
        # the job code's own server calls never leave this instance
        "NO_PROXY": "127.0.0.1,localhost",
        "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool",
    })
    env.setdefault("MLFLOW_GATEWAY_URI", server_url)
    return env


class ForkedRunner:
    """The runner process, forked from gunicorn's master: its pid and whether it still runs."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0  # gunicorn's master reaps every child it does not know
        return None if pid == 0 else os.waitstatus_to_exitcode(status)


# the master's handlers (gunicorn's Arbiter.SIGNALS and SIGCHLD), which the runner must not keep
_MASTER_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD)


def start(env: dict[str, str], log_level: str = "info", listeners=()) -> ForkedRunner:
    """Fork the runner from gunicorn's master, as gunicorn forks its workers: MLflow is already
    imported there and its pages are shared (frozen by ``gc.freeze``), so the runner costs its own
    work, not a second copy of MLflow; it begins that work ``START_DELAY_SECONDS`` after the fork."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()  # a process group of its own: stopped as a whole, jobs included
            for sig in _MASTER_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for listener in listeners:
                listener.close()  # the master's port is not the runner's
            time.sleep(START_DELAY_SECONDS)
            run_forked(env, log_level)
        except Exception:
            log.exception("the job runner failed to start")
        finally:
            os._exit(1)  # main() leaves with os._exit(0); reaching here is a failure
    log.info("MLflow job runner started (pid %d, forked from the server), job folder %s", pid,
             env.get(HUEY_STORAGE_PATH_ENV_VAR, "-"))
    return ForkedRunner(pid)


def run_forked(env: dict[str, str], log_level: str) -> None:
    """The runner's life in the process forked from the master: its own environment and stores,
    then ``main``, which leaves with ``os._exit``."""
    os.environ.clear()
    os.environ.update(env)  # what its jobs inherit: no user's password
    _own_stores()
    main(log_level)


def _own_stores() -> None:
    """Forget the master's MLflow stores: their engines pool connections for web workers. The
    runner's are made again on first use, from its own environment (no pool: a connection only
    while it works, README "Database connections"), as a runner started on its own makes them."""
    from mlflow.server import handlers
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from server.app import after_fork

    after_fork()  # the master's connections are not the runner's to use or close
    for engine_map in (SqlAlchemyStore._engine_map, SqlAlchemyJobStore._engine_map):  # (the registry shares the first)
        for engine in engine_map.values():
            engine.dispose(close=False)
        engine_map.clear()
    handlers._tracking_store = handlers._model_registry_store = handlers._job_store = None


def stop(proc: ForkedRunner | None) -> None:
    """Stop the runner and every consumer and job it started (one process group)."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _secrets_in(env: dict[str, str]) -> tuple[str, ...]:
    from server.config import db_password

    found = [env.get("MLFLOW_TRACKING_PASSWORD"), env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN")]
    found += [db_password(env.get(k, "")) for k in ("MLFLOW_BACKEND_STORE_URI", BACKEND_STORE_URI_ENV_VAR,
                                                     REGISTRY_STORE_URI_ENV_VAR)]
    return tuple(v for v in found if v)


def as_json_line(line: str) -> str:
    """One line of the runner's (or a job's) output as a JSON log line, secrets redacted."""
    from server.serving.logs import redact

    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            json.loads(line)
            return redact(line)
        except ValueError:
            pass
    level = _LEVEL.search(line)
    record = logging.LogRecord("mlflow.server.jobs", logging.getLevelName(level.group(1) if level else "INFO"),
                               __file__, 0, line, None, None)
    return _FORMATTER.format(record)  # the server's own JSON shape, redacted


def _relay(source: int, sink: int) -> None:
    with os.fdopen(source, "r", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            os.write(sink, (as_json_line(line) + "\n").encode())


def main(log_level: str) -> None:
    """The runner process: MLflow's job runner, its output (and its children's) relayed as JSON."""
    from server.serving import logs

    logs.install_redaction(_secrets_in(dict(os.environ)))
    logs.configure_python_logging(log_level)
    sink = os.dup(1)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)
    relay = threading.Thread(target=_relay, args=(read, sink), name="json-relay", daemon=True)
    relay.start()
    run_fleet()
    # its last lines (what it settled as it stopped) are in the pipe: let the relay write them
    sys.stdout.flush()
    sys.stderr.flush()
    os.close(1)
    os.close(2)
    relay.join(RELAY_DRAIN_SECONDS)
    os._exit(0)  # the fleet's and the periodic tasks' threads are not waited for: the database has it all


def coordination_engine(uri: str):
    """The runner's own connection for the shared queue's statements: one, kept open, so a
    poll a second costs no new connection (the jobs themselves use MLflow's store)."""
    import sqlalchemy

    if uri.startswith("sqlite"):
        return sqlalchemy.create_engine(uri)
    return sqlalchemy.create_engine(uri, pool_size=1, max_overflow=1, pool_pre_ping=True, pool_recycle=1800)


def run_fleet() -> None:
    """The runner: this instance's share of the fleet's jobs, and its turns at the periodic
    tasks, all coordinated through the database (server/jobs/fleet.py, server/jobs/periodic.py)."""
    from mlflow.environment_variables import (
        MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS,
        MLFLOW_SERVER_JOB_HUEY_REDIS_URL,
        MLFLOW_SERVER_JOB_LEASE_TTL,
    )
    from mlflow.server.handlers import _get_job_store
    from mlflow.server.jobs import logging_utils
    from mlflow.server.jobs import utils as jobs

    from server.jobs import submit as job_submit
    from server.jobs.fleet import FleetRunner
    from server.jobs.periodic import FleetSchedule
    from server.jobs.table import JobTable

    logging_utils.configure_logging_for_jobs()
    jobs._start_watcher_to_kill_job_runner_if_mlflow_server_dies()
    if MLFLOW_SERVER_JOB_HUEY_REDIS_URL.get():
        log.info("MLFLOW_SERVER_JOB_HUEY_REDIS_URL is set but not used: jobs and periodic tasks are "
                 "coordinated through the database, whatever the number of instances")
    lease = MLFLOW_SERVER_JOB_LEASE_TTL.get()
    folder = os.environ[HUEY_STORAGE_PATH_ENV_VAR]
    job_submit.install(folder, lease)  # the periodic tasks submit jobs too
    table = JobTable(coordination_engine(os.environ["MLFLOW_BACKEND_STORE_URI"]), int(lease * 1000))
    runner = FleetRunner(table, _get_job_store(), folder, lease)
    stopping = threading.Event()
    threads = [threading.Thread(target=runner.run, args=(stopping,), name="job-fleet", daemon=True)]
    if MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS.get():
        schedule = FleetSchedule(table)
        jobs.register_periodic_tasks(schedule)
        threads.append(threading.Thread(target=schedule.run_forever, args=(stopping,), name="periodic", daemon=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for thread in threads:
        thread.start()
    log.info("MLflow job runner ready: pid %d, %d job kinds, periodic tasks %s", os.getpid(),
             len(jobs._job_name_to_fn_fullname_map), "on" if len(threads) > 1 else "off")
    stopping.wait()
    runner.stop()  # settles its jobs now, not when their leases run out


