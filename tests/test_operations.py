"""Operations: JSON logs without secrets, graceful SIGTERM, users rotated under a running server."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time

import httpx
import pytest
import requests

from tests.conftest import ALICE, ALL_PASSWORDS, BOB, BOB_HASH, gcs_server_config, s3_server_config
from tests.services import ROOT, Server, open_connections, process_tree, refuses_connections, trickle, wait_for

pytestmark = pytest.mark.reliability

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_logs_are_json_and_hold_no_secret(gcs_server):
    # a failed login with a password-looking value, a good one, and an error from MLflow
    requests.get(gcs_server.url + SEARCH, auth=(ALICE[0], "Wr0ng-but-s3cret"), timeout=10)
    requests.get(gcs_server.url + SEARCH, auth=ALICE, timeout=10)
    text = gcs_server.logs_after(lambda: requests.get(  # the log once this last request has its line
        gcs_server.url + "/api/2.0/mlflow/runs/get?run_id=nope", auth=ALICE, timeout=10), "run_id=nope")
    for line in text.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    for secret in (*ALL_PASSWORDS, "Wr0ng-but-s3cret", BOB_HASH):
        assert secret not in text


def test_debug_logs_hold_no_credential_over_http1_or_h2c(tmp_path, postgres, s3):
    # LOG_LEVEL=debug is what an operator turns on to chase a problem: the libraries that log
    # the wire at DEBUG (hpack decodes every Authorization header of an HTTP/2 request,
    # botocore prints each S3 request's headers) must not turn it into a credential log
    env, secrets = s3_server_config(postgres, s3, "mlflow_debuglog", "debuglog")
    env.update({"LOG_LEVEL": "debug", "MLFLOW_HTTP2_CLEARTEXT": "both", "FORWARDED_ALLOW_IPS": "127.0.0.1"})
    server = Server(tmp_path, env, secrets).start()
    try:
        artifact = "/api/2.0/mlflow-artifacts/artifacts/debuglog/a.txt"
        requests.get(server.url + SEARCH, auth=(ALICE[0], "Wr0ng-but-s3cret"), timeout=10)
        assert requests.get(server.url + SEARCH, auth=ALICE, timeout=10).status_code == 200
        assert requests.put(server.url + artifact, data=b"over http/1.1", auth=BOB, timeout=30).status_code == 200
        with httpx.Client(http1=False, http2=True, timeout=30) as h2c:  # prior knowledge, as Cloud Run sends it
            wrong = h2c.get(server.url + SEARCH, auth=(BOB[0], "Wr0ng-but-s3cret"))
            ok = h2c.get(server.url + SEARCH, auth=ALICE)
            put = h2c.put(server.url + artifact, content=b"over h2c", auth=ALICE)
            got = h2c.get(server.url + artifact, auth=BOB)
        assert (wrong.http_version, wrong.status_code, ok.status_code, put.status_code) == ("HTTP/2", 401, 200, 200)
        assert got.content == b"over h2c"
    finally:
        server.stop()
    text = server.logs()
    assert '"severity": "DEBUG"' in text  # the level took effect
    headers = [f"Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}"
               for user, password in (ALICE, BOB, (ALICE[0], "Wr0ng-but-s3cret"), (BOB[0], "Wr0ng-but-s3cret"))]
    for secret in (*ALL_PASSWORDS, "Wr0ng-but-s3cret", BOB_HASH, *headers, *(h.split()[1] for h in headers)):
        assert secret not in text, f"{secret[:8]}... in the debug log"
    assert "authorization" not in text.lower()


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_sigterm")
    server = Server(tmp_path, env, secrets).start()
    results = {}

    def slow_upload():
        # a 40 MB body trickled in slowly, still in flight when SIGTERM arrives
        try:
            r = requests.put(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/sigterm/big.bin",
                             data=trickle(40, 1024 * 1024, 0.1),
                             auth=ALICE, timeout=60)
            results["upload"] = r.status_code
        except requests.RequestException as exc:
            results["upload"] = repr(exc)

    t = threading.Thread(target=slow_upload)
    t.start()
    # SIGTERM only once a worker holds the upload's connection: a busy machine can take longer
    # than any fixed pause to get it there, and one still in the listen backlog is not in flight
    wait_for(lambda: open_connections(process_tree(server.proc.pid), server.port, accepted=True) > 0, 20,
             "the upload reaching a worker")
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refuses_connections(server.port), 10, "the listener closing after SIGTERM")
    refused_while_uploading = t.is_alive()
    t.join(30)
    code = server.proc.wait(15)
    assert results.get("upload") == 200, results
    assert refused_while_uploading  # new connections refused while the upload was still going
    assert code == 0


# Our gunicorn settings with the second worker's boot held for 3 s after the fork, as a loaded
# machine can hold it: a SIGTERM then lands before that worker has installed its own handlers.
SECOND_WORKER_BOOTS_SLOWLY = """
import time
exec(compile(open({conf!r}).read(), {conf!r}, "exec"))
_post_fork = post_fork


