"""Shared helpers for the benchmarks: the same real services the tests use, and statistics."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.config import normalize_backend_uri  # noqa: E402
from tests.services import GcsEmulator, Postgres  # noqa: E402

USER = ("bench", "bench-Passw0rd-123")
AUTH_HEADER = "Basic " + base64.b64encode(":".join(USER).encode()).decode()


def client_env(server) -> None:
    """Point the stock client's credentials at a bench server (``bench.servers.Running``): ours
    needs them, ``mlflow server`` gets none. Failed requests are not retried (they would hide)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    if server.auth:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = server.auth
    else:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


def in_process_app(uri: str, destination: str):
    """The real app, built in this process as a gunicorn worker has it: ``create_app`` with the
    bench user, then gunicorn.conf.py's own hooks (frozen heap, the workers' GC thresholds)."""
    import queue
    import runpy
    from types import SimpleNamespace

    # no job runner: this process stands in for one worker, not for gunicorn's master
    os.environ.update(MLFLOW_BACKEND_STORE_URI=uri, MLFLOW_ARTIFACTS_DESTINATION=destination,
                      MLFLOW_AUTH_USERS=":".join(USER), MLFLOW_SECRETS_DIR="", LOG_LEVEL="warning",
                      MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    from server.app import create_app
    from server.config import load_settings

    app = create_app(load_settings())
    conf = runpy.run_path(str(ROOT / "server" / "gunicorn.conf.py"))
    master = SimpleNamespace(SIG_QUEUE=queue.SimpleQueue())  # what post_fork reads of gunicorn's arbiter
    conf["when_ready"](master)
    conf["post_fork"](master, SimpleNamespace())
    return app


@contextlib.contextmanager
def services() -> Iterator[tuple[Path, Postgres, GcsEmulator]]:
    """Postgres and the GCS emulator in a fresh folder; stopped, and the folder (the database and
    server logs: GBs after a full run) removed, on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-bench-"))
    workdir.chmod(0o755)
    pg = Postgres(workdir)
    gcs = GcsEmulator(workdir)
    try:
        pg.init()
        pg.start()
        gcs.start()
        yield workdir, pg, gcs
    finally:
        gcs.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def database_uri(pg: Postgres, name: str, template: str | None = None) -> str:
    """A fresh database (a copy of ``template`` when given), as the server's own configuration
    would pass it to MLflow (psycopg2)."""
    return normalize_backend_uri(pg.create_database(name, template))


def load_average(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    """The machine's load around a run, for the figures' caption (``os.getloadavg()`` twice)."""
    return (f"load average (1, 5, 15 min) {', '.join(f'{v:.2f}' for v in before)} before and "
            f"{', '.join(f'{v:.2f}' for v in after)} after")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median_interval(values: list[float], level: float = 0.95, resamples: int = 4000) -> tuple[float, float]:
    """Bootstrap interval of the median: the range the median of such samples falls in."""
    if not values:
        return float("nan"), float("nan")
    rng = random.Random(0)  # the same samples give the same interval
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return medians[int(tail * resamples)], medians[int((1 - tail) * resamples) - 1]
