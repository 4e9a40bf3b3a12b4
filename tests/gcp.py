"""Running scripts/gcp-bootstrap.sh and scripts/deploy-cloud-run.sh against the fake gcloud
(tests/fake_gcloud.py), and their command lines through the real gcloud (tests/gcloud_sdk.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import ROOT, Missing

SHARED_GCLOUD = ROOT.parent / "shared" / "gcloud" / "gcloud"
HARNESS = ROOT / "tests" / "gcloud_sdk.py"
FAKE = ROOT / "tests" / "fake_gcloud.py"
PROJECT = {"GCP_PROJECT": "proj-1", "GITHUB_REPOSITORY": "acme/mlflow-server", "GITHUB_REPOSITORY_ID": "42",
           "GITHUB_REPOSITORY_OWNER_ID": "7", "GCP_REGION": "europe-west1"}


def sdk_lib() -> Path:
    """The lib folder of a real Google Cloud SDK: this machine's offline copy, else the installed gcloud."""
    if SHARED_GCLOUD.exists():
        home = Path(os.environ.get("GCLOUD_HOME", "/tmp/google-cloud-sdk-578"))
        if not (home / "gcloud" / "bin" / "gcloud").exists():
            subprocess.run([str(SHARED_GCLOUD), "version"], capture_output=True, timeout=300)  # unpacks it
        lib = home / "gcloud" / "lib"
    elif shutil.which("gcloud"):
        lib = Path(shutil.which("gcloud")).resolve().parent.parent / "lib"
    else:
        raise Missing("no Google Cloud SDK (../shared/gcloud on this machine, gcloud on GitHub's runners)")
    if not (lib / "googlecloudsdk").is_dir():
        raise Missing(f"no googlecloudsdk package under {lib}")
    return lib


def real_gcloud(request: dict, workdir: Path) -> list[dict]:
    """Send a request to tests/gcloud_sdk.py (the real gcloud in its own interpreter, in workdir)."""
    answer = workdir / "gcloud-answer.json"
    result = subprocess.run([sys.executable, str(HARNESS), str(answer)], input=json.dumps(request), text=True,
                            capture_output=True, timeout=600, env={**os.environ, "GCLOUD_SDK_LIB": str(sdk_lib())},
                            cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(answer.read_text())


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[dict] = field(default_factory=list)


class FakeProject:
    """A project as the fake gcloud remembers it, and the scripts run against it."""

    def __init__(self, workdir: Path, real_run_host: str | None = None):
        self.dir = workdir
        self.bin = workdir / "bin"
        self.state_dir = workdir / "state"
        self.bin.mkdir(parents=True)
        self.state_dir.mkdir()
        for tool in ("gcloud", "curl"):
            shim = self.bin / tool
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {tool} "$@"\n')
            shim.chmod(0o755)
        self.env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(workdir), "FAKE_GCLOUD_STATE": str(self.state_dir),
                    **PROJECT}
        if real_run_host:
            self.env.update(FAKE_GCLOUD_REAL_RUN=str(HARNESS), FAKE_RUN_HOST=real_run_host,
                            GCLOUD_SDK_LIB=str(sdk_lib()))

    @property
    def state(self) -> dict:
        path = self.state_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def edit_state(self, change) -> None:
        state = self.state
        change(state)
        (self.state_dir / "state.json").write_text(json.dumps(state))

    def run(self, script: str, *args: str, env: dict | None = None, stdin: str | None = None) -> Run:
        calls_path = self.state_dir / "calls.jsonl"
        calls_path.unlink(missing_ok=True)
        if (self.state_dir / "state.json").exists():
            self.edit_state(lambda s: s.update(changes=0))  # FAKE_GCLOUD_FAIL_AT counts from this run's start
        result = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env={**self.env, **(env or {})},
                                capture_output=True, text=True, input=stdin, timeout=600)
        calls = [json.loads(line) for line in calls_path.read_text().splitlines()] if calls_path.exists() else []
        return Run(result.returncode, result.stdout, result.stderr, calls)

    def bootstrap(self, *args: str, **kwargs) -> Run:
        return self.run("gcp-bootstrap.sh", *args, **kwargs)