def post_fork(server, worker):
    if worker.age == 2:
        time.sleep(3)
    _post_fork(server, worker)
"""


def test_sigterm_while_a_worker_boots_stops_that_worker_too(tmp_path, postgres, gcs):
    # the master's handlers, inherited with the fork, used to swallow it: the worker served on
    # until the master killed it at graceful_timeout
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_sigterm_boot")
    env["MLFLOW_WORKERS"] = "2"
    conf = tmp_path / "slow-boot.conf.py"
    conf.write_text(SECOND_WORKER_BOOTS_SLOWLY.format(conf=str(ROOT / "server" / "gunicorn.conf.py")))
    server = Server(tmp_path, env, secrets, args=["--config", str(conf)]).start()
    try:
        wait_for(lambda: server.logs().count("Booting worker with pid") == 2, 10, "the second worker's fork")
        second = server.logs().split("Booting worker with pid: ")[2].split('"')[0]  # held in its boot now
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(20)
    finally:
        server.stop()
    text = server.logs()
    assert code == 0
    assert f"Worker exiting (pid: {second})" in text, text[-2000:]
    assert f"Worker (pid:{second}) was sent SIGKILL" not in text


def test_rotated_users_file_is_used_and_a_removed_one_keeps_the_server_up(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_rotate")
    server = Server(tmp_path, env, secrets).start()
    try:
        assert requests.get(server.url + SEARCH, auth=ALICE, timeout=10).status_code == 200
        server.write_secret("mlflow_auth_users", f"{ALICE[0]}:rotated-Passw0rd\n{BOB[0]}:{BOB_HASH}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if requests.get(server.url + SEARCH, auth=(ALICE[0], "rotated-Passw0rd"), timeout=10).status_code == 200:
                break
            time.sleep(0.5)
        assert requests.get(server.url + SEARCH, auth=(ALICE[0], "rotated-Passw0rd"), timeout=10).status_code == 200
        assert requests.get(server.url + SEARCH, auth=ALICE, timeout=10).status_code == 401

        (server.secrets_dir / "mlflow_auth_users").unlink()
        time.sleep(3)
        for _ in range(4):  # every worker notices, logs, and keeps the last good users
            assert requests.get(server.url + SEARCH, auth=BOB, timeout=10).status_code == 200
        assert server.proc.poll() is None
        assert "is missing; keeping the previous users" in server.logs()
        assert "rotated-Passw0rd" not in server.logs()

        # a new instance started now fails closed, clearly
        env.pop("WSGI_AUTH_CREDENTIALS")
        code, out = Server(tmp_path / "new", env, {k: v for k, v in secrets.items()
                                                   if k != "mlflow_auth_users"}).run_to_exit()
        assert code == 2 and "MLFLOW_AUTH_USERS: no users are configured" in out
    finally:
        server.stop()
