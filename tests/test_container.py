"""The real image: built from our Dockerfile, inspected, and run hardened against the real
Postgres and GCS emulator, with secrets mounted as files the way Cloud Run mounts them."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import threading
import time

import pytest
import requests

from tests.conftest import ALICE, ALL_PASSWORDS, BOB, USERS_FILE, need
from tests.container import REVISION, build_image, inspect, run_in_image, start_container
from tests.services import ROOT, trickle
from tests.test_request_costs import otlp_spans
from tests.test_training_flow import check_flow

pytestmark = pytest.mark.container

# Half the stand-in for MLflow's official image built here (919 MB, docs/container.md).
MAX_IMAGE_BYTES = 459 * 1000 * 1000
UID = 10001


@pytest.fixture(scope="session")
def image():
    return need(build_image)


def cloud_run_secrets(tmp_path, backend_uri: str) -> tuple[dict, dict]:
    """Secrets as Cloud Run mounts them (one secret per folder), pointed at by NAME_FILE."""
    (tmp_path / "db").mkdir(parents=True, exist_ok=True)
    (tmp_path / "users").mkdir(exist_ok=True)
    (tmp_path / "db" / "uri").write_text(backend_uri + "\n")
    (tmp_path / "users" / "htpasswd").write_text(USERS_FILE)
    for path in (tmp_path / "db" / "uri", tmp_path / "users" / "htpasswd"):
        path.chmod(0o444)  # the container's user (10001) is not the files' owner
    files = {"/secrets/db/uri": tmp_path / "db" / "uri", "/secrets/users/htpasswd": tmp_path / "users" / "htpasswd"}
    env = {"MLFLOW_BACKEND_STORE_URI_FILE": "/secrets/db/uri", "MLFLOW_AUTH_USERS_FILE": "/secrets/users/htpasswd"}
    return env, files


def test_image_size_user_and_no_build_tools(image):
    info = inspect(image)
    assert info["Size"] <= MAX_IMAGE_BYTES, f"image is {info['Size'] / 1e6:.0f} MB"
    print(f"\nimage size: {info['Size'] / 1e6:.0f} MB")
    assert info["Config"]["User"] == f"{UID}:{UID}"
    who = run_in_image(image, "id -u; id -g")
    assert who.stdout.split() == [str(UID), str(UID)], who
    tools = run_in_image(image, "for t in pip pip3 gcc cc c++ make apt-get-never; do command -v $t; done; "
                                "python3 -c 'import pip' 2>/dev/null && echo pip-module; "
                                "/opt/venv/bin/python -c 'import pip' 2>/dev/null && echo venv-pip; "
                                "ls /var/lib/apt/lists /var/cache/apt/archives 2>/dev/null | grep -v -e '^/' -e '^$' -e partial -e lock")
    assert tools.stdout.strip() == "", tools.stdout


def test_every_module_of_the_servers_code_paths_is_in_the_image(image):
    """The judges' pandas was missing once: a route answered 500 only when a user reached it."""
    script = (ROOT / "tests" / "server_imports.py").read_text()
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "-e", "MLFLOW_DISABLE_TELEMETRY=true",
                           "--entrypoint", "/opt/venv/bin/python", image, "-W", "ignore", "-c", script],
                          capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "unexpected: []" in done.stdout


def test_the_builds_internals_verdict_holds_in_the_image(image):
    """The image starts from the verdict its build made (server/borrowed/verdict.py): made in
    another stage or by another Python, it would not hold and every start would check in full and
    build MLflow's FastAPI app at start."""
    script = ("from server.borrowed import verdict\n"
              "found = verdict.verify()\n"
              "print(sorted(found.off), len(found.native_routes), 'mlflow.server.fastapi_app' in __import__('sys').modules)")
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "-e", "MLFLOW_DISABLE_TELEMETRY=true",
                           "-e", "PYTHONPATH=/app", "--entrypoint", "/opt/venv/bin/python", image, "-W", "ignore",
                           "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[] 74 False", done.stdout


def test_image_metadata(image):
    config = inspect(image)["Config"]
    labels = config["Labels"]
    for key in ("source", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.revision"] == REVISION
    assert config["Entrypoint"] == ["/app/entry-point.sh"]
    assert "8080/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PORT"] == "8080"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true"
    assert config["Healthcheck"]["Test"][0] == "CMD"


KEY_PATTERNS = [
    # a PEM private key with its body (parsers that only name the marker do not match)
    re.compile(rb"-----BEGIN (RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----(\\n|\s)+[A-Za-z0-9+/=]{60}"),
    # (also inside a service-account key JSON, where newlines are written \n)
    re.compile(rb"AKIA(?![0-9A-Z]{9}EXAMPLE)[0-9A-Z]{16}"),  # AWS access key ids, not AWS's doc examples
]
SECRET_NAMES = re.compile(r"(^|/)(\.env|id_rsa|id_ed25519|\.netrc|\.pypirc|credentials\.json|.*\.pem\.key|htpasswd)$")


