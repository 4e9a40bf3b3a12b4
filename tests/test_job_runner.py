"""MLflow's job runner beside our server (server/jobs/runner.py): it runs, it stops with the
server inside Cloud Run's 10 s, it can be turned off, and its credential works only for it."""

from __future__ import annotations

import os
import signal
import time

import pytest
from werkzeug.test import Client

from server.gate.auth import BasicAuthMiddleware
from server.gate.users import User
from tests.conftest import gcs_server_config
from tests.services import Server, process_tree, run_app_probe, wait_for, web_processes
from tests.test_auth import basic


def runner_processes(server: Server) -> list[int]:
    """The job runner and what it started: forked from gunicorn's master into a session of its own."""
    return [pid for pid in process_tree(server.proc.pid) if pid not in web_processes(server.proc.pid)]


def alive(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1][0] != "Z":
                    left.append(pid)
        except OSError:
            pass
    return left


def test_the_runner_starts_with_the_server_and_stops_with_it_within_10_s(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_job_runner")
    server = Server(tmp_path, env, secrets).start()
    try:
        # one process takes every kind of job from the database and runs the periodic tasks
        wait_for(lambda: "MLflow job runner ready" in server.logs(), 60, "the job runner")
        assert "6 job kinds, periodic tasks on" in server.logs()
        assert len(runner_processes(server)) == 1
        tree = process_tree(server.proc.pid)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(10)
        took = time.monotonic() - started
        wait_for(lambda: not alive(tree), 3, "every process of the server and its runner to end")
    finally:
        server.stop()
    folder = next(line.split("job folder ", 1)[1].split('"', 1)[0] for line in server.logs().splitlines()
                  if "job folder " in line)
    assert not os.path.exists(folder), "the in-memory job folder outlived the server"
    print(f"\nSIGTERM to exit with the job runner: {took:.2f} s")
    assert code == 0 and took < 8


def test_no_runner_when_job_execution_is_off(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_no_job_runner")
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = Server(tmp_path, env, secrets).start()
    try:
        time.sleep(3)  # the runner starts right after the app is loaded, before health answers
        assert runner_processes(server) == []
    finally:
        server.stop()


RUNNER_IMPORTS_PROBE = """
import os, signal, threading, time, traceback
import server.app as server_app
from server.jobs import runner

settings = load_settings()
env = runner.runner_environment(settings.backend_store_uri, settings.default_artifact_root, "http://127.0.0.1:9",
                                server_app.job_credential, os.getpid())
read, write = os.pipe()
pid = os.fork()  # as gunicorn's master forks the runner (server/jobs/runner.py, start)
if pid == 0:
    before = set(sys.modules)

    def report():  # what the runner imported once up, then stop it
        while not any(thread.name == "periodic" for thread in threading.enumerate()):
            time.sleep(0.05)
        time.sleep(2)  # the fleet's first polls and the periodic tasks' first turn
        os.write(write, json.dumps(sorted(set(sys.modules) - before)).encode())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=report, daemon=True).start()
    try:
        runner.run_forked(env, "warning")  # leaves with os._exit(0) once stopped
    except BaseException:
        traceback.print_exc()
    os._exit(1)
os.close(write)
imported = json.loads(os.read(read, 1 << 20) or b"null")
_, status = os.waitpid(pid, 0)
print(json.dumps({"imported": imported, "runner_exit": os.waitstatus_to_exitcode(status),
                  "job_execution": settings.job_execution}))
"""


def test_the_runner_imports_nothing_the_master_has_not(tmp_path, postgres):
    # What the forked runner imports lands in pages of its own; what the master imported before
    # the fork it shares (server/jobs/runner.py, preload).
    result = run_app_probe(RUNNER_IMPORTS_PROBE, postgres.create_database("runner_imports"), tmp_path)
    assert result["job_execution"] and result["runner_exit"] == 0
    assert result["imported"] == []


def _app(environ, start_response):
    start_response("200 OK", [])
    return [environ.get("REMOTE_USER", "").encode()]


def _call(app, remote_addr: str, header: str) -> tuple[str, bytes]:
    response = Client(app).get("/api/x", headers={"Authorization": header}, environ_base={"REMOTE_ADDR": remote_addr})
    return response.status, response.get_data()


@pytest.mark.parametrize(("peer", "status"), [("127.0.0.1", "200 OK"), ("::1", "200 OK"),
                                              ("10.0.0.7", "401 Unauthorized"),
                                              ("203.0.113.9", "401 Unauthorized")])
def test_the_runners_credential_works_from_loopback_only(peer, status):
    internal = ("mlflow-job-runner", "s3cret-token-of-this-start")
    app = BasicAuthMiddleware(_app, users=lambda: {"alice": User("alice", "pw-of-alice", "plain")},
                              internal=internal)
    got, body = _call(app, peer, basic(*internal))
    assert got == status
    if status.startswith("200"):
        assert body == b"mlflow-job-runner"


def test_the_runners_name_with_another_password_is_refused():
    app = BasicAuthMiddleware(_app, users=lambda: {"alice": User("alice", "pw-of-alice", "plain")},
                              internal=("mlflow-job-runner", "right"))
    assert _call(app, "127.0.0.1", basic("mlflow-job-runner", "wrong"))[0] == "401 Unauthorized"


def test_mlflow_never_sees_the_authorization_header():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    auth = BasicAuthMiddleware(app, users=lambda: {"alice": User("alice", "pw-of-alice", "plain")})
    status, _ = _call(auth, "127.0.0.1", basic("alice", "pw-of-alice"))
    assert status == "200 OK" and "HTTP_AUTHORIZATION" not in seen and seen["REMOTE_USER"] == "alice"
