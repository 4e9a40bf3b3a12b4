"""Building and running the real image for the container tests (Docker engine on this host).

No registry is reachable here: the image builds FROM the debian:*-slim images that
../shared/docker/setup.sh makes, and containers use host networking so they reach the test
services on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.services import ROOT, Missing, free_port, wait_for

IMAGE = os.environ.get("TEST_IMAGE", "mlflow-server:test")
# The deploy workflow tests the image it then pushes: TEST_IMAGE_PREBUILT=1 uses TEST_IMAGE as
# built, with TEST_IMAGE_REVISION its commit.
PREBUILT = os.environ.get("TEST_IMAGE_PREBUILT") == "1"
REVISION = os.environ.get("TEST_IMAGE_REVISION", "test")
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # ryuk's image cannot be pulled here


def docker_available() -> None:
    if shutil.which("docker") is None:
        raise Missing("the docker CLI is not installed (.ci/run runs ../shared/docker/setup.sh)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise Missing("no Docker engine is running (.ci/run runs ../shared/docker/setup.sh)")


def build_image(tag: str = IMAGE) -> str:
    docker_available()
    if PREBUILT:
        inspect(tag)
        return tag
    base = os.environ.get("TEST_BASE_IMAGE", "debian:trixie-slim")
    result = subprocess.run(
        ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
         "--build-arg", "VERSION=test", "--build-arg", "REVISION=test", "-t", tag, str(ROOT)],
        capture_output=True, text=True, timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return tag


def inspect(tag: str) -> dict:
    import json

    out = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def run_in_image(tag: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c", command],
                          capture_output=True, text=True, timeout=120)


@dataclass
class Running:
    """A running container of our image, hardened as in production."""

    container: object
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        out, err = self.container.get_logs()
        return (out or b"").decode(errors="replace") + (err or b"").decode(errors="replace")

    def wait_healthy(self, timeout: float = 90) -> None:
        def healthy():
            self.container.get_wrapped_container().reload()
            if self.container.get_wrapped_container().status == "exited":
                raise RuntimeError("container exited:\n" + self.logs()[-3000:])
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200

        wait_for(healthy, timeout, "container")

    def stop(self, timeout: int = 15) -> int:
        """SIGTERM, as Cloud Run and `docker stop` send it; returns the exit code."""
        wrapped = self.container.get_wrapped_container()
        wrapped.stop(timeout=timeout)
        wrapped.reload()
        return wrapped.attrs["State"]["ExitCode"]

    def remove(self) -> None:
        try:
            self.container.get_wrapped_container().remove(force=True)
        except Exception:  # already gone
            pass


def start_container(tag: str, env: dict[str, str], files: dict[str, Path], port: int | None = None) -> Running:
    """Start the image read-only, all capabilities dropped, no new privileges, /tmp a tmpfs.

    ``files`` maps a path in the container to a host file, mounted read-only (as Cloud Run and
    compose mount secrets).
    """
    from testcontainers.core.container import DockerContainer

    port = port or free_port()
    container = DockerContainer(tag)
    container.with_env("PORT", str(port)).with_env("MLFLOW_HOST", "127.0.0.1")
    for key, value in env.items():
        container.with_env(key, value)
    for target, source in files.items():
        container.with_volume_mapping(str(source), target, "ro")
    container.with_tmpfs_mount("/tmp", "size=512m")
    container.with_kwargs(
        network_mode="host",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    container.start()
    running = Running(container, port)
    started = time.monotonic()
    running.wait_healthy()
    running.startup_seconds = time.monotonic() - started
    return running