def test_no_secret_in_any_layer(image, tmp_path):
    archive = tmp_path / "image.tar"
    subprocess.run(["docker", "save", "-o", str(archive), image], check=True, timeout=300)
    findings, scanned = [], 0
    known = [p.encode() for p in ALL_PASSWORDS]
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.name.endswith("layer.tar") and not member.name.startswith("blobs/"):
                continue
            data = outer.extractfile(member)
            if data is None:
                continue
            try:
                layer = tarfile.open(fileobj=io.BytesIO(data.read()))
                entries = layer.getmembers()
            except tarfile.TarError:
                continue  # a config or manifest blob, not a layer
            for entry in entries:
                if not entry.isfile():
                    continue
                if SECRET_NAMES.search(entry.name):
                    findings.append(f"{member.name}: {entry.name}")
                if entry.size > 2_000_000:
                    continue
                content = layer.extractfile(entry).read()
                scanned += 1
                if any(p.search(content) for p in KEY_PATTERNS) or any(k in content for k in known):
                    findings.append(f"{member.name}: {entry.name}")
    print(f"\nscanned {scanned} files in the image's layers")
    assert scanned > 1000
    assert findings == [], "\n".join(findings)


def gcs_container_config(tmp_path, postgres, gcs, database: str, prefix: str) -> tuple[dict, dict]:
    """Production-like container settings: a fresh database, GCS emulator, Cloud Run secret files."""
    env, files = cloud_run_secrets(tmp_path, postgres.create_database(database))
    env.update(gcs.env())
    env["MLFLOW_ARTIFACTS_DESTINATION"] = f"gs://{gcs.bucket}/{prefix}"
    return env, files


def test_training_flow_through_the_hardened_container(image, tmp_path, postgres, gcs):
    env, files = gcs_container_config(tmp_path, postgres, gcs, "mlflow_container", "container")
    running = start_container(image, env, files)
    try:
        print(f"\ncontainer start to healthy: {running.startup_seconds:.1f}s")
        check_flow(running, ALICE, lambda: gcs.list_objects("container/"))
        # a route only MLflow's FastAPI app serves answers in the image, the app built on its first request
        eid = requests.post(f"{running.url}/api/2.0/mlflow/experiments/create", json={"name": "otlp-in-the-image"},
                            auth=ALICE, timeout=30).json()["experiment_id"]
        r = requests.post(f"{running.url}/v1/traces", data=otlp_spans(3, trace_id=b"\x07" * 16), auth=ALICE,
                          headers={"Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": eid}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        logs = running.logs()
        assert "MLflow's FastAPI app built on its first request" in logs
        for secret in ALL_PASSWORDS:
            assert secret not in logs
        assert '"user": "alice"' in logs
        # MLflow's job runner runs in the read-only container too (its job folder in /dev/shm)
        assert "MLflow job runner ready" in logs and "periodic tasks on" in logs
    finally:
        code = running.stop()
        running.remove()
    assert code == 0


def test_sigterm_during_upload_then_a_healthy_restart(image, tmp_path, postgres, gcs):
    env, files = gcs_container_config(tmp_path, postgres, gcs, "mlflow_container_stop", "stop")
    running = start_container(image, env, files)
    result = {}

    def upload():
        try:
            r = requests.put(f"{running.url}/api/2.0/mlflow-artifacts/artifacts/stop/big.bin",
                             data=trickle(64, 512 * 1024, 0.02, b"y"),
                             auth=BOB, timeout=60)
            result["status"] = r.status_code
        except requests.RequestException as exc:
            result["status"] = type(exc).__name__

    t = threading.Thread(target=upload)
    t.start()
    time.sleep(0.4)
    code = running.stop(timeout=10)
    t.join(30)
    running.remove()
    # completed, or failed cleanly (connection closed), never a half-written object listed
    assert result["status"] in (200, "ConnectionError", "ChunkedEncodingError"), result
    stored = [n for n in gcs.list_objects("stop/") if n.endswith("big.bin")]
    if result["status"] == 200:
        assert stored
        size = int(requests.get(f"{gcs.host}/storage/v1/b/{gcs.bucket}/o/{stored[0].replace('/', '%2F')}",
                                timeout=10).json()["size"])
        assert size == 64 * 512 * 1024
    else:
        assert stored == []
    assert code == 0

    again = start_container(image, env, files, port=running.port)
    try:
        r = requests.get(f"{again.url}/api/2.0/mlflow/experiments/search?max_results=1", auth=ALICE, timeout=10)
        assert r.status_code == 200
    finally:
        again.stop()
        again.remove()


@pytest.mark.reliability
def test_three_containers_start_together_on_an_empty_database(image, tmp_path, postgres, gcs):
    env, files = gcs_container_config(tmp_path, postgres, gcs, "mlflow_three_containers", "three")
    started, errors = [], []

    def launch():
        try:
            started.append(start_container(image, env, files))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    try:
        assert errors == [] and len(started) == 3
        migrated = [c for c in started if "running database migrations" in c.logs()]
        assert len(migrated) == 1
        statuses = []

        def burst(i):
            c = started[i % 3]
            return requests.post(f"{c.url}/api/2.0/mlflow/experiments/create", json={"name": f"c-{i}"},
                                 auth=ALICE, timeout=60).status_code

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(24) as pool:
            statuses = list(pool.map(burst, range(24)))
        print(f"\nthree containers: migrations run by {len(migrated)}, burst of 24: {statuses.count(200)} ok")
        assert statuses == [200] * 24
    finally:
        for c in started:
            c.stop()
            c.remove()
