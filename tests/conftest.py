"""Session-wide real services. Under CI=true a missing service fails the test; elsewhere it skips."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from tests.services import (
    ROOT,
    GcsEmulator,
    Missing,
    Postgres,
    S3Server,
    SecretManagerStandIn,
    Server,
    StockServer,
    run_client,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
OUTPUT = ROOT / "test-output"

# Test users: one plain, one bcrypt-hashed (htpasswd -B style), one from WSGI_AUTH_CREDENTIALS.
ALICE = ("alice", "alice-Pl41n-password")
BOB = ("bob", "bob-h4shed-password")
CAROL = ("carol", "carol-l3gacy-password")
BOB_HASH = bcrypt.hashpw(BOB[1].encode(), bcrypt.gensalt(rounds=10)).decode()
USERS_FILE = f"# test users\n{ALICE[0]}:{ALICE[1]}\n{BOB[0]}:{BOB_HASH}\n"
ALL_PASSWORDS = (ALICE[1], BOB[1], CAROL[1], Postgres.password, S3Server.secret_key)


def need(fn, *args):
    """Start a service; under CI a missing one is a failure, elsewhere a skip."""
    try:
        return fn(*args)
    except Missing as exc:
        if IN_CI:
            pytest.fail(f"required test service unavailable: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def workdir():
    # Postgres runs as the postgres user: the folder must be reachable by it, unlike pytest's
    # private tmp folder.
    path = Path(tempfile.mkdtemp(prefix="mlflow-tests-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def output_dir():
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def postgres(workdir):
    pg = Postgres(workdir)

    def up():
        pg.init()
        pg.start()
        return pg

    need(up)
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def gcs(workdir):
    emulator = GcsEmulator(workdir)
    need(emulator.start)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def s3(workdir):
    server = S3Server(workdir)
    need(server.start)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secret_manager():
    stand_in = SecretManagerStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


def gcs_server_config(postgres: Postgres, gcs: GcsEmulator, database: str, prefix: str = "artifacts"):
    """(env, secrets) for a production-like server: Postgres + GCS, secrets as files."""
    uri = postgres.create_database(database)
    env = {**gcs.env(), "MLFLOW_AUTH_MAX_FAILURES": "100000", "WSGI_AUTH_CREDENTIALS": f"{CAROL[0]}:{CAROL[1]}"}
    secrets = {
        "mlflow_backend_store_uri": uri,
        "mlflow_artifacts_destination": f"gs://{gcs.bucket}/{prefix}",
        "mlflow_auth_users": USERS_FILE,
    }
    return env, secrets


@pytest.fixture(scope="session")
def gcs_server(workdir, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_gcs")
    server = Server(workdir / "server-gcs", env, secrets)
    server.start()
    yield server
    server.stop()
    (OUTPUT).mkdir(exist_ok=True)
    shutil.copy(server.log, OUTPUT / "server-gcs.log")


def s3_server_config(postgres: Postgres, s3: S3Server, database: str, prefix: str = "artifacts"):
    """(env, secrets) for a local-style server: Postgres + S3 (MinIO), secrets as files."""
    uri = postgres.create_database(database)
    env = {"MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "MLFLOW_AUTH_MAX_FAILURES": "100000"}
    secrets = {
        # compose-style file names; Postgres URI pasted as postgresql+psycopg2://
        "mlflow_backend_store_uri": uri.replace("postgresql://", "postgresql+psycopg2://"),
        "mlflow_artifacts_destination": f"s3://{s3.bucket}/{prefix}",
        "mlflow_auth_users": USERS_FILE,
        "aws_access_key_id": s3.access_key,
        "aws_secret_access_key": s3.secret_key,
    }
    return env, secrets


@pytest.fixture(scope="session")
def s3_server(workdir, postgres, s3):
    env, secrets = s3_server_config(postgres, s3, "mlflow_s3")
    server = Server(workdir / "server-s3", env, secrets)
    server.start()
    yield server
    server.stop()
    OUTPUT.mkdir(exist_ok=True)
    shutil.copy(server.log, OUTPUT / "server-s3.log")


PARITY_SCRIPT = ROOT / "tests" / "parity_script.py"


def run_parity_session(url: str, out: Path, credentials=None) -> dict:
    """tests/parity_script.py with the stock client against ``url``; its results, kept with its
    log in ``out``'s folder."""
    done, results = run_client(PARITY_SCRIPT, [], url, credentials, timeout=600,
                               env={"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"})
    (out.parent / f"{out.stem}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copy(results, out)
    return json.loads(out.read_text())


@dataclass
class Parity:
    stock: StockServer
    ours: Server
    stock_results: dict
    our_results: dict


@pytest.fixture(scope="session")
def parity(workdir, postgres, gcs):
    """Stock ``mlflow server`` of the pinned version and ours side by side, each on a database
    and a bucket folder of its own, after the same stock-client session against each."""
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the locks have psycopg2 (as a user of
    # stock MLflow finds out, and writes the driver into the URI)
    stock_db = postgres.create_database("parity_stock").replace("postgresql://", "postgresql+psycopg2://")
    stock = StockServer(workdir / "parity-stock", stock_db, f"gs://{gcs.bucket}/parity-stock", env=gcs.env())
    ours = Server(workdir / "parity-ours", {**gcs.env(), "MLFLOW_AUTH_MAX_FAILURES": "100000"}, {
        "mlflow_backend_store_uri": postgres.create_database("parity_ours"),
        "mlflow_artifacts_destination": f"gs://{gcs.bucket}/parity-ours",
        "mlflow_auth_users": USERS_FILE})
    OUTPUT.mkdir(exist_ok=True)
    try:
        # side by side in time as well: each server and session has its own database and folder
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(stock.start), pool.submit(ours.start)]:
                started.result()
            sessions = [pool.submit(run_parity_session, stock.url, OUTPUT / "parity-stock.json"),
                        pool.submit(run_parity_session, ours.url, OUTPUT / "parity-ours.json", ALICE)]
            stock_results, our_results = (session.result() for session in sessions)
        yield Parity(stock, ours, stock_results, our_results)
    finally:
        ours.stop()
        stock.stop()
        for server, name in ((ours, "parity-ours-server.log"), (stock, "parity-stock-server.log")):
            if server.log.exists():
                (OUTPUT / name).write_text(server.log.read_text(errors="replace"))


# The suite runs on two pytest-xdist workers (pyproject.toml: -n 2 --dist loadfile), a test file
# at a time on one worker, so its module fixtures are made once. Files that share an expensive
# session fixture go to one worker together: stock and ours side by side (parity), the image
# built from our Dockerfile (image).
SHARED_GROUPS = {"test_parity.py": "parity", "test_ui_mlflow3.py": "parity",
                 "test_container.py": "image", "test_compose.py": "image"}
# The longest groups (minutes, in --durations) are handed out first, so that neither worker is
# left with one of them while the other has finished.
LONG_GROUPS = ("test_job_fleet.py", "parity", "test_reliability.py", "image", "test_gcp_bootstrap.py",
               "test_large_artifacts.py", "test_login_limits.py")


def group_of(file_name: str) -> str:
    return SHARED_GROUPS.get(file_name, file_name)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(group_of(item.path.name), len(rank)))  # stable: a file keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the files of a shared group as one unit. (pytest-xdist's own
    ``loadgroup`` cannot do it on pytest 9: it renames items through an attribute pytest 9 no
    longer reads, and every test then goes its own way: pytest-xdist issue #1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileGroups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid.split("::", 1)[0].rsplit("/", 1)[-1])

    return FileGroups(config, log)


# Figures the reliability tests measure (memory, CPU, latency under attack): shown at the end of
# every run, whether or not output is captured, and kept in test-output/figures.txt.
FIGURES: list[str] = []


def figure(line: str) -> None:
    FIGURES.append(line)
    print("\n" + line)


def pytest_sessionfinish(session):
    # a pytest-xdist worker hands its figures to the controller, which prints them all
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["figures"] = list(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FIGURES.extend(getattr(node, "workeroutput", {}).get("figures", []))


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "figures.txt").write_text("\n".join(FIGURES) + "\n")
