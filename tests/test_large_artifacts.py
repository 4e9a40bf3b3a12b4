"""Artifacts over 32 MiB through a model of Cloud Run's front end (tests/cloudrun_proxy.py),
with the GCS emulator behind the server: the HTTP/2 end-to-end path the deploy uses carries any
size, streamed; the HTTP/1 path refuses bodies over 32 MiB with 413, as Cloud Run does."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.cloudrun_proxy import CloudRunFront
from tests.conftest import ALICE, gcs_server_config
from tests.services import Server, proc_kib, run_client, trickle, wait_for_workers, web_processes

SCRIPT = Path(__file__).with_name("large_artifact_script.py")


@pytest.fixture(scope="module")
def h2c_server(workdir, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_large")
    # as the deploy runs it: h2c from the trusted front end, forwarded headers trusted
    env.update({"MLFLOW_HTTP2_CLEARTEXT": "both", "FORWARDED_ALLOW_IPS": "127.0.0.1", "MLFLOW_WORKERS": "2"})
    server = Server(workdir / "server-large", env, secrets).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fronts(h2c_server):
    h2c = CloudRunFront(h2c_server.url, "h2c").start()
    http1 = CloudRunFront(h2c_server.url, "http1").start()
    yield {"h2c": h2c, "http1": http1}
    h2c.stop()
    http1.stop()


def client(front, command: str, size_mib: int) -> tuple[int, dict | str]:
    result, out = run_client(SCRIPT, [command, str(size_mib)], front.url, ALICE,
                             env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, timeout=900)
    if result.returncode != 0:
        return result.returncode, result.stderr[-3000:]
    return 0, json.loads(out.read_text())


def process_tree_rss(pid: int) -> int:
    """RSS in bytes of gunicorn's master and workers, where a transfer's memory would show (the
    job runner's consumers start beside them and grow on their own schedule)."""
    return proc_kib(web_processes(pid), "status", "VmRSS") * 1024


class Watch:
    """Samples the server's RSS and the largest file under its TMPDIR while a transfer runs."""

    def __init__(self, server: Server):
        self.server = server
        wait_for_workers(server.proc.pid, int(server.env.get("MLFLOW_WORKERS", "2")))
        self.base = process_tree_rss(server.proc.pid)
        self.peak = self.base
        self.largest_tmp = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, process_tree_rss(self.server.proc.pid))
            for root, _, files in os.walk(self.server.workdir):
                if "secrets" in root:
                    continue
                for name in files:
                    try:
                        size = os.path.getsize(os.path.join(root, name))
                    except OSError:
                        continue
                    if not name.endswith(".log"):
                        self.largest_tmp = max(self.largest_tmp, size)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_h2c_path_carries_31_and_300_mib_streamed(h2c_server, fronts):
    front = fronts["h2c"]
    code, small = client(front, "artifact", 31)
    assert code == 0, small
    assert small["sent"] == small["received"] and small["size"] == 31 * 1024 * 1024

    with Watch(h2c_server) as watch:
        code, big = client(front, "artifact", 300)
    assert code == 0, big
    assert big["sent"] == big["received"] and big["size"] == 300 * 1024 * 1024
    growth = (watch.peak - watch.base) / 1024 / 1024
    print(f"\n300 MiB up and down through h2c: server RSS +{growth:.0f} MB, "
          f"largest file under TMPDIR {watch.largest_tmp / 1024 / 1024:.1f} MB")
    assert growth < 100, f"server RSS grew by {growth:.0f} MB"
    assert watch.largest_tmp < 16 * 1024 * 1024, "an artifact was spooled to TMPDIR"
    # it really went over HTTP/2 to the server, with no 413 anywhere
    assert not front.refused
    assert any(m == "PUT" and "blob-300m.bin" in p and s == 200 for m, p, s in front.forwarded)


def test_h2c_path_logs_and_loads_a_model_over_32_mib(fronts):
    code, got = client(fronts["h2c"], "model", 40)
    assert code == 0, got
    assert got["predict"] == got["expected"] and got["ballast_same"] and got["ballast_mib"] == 40


def test_http1_path_takes_31_mib_and_refuses_more_with_413(fronts):
    front = fronts["http1"]
    code, small = client(front, "artifact", 31)
    assert code == 0, small
    assert small["sent"] == small["received"]
    code, message = client(front, "artifact", 40)
    assert code != 0 and "413" in message
    assert any(s == 413 and "blob-40m.bin" in p for _, p, s in front.refused)


def test_s3_uploads_and_downloads_stream_too(s3_server):
    class Direct:
        url = s3_server.url

    with Watch(s3_server) as watch:
        code, got = client(Direct(), "artifact", 64)
    assert code == 0, got
    assert got["sent"] == got["received"]
    assert watch.largest_tmp < 16 * 1024 * 1024, "an artifact was spooled to TMPDIR"


def test_a_transfer_longer_than_the_worker_timeout_is_not_cut(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_slow")
    env.update({"MLFLOW_WORKER_TIMEOUT": "3", "MLFLOW_WORKERS": "1"})
    server = Server(tmp_path, env, secrets).start()
    try:
        import requests

        started = time.monotonic()
        # 12 MiB over ~8 s: well past the 3 s worker timeout
        r = requests.put(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/slow/one.bin",
                         data=trickle(48, 256 * 1024, 0.17, b"z"),
                         auth=ALICE, timeout=120)
        took = time.monotonic() - started
        assert r.status_code == 200 and took > 6
        back = requests.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/slow/one.bin", auth=ALICE, timeout=60)
        assert back.content == b"z" * (12 * 1024 * 1024)
        assert "WORKER TIMEOUT" not in server.logs()
    finally:
        server.stop()


def test_files_over_the_client_multipart_threshold_still_go_through_the_proxy(fronts):
    # The stock client tries presigned multipart uploads for files of 500 MiB and more when the
    # server advertises them; clients cannot reach the bucket, so the server does not, and the
    # client sends one streamed PUT through the HTTP/2 path instead.
    code, got = client(fronts["h2c"], "artifact", 520)
    assert code == 0, got
    assert got["sent"] == got["received"] and got["size"] == 520 * 1024 * 1024
    assert not any("/mpu/" in p and s == 200 for _, p, s in fronts["h2c"].forwarded)
