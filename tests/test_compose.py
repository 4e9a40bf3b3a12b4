"""docker-compose.yml: valid, and its mlflow service runs the real image with compose secrets."""

from __future__ import annotations

import os
import subprocess
import urllib.request

import pytest

from tests.conftest import need
from tests.container import build_image
from tests.services import ROOT, free_port, wait_for
from tests.test_training_flow import check_flow

pytestmark = pytest.mark.container


def compose(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_secrets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    result = subprocess.run([str(ROOT / "scripts" / "init-local-secrets.sh"), str(folder)],
                            capture_output=True, text=True, check=True)
    return folder, result.stderr


def test_init_script_makes_readable_secrets_and_never_prints_them(local_secrets):
    folder, output = local_secrets
    names = {"postgres_password", "mlflow_backend_store_uri", "mlflow_auth_users",
             "aws_access_key_id", "aws_secret_access_key"}
    assert names <= {p.name for p in folder.iterdir()}
    for name in names:
        path = folder / name
        assert path.stat().st_mode & 0o004, f"{name} must be readable by the container's user"
        assert path.read_text().strip() not in output
    assert "login.txt" in output
    pg = (folder / "postgres_password").read_text().strip()
    assert pg in (folder / "mlflow_backend_store_uri").read_text()
    again = subprocess.run([str(ROOT / "scripts" / "init-local-secrets.sh"), str(folder)],
                           capture_output=True, text=True, check=True)
    assert "already exist" in again.stderr and (folder / "postgres_password").read_text().strip() == pg


def test_compose_file_is_valid_and_has_no_password(local_secrets):
    need(build_image)
    folder, _ = local_secrets
    result = compose(["config", "--quiet"], {"MLFLOW_SECRETS_DIR": str(folder)})
    assert result.returncode == 0, result.stderr
    text = (ROOT / "docker-compose.yml").read_text()
    for path in folder.iterdir():
        assert path.read_text().strip() not in text
    rendered = compose(["config", "--format", "json"], {"MLFLOW_SECRETS_DIR": str(folder)})
    import json

    services = json.loads(rendered.stdout)["services"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["read_only"] is True and services["mlflow"]["cap_drop"] == ["ALL"]
    for name in ("postgres", "minio"):
        assert "healthcheck" in services[name]


def test_compose_mlflow_service_runs_the_training_flow(tmp_path, postgres, s3):
    image = need(build_image)
    folder = tmp_path / "secrets"
    subprocess.run([str(ROOT / "scripts" / "init-local-secrets.sh"), str(folder)], check=True, capture_output=True)
    # point the generated secrets at the test's Postgres and S3 endpoint
    (folder / "mlflow_backend_store_uri").write_text(postgres.create_database("mlflow_compose") + "\n")
    (folder / "aws_access_key_id").write_text(s3.access_key + "\n")
    (folder / "aws_secret_access_key").write_text(s3.secret_key + "\n")
    s3.client().create_bucket(Bucket="mlflow")
    user, password = (folder / "mlflow_auth_users").read_text().strip().split(":", 1)
    port = free_port()
    env = {"MLFLOW_SECRETS_DIR": str(folder), "MLFLOW_IMAGE": image, "TEST_PORT": str(port),
           "MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "COMPOSE_PROJECT_NAME": f"mlflowtest{port}"}
    files = ["-f", "docker-compose.yml", "-f", "tests/compose.test.yml"]
    up = compose([*files, "up", "--detach", "--no-build", "--no-deps", "mlflow"], env)
    assert up.returncode == 0, up.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 90, "compose mlflow")

        class Target:
            pass

        target = Target()
        target.url = url
        check_flow(target, (user, password), lambda: [
            o["Key"] for o in s3.client().list_objects_v2(Bucket="mlflow").get("Contents", [])])
        logs = compose([*files, "logs", "mlflow"], env).stdout
        assert password not in logs and s3.secret_key not in logs
    finally:
        down = compose([*files, "down", "--volumes", "--timeout", "15"], env)
        assert down.returncode == 0, down.stderr
