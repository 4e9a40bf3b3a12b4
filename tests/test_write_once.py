"""Write-once where MLflow writes (server/limits/write_once.py), on real servers:

* S3 (moto, which enforces ``If-None-Match``): an upload that passed the rule's check while the
  path was free, and whose body was still arriving when another upload stored the path, gets a
  409 and the stored bytes stay; for one PUT and for a multipart upload's completion.
* GCS (the emulator ignores preconditions): a recording proxy between the server and the emulator
  shows ``ifGenerationMatch=0`` on every editor's upload (proxy PUT and the UI's upload) and none
  on an admin's. That GCS itself then refuses the second writer is not tested here.
* The UI's upload is checked where MLflow stores it, whatever the request named the run.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ALICE, gcs_server_config, s3_server_config
from tests.services import LoopbackServer, QuietHandler, Server

EDITOR = ("ed", "ed-editor-password")
USERS = f"{ALICE[0]}:{ALICE[1]}\n[editor]\n{EDITOR[0]}:{EDITOR[1]}\n"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"
API = "/api/2.0/mlflow"


class RecordingProxy(LoopbackServer):
    """Forwards every request to ``upstream`` and keeps each request line (method and target)."""

    def __init__(self, upstream: str):
        self.lines: list[str] = []
        host = urlsplit(upstream)
        proxy = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                proxy.lines.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def do_GET(self):  # noqa: N802 - the name BaseHTTPRequestHandler calls
                self._forward()

            def do_POST(self):  # noqa: N802 - the name BaseHTTPRequestHandler calls
                self._forward()

            def do_PUT(self):  # noqa: N802 - the name BaseHTTPRequestHandler calls
                self._forward()

            def do_DELETE(self):  # noqa: N802 - the name BaseHTTPRequestHandler calls
                self._forward()

        super().__init__(Handler)


def call(server, user, method, path, **kwargs) -> requests.Response:
    return requests.request(method, server.url + path, auth=user, timeout=60, **kwargs)


def new_run(server) -> tuple[str, str]:
    """(experiment id, run id) of a fresh run made by the editor."""
    made = call(server, EDITOR, "POST", f"{API}/experiments/create", json={"name": f"wo-{uuid.uuid4().hex[:8]}"})
    experiment = made.json()["experiment_id"]
    run = call(server, EDITOR, "POST", f"{API}/runs/create", json={"experiment_id": experiment}).json()
    return experiment, run["run"]["info"]["run_id"]


@pytest.fixture(scope="module")
def s3_editor_server(workdir, postgres, s3):
    env, secrets = s3_server_config(postgres, s3, "mlflow_write_once_s3", prefix="write-once")
    server = Server(workdir / "server-write-once-s3", env, {**secrets, "mlflow_auth_users": USERS}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def recorded_gcs_server(workdir, postgres, gcs):
    proxy = RecordingProxy(gcs.host)
    proxy.start()
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_write_once_gcs", prefix="write-once")
    env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{proxy.port}"
    server = Server(workdir / "server-write-once-gcs", env, {**secrets, "mlflow_auth_users": USERS}).start()
    yield server, proxy
    server.stop()
    proxy.stop()


def slow_put(server, user, path: str, body: bytes, first: int) -> http.client.HTTPConnection:
    """A PUT whose headers and first ``first`` bytes are sent; the caller sends the rest."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(server.url).port, timeout=60)
    conn.putrequest("PUT", path)
    conn.putheader("Authorization", "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode())
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:first])
    return conn


@pytest.mark.parametrize("size", [1024, 9 * 1024 * 1024], ids=["one-put", "multipart"])
def test_a_path_stored_while_an_upload_was_under_way_is_kept(s3_editor_server, size):
    server = s3_editor_server
    experiment, run = new_run(server)
    path = f"{PROXY}/{experiment}/{run}/artifacts/race-{size}.bin"
    # the first upload passes the rule's check (nothing stored yet) and is still sending its body
    late = slow_put(server, EDITOR, path, b"L" * size, first=size - 10)
    time.sleep(0.5)
    assert call(server, EDITOR, "PUT", path, data=b"E" * size).status_code == 200  # stored meanwhile
    late.send(b"L" * 10)
    answer = late.getresponse()
    body = answer.read()
    late.close()
    assert answer.status == 409, body[:300]
    assert json.loads(body)["error_code"] == "RESOURCE_ALREADY_EXISTS"
    assert call(server, EDITOR, "GET", path).content == b"E" * size
    # an admin may still replace it
    assert call(server, ALICE, "PUT", path, data=b"repaired").status_code == 200
    assert call(server, EDITOR, "GET", path).content == b"repaired"


def test_the_ui_upload_is_held_where_mlflow_stores_it(s3_editor_server):
    server = s3_editor_server
    experiment, run = new_run(server)
    _, other = new_run(server)
    stored = f"{PROXY}/{experiment}/{run}/artifacts/notes.txt"
    assert call(server, EDITOR, "PUT", stored, data=b"kept").status_code == 200
    upload = "/ajax-api/2.0/mlflow/upload-artifact"
    # every way of naming the run: MLflow picks the run it stores into; the rule checks that path
    for params in ({"run_uuid": run}, {"run_uuid": run, "run_id": other}, {"run_id": other, "run_uuid": run}):
        answer = call(server, EDITOR, "POST", upload, params={**params, "path": "notes.txt"}, data=b"replaced")
        assert answer.status_code == 409, (params, answer.text)
    assert call(server, EDITOR, "GET", stored).content == b"kept"
    # a new path in the same run is written, once
    fresh = call(server, EDITOR, "POST", upload, params={"run_uuid": run, "path": "sub/new.txt"}, data=b"new")
    assert fresh.status_code == 200, fresh.text
    assert call(server, EDITOR, "GET", f"{PROXY}/{experiment}/{run}/artifacts/sub/new.txt").content == b"new"


def test_every_editor_upload_reaches_gcs_create_only(recorded_gcs_server):
    server, proxy = recorded_gcs_server
    experiment, run = new_run(server)
    base = f"{PROXY}/{experiment}/{run}/artifacts"

    def uploads(action) -> list[str]:
        before = len(proxy.lines)
        assert action().status_code == 200
        return [line for line in proxy.lines[before:] if line.startswith("POST /upload/")]

    proxied = uploads(lambda: call(server, EDITOR, "PUT", f"{base}/a.txt", data=b"a"))
    ui = uploads(lambda: call(server, EDITOR, "POST", "/ajax-api/2.0/mlflow/upload-artifact",
                              params={"run_uuid": run, "path": "b.txt"}, data=b"b"))
    admin = uploads(lambda: call(server, ALICE, "PUT", f"{base}/a.txt", data=b"admin"))
    assert proxied and ui and admin
    assert all("ifGenerationMatch=0" in line for line in proxied + ui), proxied + ui
    assert not any("ifGenerationMatch" in line for line in admin), admin
    assert call(server, EDITOR, "GET", f"{base}/a.txt").content == b"admin"
