"""MLflow's job runner beside the server, as ``mlflow server`` starts it.

``mlflow server`` starts a huey job runner next to its web workers: it runs the jobs the UI and
the API start (judges and scorers, issue detection, ``genai.evaluate``, prompt optimisation) and
the periodic tasks (online scoring, trace archival, SQL trace roll-ups). Each job function has
a huey queue of its own (a SQLite file in a folder the web workers submit to, in ``/dev/shm``
where there is one), each job runs in a subprocess of its own, and its code talks back to this
server over HTTP.

Differences from ``mlflow server``, on purpose:

* one process hosts all the consumers, as threads (huey's thread workers, the kind MLflow's
  consumers use too), instead of MLflow's runner process plus one ``huey_consumer`` process per
  queue: eight interpreters that each import MLflow (171 MB each, 1.4 GB in all, measured)
  become one (``main``); the jobs themselves still run in subprocesses, as in MLflow;
* the runner's HTTP calls go through our Basic-auth gate like any other client's, with a
  credential made at start-up for this process tree only (``internal_credential``): 256 random bits,
  never written anywhere, refused from any peer but loopback;
* its output, and that of every consumer and job it starts, is relayed as JSON log lines with
  every known secret redacted, like the server's own (``main`` below puts this process's
  standard output and error, which its jobs inherit, on a pipe);
* it uses no connection pool: a consumer holds a database connection only while it works, so
  an idle runner adds nothing to the server's connection bound (README "Database connections");
* it runs in a process group of its own, which gunicorn's master stops as a whole when it
  exits (SIGTERM, then SIGKILL after ``STOP_SECONDS``), so a stopped container leaves no
  consumer behind and the stop stays inside Cloud Run's 10 s. A job cut off this way is queued
  again by the next runner (MLflow re-enqueues unfinished jobs at start).

Configuration is MLflow's: ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` starts no runner,
``MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS=false`` keeps the periodic tasks off (set it on all but
one instance when several share a database).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

from server.internals import (
    BACKEND_STORE_URI_ENV_VAR,
    HUEY_STORAGE_PATH_ENV_VAR,
    MLFLOW_SERVER_UP_TIME,
    REGISTRY_STORE_URI_ENV_VAR,
)
from server.logs import JsonFormatter

log = logging.getLogger("server.job_runner")

INTERNAL_USER = "mlflow-job-runner"
STOP_SECONDS = 1.5
# our own settings that hold users' passwords: the runner and its jobs need none of them
NOT_FOR_THE_RUNNER = frozenset({"MLFLOW_AUTH_USERS", "MLFLOW_AUTH_USERS_FILE", "WSGI_AUTH_CREDENTIALS",
                                "WSGI_AUTH_CREDENTIALS_FILE",
                                # the web workers' pool sizes: SQLAlchemy refuses them with NullPool
                                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"})
RECOVERY_DELAY = 5  # seconds after start before unfinished jobs are queued again
_FORMATTER = JsonFormatter()
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


def internal_credential() -> tuple[str, str]:
    """(user, password) for the runner's calls to this server; new at every start."""
    return INTERNAL_USER, secrets.token_urlsafe(32)


def prepare_queue_folder() -> str:
    """The huey queue folder, set in the environment before the web workers fork (they submit
    to it), as ``mlflow server`` does."""
    folder = tempfile.mkdtemp(prefix="mlflow-jobs-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.environ[HUEY_STORAGE_PATH_ENV_VAR] = folder
    return folder


def remove_queue_folder() -> None:
    """On the way out: the queues live in memory (/dev/shm); what they held is in the database,
    and the next runner queues unfinished jobs again."""
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
        MLFLOW_SERVER_UP_TIME: str(int(time.time() * 1000)),
        # the job code's own server calls never leave this instance
        "NO_PROXY": "127.0.0.1,localhost",
        "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool",
    })
    env.setdefault("MLFLOW_GATEWAY_URI", server_url)
    return env


def start(env: dict[str, str], log_level: str = "info") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "server.job_runner", log_level], env=env, start_new_session=True)
    log.info("MLflow job runner started (pid %d), queue folder %s", proc.pid, env.get(HUEY_STORAGE_PATH_ENV_VAR, "-"))
    return proc


def stop(proc: subprocess.Popen | None) -> None:
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
    from server.logs import redact

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
    from server import logs

    logs.install_redaction(_secrets_in(dict(os.environ)))
    logs.configure_python_logging(log_level)
    sink = os.dup(1)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)
    threading.Thread(target=_relay, args=(read, sink), name="json-relay", daemon=True).start()
    run_consumers()


def run_consumers() -> None:
    """What MLflow's ``_job_runner`` and its ``huey_consumer`` processes do, in this process."""
    from mlflow.environment_variables import MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS
    from mlflow.server.jobs import logging_utils
    from mlflow.server.jobs import utils as jobs

    logging_utils.configure_logging_for_jobs()
    jobs._start_watcher_to_kill_job_runner_if_mlflow_server_dies()
    consumers = []
    for job_name in list(jobs._job_name_to_fn_fullname_map):
        fn = jobs._load_function(jobs.get_job_fn_fullname(job_name))
        huey = jobs._get_or_init_huey_instance(job_name).instance
        consumers.append(huey.create_consumer(workers=fn._job_fn_metadata.max_workers))
    if MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS.get():
        huey = jobs._get_or_init_huey_instance(jobs.HUEY_PERIODIC_TASKS_INSTANCE_KEY).instance
        jobs.register_periodic_tasks(huey)
        consumers.append(huey.create_consumer(workers=jobs.PERIODIC_TASKS_WORKER_COUNT,
                                              flush_locks=jobs._should_flush_periodic_locks()))
    for consumer in consumers:
        consumer.start()
    stopping = threading.Event()
    # each consumer's start() installed its handlers; this process has one way to stop
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    log.info("MLflow job runner ready: %d queues, pid %d", len(consumers), os.getpid())
    # as MLflow's runner: once the consumers are up, queue again the jobs a previous runner left
    if not stopping.wait(RECOVERY_DELAY):
        try:
            jobs._enqueue_unfinished_jobs(int(os.environ[MLFLOW_SERVER_UP_TIME]))
        except Exception:
            log.exception("re-queueing unfinished jobs failed")
    stopping.wait()
    for consumer in consumers:
        consumer.stop(graceful=False)
    os._exit(0)  # the consumers' threads are not daemons; what they ran is in the database


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "info")
