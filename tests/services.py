"""Real services for the tests, each a process on 127.0.0.1 stopped by the test session:
PostgreSQL, the GCS emulator, an S3 endpoint (moto's server), a Secret Manager stand-in,
and our server started exactly as the container starts it (``entry-point.sh``).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0


class Missing(Exception):
    """A service the tests need cannot be started on this machine."""


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses_connections(port: int) -> bool:
    """Nothing listens on ``port`` on loopback: a connect there is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout}s\n{tail}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> int | None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


# ---------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    raise Missing("PostgreSQL server binaries (initdb) not found; install the postgresql package")


class Postgres:
    """A throw-away cluster on a free loopback port, run as the postgres user when we are root."""

    user = "mlflow"
    password = "pg-S3cret-pw"

    def __init__(self, workdir: Path):
        self.bindir = postgres_bindir()
        self.dir = workdir / "pgdata"
        self.port = free_port()
        self.log = workdir / "postgres.log"
        self.proc: subprocess.Popen | None = None

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if IS_ROOT else args

    def init(self) -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        pwfile = self.dir.parent / "pg-superuser-pw"
        pwfile.write_text(self.password)
        if IS_ROOT:
            shutil.chown(self.dir.parent, "postgres")
            shutil.chown(pwfile, "postgres")
            os.chmod(self.dir.parent, 0o755)
        subprocess.run(
            self._as_owner([
                str(self.bindir / "initdb"), "-D", str(self.dir), "-U", self.user,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
            ]),
            check=True, capture_output=True,
        )
        pwfile.unlink()

    def start(self) -> None:
        args = self._as_owner([
            str(self.bindir / "postgres"), "-D", str(self.dir), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
            "-c", "fsync=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB",
        ])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        wait_for(self._ready, 30, "postgres", self.proc, self.log)

    def _ready(self) -> bool:
        import psycopg2

        psycopg2.connect(self.dsn("postgres")).close()
        return True

    def stop(self, fast: bool = True) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT if fast else signal.SIGTERM, timeout=30)
            self.proc = None

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A fresh database (replacing one of that name); a copy of ``template`` when given."""
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        conn.close()
        return self.dsn(name)

    def query(self, database: str, sql: str, params=()) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(self.dsn(database))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()


# ---------------------------------------------------------------- object stores


class GcsEmulator:
    """gcp-storage-emulator over HTTP; clients find it through STORAGE_EMULATOR_HOST."""

    def __init__(self, workdir: Path, bucket: str = "mlflow-test"):
        self.port = free_port()
        self.bucket = bucket
        self.log = workdir / "gcs-emulator.log"
        self.proc = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = VENV_BIN / "gcp-storage-emulator"
        if not exe.exists():
            raise Missing("gcp-storage-emulator is not installed in the test venv")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "start", "--host", "127.0.0.1", "--port", str(self.port),
                 "--in-memory", "--default-bucket", self.bucket],
                stdout=log, stderr=log, start_new_session=True,
            )
        wait_for(lambda: requests.get(f"{self.host}/storage/v1/b", timeout=2).ok, 30,
                 "gcs emulator", self.proc, self.log)

    def start_on_disk(self, folder: Path) -> None:
        """Start (or restart, on the same port) keeping objects on disk under ``folder``."""
        exe = VENV_BIN / "gcp-storage-emulator"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "start", "--host", "127.0.0.1", "--port", str(self.port), "--default-bucket", self.bucket],
                stdout=log, stderr=log, start_new_session=True, cwd=folder,
            )
        wait_for(lambda: requests.get(f"{self.host}/storage/v1/b", timeout=2).ok, 30,
                 "gcs emulator", self.proc, self.log)

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": "test-project",
                "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9"}

    def list_objects(self, prefix: str = "") -> list[str]:
        url = f"{self.host}/storage/v1/b/{self.bucket}/o"
        names, token = [], None
        while True:
            params = {"prefix": prefix, **({"pageToken": token} if token else {})}
            data = requests.get(url, params=params, timeout=10).json()
            names += [item["name"] for item in data.get("items", [])]
            token = data.get("nextPageToken")
            if not token:
                return names


class S3Server:
    """moto's standalone server: a real S3 API over HTTP."""

    access_key = "test-access-key"
    secret_key = "test-S3-secret-key"

    def __init__(self, workdir: Path, bucket: str = "mlflow-test"):
        self.port = free_port()
        self.bucket = bucket
        self.log = workdir / "moto.log"
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = VENV_BIN / "moto_server"
        if not exe.exists():
            raise Missing("moto_server is not installed in the test venv")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: requests.get(f"{self.endpoint}/moto-api/", timeout=2).status_code < 500,
                 30, "moto server", self.proc, self.log)
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def list_objects(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# ---------------------------------------------------------------- Secret Manager stand-in


def send_json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
    """Answer a stand-in's request with ``payload`` as JSON."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class QuietHandler(BaseHTTPRequestHandler):
    """A stand-in's request handler that keeps its access lines out of the test output."""

    def log_message(self, *args):
        pass


class LoopbackServer:
    """A stand-in's HTTP server on 127.0.0.1 (a free port), serving ``handler`` in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class SecretManagerStandIn(LoopbackServer):
    """Serves Secret Manager's REST ``versions:access`` call from a dict, like the real API."""

    def __init__(self):
        self.secrets: dict[str, str] = {}
        self.requests: list[str] = []
        stand_in = self

        class Handler(QuietHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                stand_in.requests.append(path)
                prefix, suffix = "/v1/", ":access"
                name = path[len(prefix):-len(suffix)] if path.startswith(prefix) and path.endswith(suffix) else None
                if name is None or name not in stand_in.secrets:
                    send_json(self, 404, {"error": {"code": 404, "status": "NOT_FOUND",
                                                    "message": f"Secret [{name}] not found"}})
                else:
                    data = base64.b64encode(stand_in.secrets[name].encode()).decode()
                    send_json(self, 200, {"name": name, "payload": {"data": data}})

        super().__init__(Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# ---------------------------------------------------------------- our server


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: PATH and HOME only, as a container gets, plus what the test sets."""
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHON": sys.executable,
    }
    env.update(extra or {})
    return env


def run_client(script: Path, args: list[str], url: str, credentials: tuple[str, str] | None = None,
               env: dict[str, str] | None = None, timeout: float = 300) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a stock-client script as a user on another machine would: a fresh folder as HOME and
    working directory, the tracking variables and nothing of the tests' own (no cloud
    credentials). The script gets the path of its JSON output as its last argument; returns the
    finished process and that path."""
    home = Path(tempfile.mkdtemp(prefix="client-"))
    out = home / "out.json"
    client_env = base_env({"HOME": str(home), "MLFLOW_TRACKING_URI": url, **(env or {})})
    client_env.pop("PYTHON", None)
    if credentials:
        client_env.update(MLFLOW_TRACKING_USERNAME=credentials[0], MLFLOW_TRACKING_PASSWORD=credentials[1])
    done = subprocess.run([sys.executable, str(script), *args, str(out)], env=client_env, cwd=home,
                          capture_output=True, text=True, timeout=timeout)
    return done, out


@contextlib.contextmanager
def statements(engine):
    """The SQL statements (with their parameters) sent through ``engine`` while the block runs."""
    import sqlalchemy

    sent: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    sqlalchemy.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", record)


APP_PROBE = """
import base64, json, sys
from sqlalchemy import event
from werkzeug.test import Client
from server.app import create_app
from server.config import load_settings
from mlflow.server import handlers

app = create_app(load_settings())
statements = []
event.listen(handlers._get_tracking_store().engine, "before_cursor_execute",
             lambda conn, cursor, statement, *args: statements.append(statement))
auth = {"Authorization": "Basic " + base64.b64encode(b"alice:Long-enough-passw0rd").decode()}
client = Client(app)
"""


def run_app_probe(body: str, backend_uri: str, artifacts: Path, *args: str) -> dict:
    """Build the server's app in a fresh interpreter (as gunicorn's master does) on
    ``backend_uri``, with user alice, then run ``body`` after ``APP_PROBE``: it has ``client``,
    ``auth`` and ``statements`` (the SQL the tracking store sends) and prints one JSON line,
    which is returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WSGI_AUTH"))}
    env.update(MLFLOW_BACKEND_STORE_URI=backend_uri, MLFLOW_AUTH_USERS="alice:Long-enough-passw0rd",
               MLFLOW_ARTIFACTS_DESTINATION=str(artifacts), MLFLOW_SECRETS_DIR="", PYTHONPATH=str(ROOT),
               LOG_LEVEL="warning")
    out = subprocess.run([sys.executable, "-c", APP_PROBE + body, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


class Server:
    """Our server started with ``entry-point.sh``, configured through secret files."""

    def __init__(self, workdir: Path, env: dict[str, str], secrets: dict[str, str] | None = None,
                 args: list[str] | None = None, port: int | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = workdir / "server.log"
        self.secrets_dir = workdir / "secrets"
        self.secrets_dir.mkdir(exist_ok=True)
        for name, value in (secrets or {}).items():
            self.write_secret(name, value)
        self.env = base_env({"PORT": str(self.port), "MLFLOW_HOST": "127.0.0.1",
                             "MLFLOW_SECRETS_DIR": str(self.secrets_dir), "TMPDIR": str(workdir), **env})
        self.args = args or []
        self.proc: subprocess.Popen | None = None

    def write_secret(self, name: str, value: str) -> Path:
        path = self.secrets_dir / name
        path.write_text(value + "\n")  # as `echo value > file` writes it
        return path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 90) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(ROOT / "entry-point.sh"), *self.args], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.workdir)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        wait_for(lambda: urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200,
                 timeout, "server", self.proc, self.log)

    def run_to_exit(self, timeout: float = 60) -> tuple[int, str]:
        result = subprocess.run([str(ROOT / "entry-point.sh"), *self.args], env=self.env, cwd=self.workdir,
                                capture_output=True, text=True, timeout=timeout)
        return result.returncode, result.stdout + result.stderr

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        return stop(self.proc, sig, timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logs_after(self, send, marker: str, timeout: float = 10) -> str:
        """Call ``send()``, then return the log once ``marker`` appears in it more often than
        before. gunicorn writes a request's access line after the response has gone out, so a
        client can read its answer before that line exists."""
        seen = self.logs().count(marker)
        send()
        wait_for(lambda: self.logs().count(marker) > seen, timeout, f"a new log line with {marker!r}")
        return self.logs()


class StockServer:
    """Stock ``mlflow server`` of the pinned version, the yardstick of the parity tests:
    uvicorn, MLflow's FastAPI app and its job runner, as its documentation starts it."""

    def __init__(self, workdir: Path, backend_store_uri: str, artifacts_destination: str,
                 env: dict[str, str] | None = None, workers: int = 2):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "stock-server.log"
        self.args = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                     "--workers", str(workers), "--backend-store-uri", backend_store_uri,
                     "--artifacts-destination", artifacts_destination]
        self.env = base_env({"MLFLOW_DISABLE_TELEMETRY": "true", "TMPDIR": str(workdir), **(env or {})})
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> StockServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.workdir)
        wait_for(lambda: urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200,
                 timeout, "stock mlflow server", self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, 20)


def start_together(servers: list[Server], timeout: float = 180) -> None:
    """Start several servers at the same moment (as Cloud Run scales out), wait for all."""
    gate = threading.Barrier(len(servers))

    def launch(server: Server):
        gate.wait()
        server.start(wait=False)

    threads = [threading.Thread(target=launch, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for server in servers:
        server.wait_healthy(timeout)


def trickle(chunks: int, size: int, pause: float, fill: bytes = b"x"):
    """A request body sent slowly: ``chunks`` pieces of ``size`` bytes, ``pause`` s apart."""
    for _ in range(chunks):
        yield fill * size
        time.sleep(pause)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (gunicorn's master and workers)."""
    found, pending = [], [pid]
    while pending:
        p = pending.pop()
        found.append(p)
        # a child belongs to the thread that forked it: MLflow's job runner starts its
        # consumers from threads, so every task's list is read, not only the main thread's
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    pending += [int(c) for c in fh.read().split()]
            except OSError:
                pass
    return found


def open_connections(pids: list[int], port: int, accepted: bool = False) -> int:
    """Established TCP connections that these processes hold to ``port`` on loopback, or with
    ``accepted`` the ones they hold on their own ``port`` (accepted from clients).

    Counted from the processes' own sockets: a connection the server has closed is gone at
    once, whereas Postgres lists its backend in pg_stat_activity until that backend exits."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                end = fields[1] if accepted else fields[2]
                end_port, state, inode = int(end.rsplit(":", 1)[1], 16), fields[3], fields[9]
                if end_port == port and state == "01" and inode in inodes:  # 01: ESTABLISHED
                    count += 1
    return count


class Attackers:
    """``count`` connections that each send ``opening`` and then one more byte every few
    seconds (or nothing at all), never finishing a request."""

    def __init__(self, port: int, count: int, opening: bytes, trickle: bool):
        self.stop = threading.Event()
        self.sockets = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if opening:
                s.sendall(opening)
            self.sockets.append(s)
        self.thread = threading.Thread(target=self._trickle, daemon=True) if trickle else None
        if self.thread:
            self.thread.start()

    def _trickle(self):
        while not self.stop.wait(2.0):
            for s in self.sockets:
                try:
                    s.sendall(b"a")
                except OSError:
                    pass

    def count_closed(self) -> int:
        closed = 0
        for s in self.sockets:
            s.setblocking(False)
            try:
                if s.recv(1024) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed

    def close(self):
        self.stop.set()
        for s in self.sockets:
            s.close()


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Per protocol, two kinds of 100 slow connections each: (what each sends first, whether it then
# trickles a byte every 2 s). HTTP/1: silent, and a request head that never ends; h2c: the
# preface only, and a SETTINGS frame then the first bytes of a HEADERS frame.
SLOW_OPENINGS = {
    "HTTP/1": [(b"", False),
               (b"GET /api/2.0/mlflow/experiments/search?max_results=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", True)],
    "h2c": [(_PREFACE, False), (_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x10\x00\x01", True)],
}


class BadLoginFlood:
    """``threads`` threads sending bad logins, each from addresses of its own (``100.<64 + n>.0.x``
    in ``X-Forwarded-For``), unknown names and ``hashed_name`` in turn, until the block ends.

    ``send(auth, client)`` makes one request and returns its status; ``answers`` counts them
    (401, 429, other: any other status, or an error).
    """

    def __init__(self, send, hashed_name: str, threads: int = 64, join_timeout: float = 60):
        self.send, self.hashed_name, self.join_timeout = send, hashed_name, join_timeout
        self.answers = {"401": 0, "429": 0, "other": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._attack, args=(n,), daemon=True) for n in range(threads)]

    def _attack(self, index: int) -> None:
        i = 0
        while not self._stop.is_set():
            name = self.hashed_name if i % 2 else f"ghost-{i}"
            try:
                status = self.send((name, f"flood-{i}"), f"100.{64 + index}.0.{i % 200}")
            except requests.RequestException:
                status = 0
            with self._lock:
                self.answers[str(status) if status in (401, 429) else "other"] += 1
            i += 1

    def __enter__(self) -> BadLoginFlood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout)


def wait_for_workers(pid: int, workers: int, timeout: float = 60) -> None:
    """Until gunicorn's master `pid` has all its workers: the first answer can come from the
    first worker while the others are still forking, and a memory baseline taken then would
    count a whole worker as growth."""
    wait_for(lambda: len(web_processes(pid)) >= 1 + workers, timeout, f"{workers} workers")


def web_processes(pid: int) -> list[int]:
    """gunicorn's master `pid` and its workers, without MLflow's job runner and its consumers
    (they run in a session of their own, server/jobs/runner.py)."""
    try:
        session = os.getsid(pid)
    except OSError:
        return []
    found = []
    for p in process_tree(pid):
        try:
            if os.getsid(p) == session:
                found.append(p)
        except OSError:
            pass
    return found


def proc_kib(pids: list[int], filename: str, field: str) -> int:
    """Sum of one kB field (``VmRSS`` in ``status``, ``Pss`` in ``smaps_rollup``) over processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{filename}") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))
        except (OSError, StopIteration):
            pass
    return total


def latencies(send, n: int = 20) -> list[float]:
    """Seconds each of ``n`` calls of ``send`` took, one after another."""
    found = []
    for _ in range(n):
        started = time.perf_counter()
        send()
        found.append(time.perf_counter() - started)
    return found
