"""The servers a benchmark compares, started the same way each time on a free port.

* ``ours``: ``entry-point.sh`` (gunicorn + our middleware), as the container runs it;
* ``noauth``: the same gunicorn and settings serving the same app without the auth layer
  (``bench/noauth_wsgi.py``), to price the auth layer alone;
* ``floor``: the same gunicorn and settings serving a WSGI app that only runs the metric write's
  SQL (``bench/floor_wsgi.py``): the floor of ``log_metric`` and ``log_batch``;
* ``baseline``: MLflow's own ``mlflow server`` CLI (uvicorn + FastAPI + its job runner), same
  MLflow, same Postgres, same artifact destination, same number of workers.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import AUTH_HEADER, ROOT, USER
from tests.services import base_env, free_port, proc_kib, process_tree

WORKERS = 2

# Ours (and the floor and noauth apps, on our gunicorn settings) run on the image's lock: the
# packages we ship, installed as the image installs them (scripts/setup-venv.sh, as
# scripts/run-local.sh makes it). `mlflow server` runs on the development venv, which holds
# `pip install mlflow==<pin>` with all of mlflow's dependencies, as its users install it.
SHIPPED_VENV = ROOT / ".venv-server"


@functools.cache
def shipped_python() -> str:
    """The image lock's python, the venv made (a minute) or checked once per process, with our
    package's bytecode and the internals verdict the image build makes (server/borrowed/verdict.py),
    so ours starts as the image does."""
    subprocess.run([str(ROOT / "scripts" / "setup-venv.sh")], check=True,
                   env={**os.environ, "VENV": str(SHIPPED_VENV), "RUNTIME_ONLY": "1"})
    python = str(SHIPPED_VENV / "bin" / "python")
    subprocess.run([str(ROOT / "scripts" / "as-built.sh"), python], check=True)
    return python


class Running:
    def __init__(self, kind: str, proc: subprocess.Popen, port: int, started: float, log: Path):
        self.kind, self.proc, self.port, self.started, self.log = kind, proc, port, started, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return USER if self.kind == "ours" else None

    def wait_first_api_ok(self, timeout: float = 180) -> float:
        """Seconds from process start to the first (authenticated) API call answered 200."""
        headers = {"Authorization": AUTH_HEADER} if self.auth else {}
        req = urllib.request.Request(f"{self.url}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited:\n{self.log.read_text()[-2000:]}")
            try:
                if urllib.request.urlopen(req, timeout=5).status == 200:
                    return time.monotonic() - self.started
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"{self.kind} did not answer within {timeout}s")

    def pids(self) -> set[int]:
        return set(process_tree(self.proc.pid))

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by every process of the server."""
        ticks = 0
        for pid in process_tree(self.proc.pid):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime: stat fields 14 and 15
            except (OSError, IndexError, ValueError):
                pass  # a process that just exited
        return ticks / os.sysconf("SC_CLK_TCK")

    def requests_served(self, request: str = "POST /api/2.0/mlflow/runs/log-metric 200") -> int:
        """Successful requests of one kind so far, counted in our JSON access log."""
        return self.log.read_bytes().count(request.encode())

    def pss_mb(self) -> float:
        return proc_kib(process_tree(self.proc.pid), "smaps_rollup", "Pss") / 1024

    def own_mb_by_role(self) -> dict[str, list[float]]:
        """Each process's own memory (USS: its private pages, MB) by its part in our server:
        gunicorn's master, its web workers, and the job runner, which is forked into a process
        group of its own (server/jobs/runner.py)."""
        master = self.proc.pid
        roles: dict[str, list[float]] = {"master": [], "workers": [], "job runner": []}
        for pid in process_tree(master):
            try:
                role = "master" if pid == master else "job runner" if os.getpgid(pid) == pid else "workers"
            except OSError:
                continue  # a process that just exited
            own = proc_kib([pid], "smaps_rollup", "Private_Clean") + proc_kib([pid], "smaps_rollup", "Private_Dirty")
            roles[role].append(own / 1024)
        return roles

    def rss_mb(self) -> float:
        return proc_kib(process_tree(self.proc.pid), "status", "VmRSS") / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start(kind: str, backend_uri: str, destination: str, workdir: Path, extra_env: dict | None = None,
          users: str | None = None, app_root: Path = ROOT) -> Running:
    """Start one server; ``app_root`` is the checkout whose entry-point.sh runs ours (bench.ab)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{kind}-{port}.log"
    env = base_env({"TMPDIR": str(workdir), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                    **(extra_env or {})})
    if kind in ("ours", "noauth", "floor"):
        env.update({"PYTHON": shipped_python(), "PORT": str(port), "MLFLOW_HOST": "127.0.0.1",
                    "MLFLOW_WORKERS": str(WORKERS), "MLFLOW_BACKEND_STORE_URI": backend_uri,
                    "MLFLOW_ARTIFACTS_DESTINATION": destination, "MLFLOW_AUTH_USERS": users or ":".join(USER),
                    "MLFLOW_SECRETS_DIR": "", "MLFLOW_AUTH_MAX_FAILURES": "1000000"})
        args = [str(app_root / "entry-point.sh")]
        if kind in ("noauth", "floor"):
            env["PYTHONPATH"] = str(app_root)
            args += [f"bench.{kind}_wsgi:application"]
        kind_label = kind
    else:
        args = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(WORKERS), "--backend-store-uri", backend_uri, "--artifacts-destination",
                destination, "--serve-artifacts"]
        kind_label = "baseline"
    started = time.monotonic()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=workdir)
    return Running(kind_label, proc, port, started, log)
