"""The deploy side: workflow lint and schema, shell scripts, the GCP set-up script against a fake
gcloud, and the deploy workflow's security properties."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest
import yaml

from tests.services import ROOT, VENV_BIN

pytestmark = pytest.mark.deploy

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SHELL_SCRIPTS = [ROOT / "entry-point.sh", ROOT / ".ci" / "run", *sorted((ROOT / "scripts").glob("*.sh"))]
BOOTSTRAP = ROOT / "scripts" / "gcp-bootstrap.sh"


def tool(name: str) -> str:
    path = VENV_BIN / name
    assert path.exists(), f"{name} is not installed in the test venv (requirements-dev.txt)"
    return str(path)


def test_workflows_pass_actionlint():
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # actionlint runs shellcheck on run: blocks
    result = subprocess.run([tool("actionlint"), *map(str, WORKFLOWS)], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(WORKFLOWS) >= 2


def test_workflows_and_dependabot_match_their_schemas():
    for schema, files in (("vendor.github-workflows", WORKFLOWS),
                          ("vendor.dependabot", [ROOT / ".github" / "dependabot.yml"])):
        result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, *map(str, files)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_covers_pip_docker_and_actions():
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in config["updates"]} >= {"pip", "docker", "github-actions"}


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_pass_shellcheck(script):
    result = subprocess.run([tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# ---------------------------------------------------------------- the deploy workflow

def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def steps_of(workflow: dict):
    for job in workflow["jobs"].values():
        yield from job.get("steps", [])


def test_every_action_is_pinned_by_commit_sha_with_its_version():
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            match = re.search(r"uses:\s*([^\s#]+)(.*)", line)
            if not match or match.group(1).startswith("./"):
                continue
            ref = match.group(1).split("@", 1)[1]
            assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{path.name}: {line.strip()}"
            assert re.search(r"#\s*v\d", match.group(2)), f"{path.name}: version comment missing: {line.strip()}"


def test_no_service_account_key_anywhere():
    for path in WORKFLOWS:
        text = path.read_text()
        assert "credentials_json" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text
        for step in steps_of(yaml.safe_load(text)):
            if "google-github-actions/auth" in step.get("uses", ""):
                assert set(step["with"]) == {"workload_identity_provider", "service_account"}


def test_permissions_are_least():
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        assert workflow["permissions"] == {"contents": "read"}, path.name
        for name, job in workflow["jobs"].items():
            perms = job.get("permissions", {})
            if perms.get("id-token") == "write":
                assert name == "deploy" and path.name == "deploy.yml"
            assert set(perms.values()) <= {"read", "write"} and perms.get("contents", "read") == "read"


def test_deploy_runs_after_tests_with_a_concurrency_group():
    workflow = load("deploy.yml")
    assert workflow[True]["push"]["branches"] == ["main"]  # YAML reads `on:` as True
    assert workflow["concurrency"]["cancel-in-progress"] is False and workflow["concurrency"]["group"]
    assert workflow["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert workflow["jobs"]["deploy"]["needs"] == "ci"
    ci = load("ci.yml")
    assert "workflow_call" in ci[True] and "pull_request" in ci[True]
    assert any("bash .ci/run" in s.get("run", "") for s in steps_of(ci))


def deploy_script() -> str:
    return "\n".join(s.get("run", "") for s in steps_of(load("deploy.yml")))


def test_image_is_tagged_with_the_commit_sha_and_deployed_as_is():
    workflow = load("deploy.yml")
    image = workflow["jobs"]["deploy"]["env"]["IMAGE"]
    assert image.endswith(":${{ github.sha }}") and "-docker.pkg.dev/" in image
    script = deploy_script()
    assert '--tag "${IMAGE}"' in script and 'docker push "${IMAGE}"' in script
    assert '--image "${IMAGE}"' in script


def test_secrets_are_mounted_as_files_not_env_values():
    script = deploy_script()
    mounts = re.search(r'--set-secrets "([^"]+)"', script).group(1).split(",")
    assert len(mounts) == 3
    for mount in mounts:
        path, secret = mount.split("=", 1)
        assert path.startswith("/secrets/") and secret.endswith(":latest"), mount
    folders = [m.split("=")[0].rsplit("/", 1)[0] for m in mounts]
    assert len(set(folders)) == 3  # Cloud Run mounts one secret per folder
    for setting in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_AUTH_USERS"):
        assert f"{setting}_FILE=/secrets/" in script
    assert "--update-secrets" not in script
    assert "--add-cloudsql-instances" in script and "--service-account" in script


def test_deploy_serves_http2_end_to_end_for_large_artifacts():
    script = deploy_script()
    assert "--use-http2" in script and "MLFLOW_HTTP2_CLEARTEXT=both" in script
    assert "FORWARDED_ALLOW_IPS=*" in script  # h2c is served to trusted peers only
    assert "--timeout 3600" in script


def test_smoke_test_gates_the_traffic():
    steps = [s.get("name", "") for s in load("deploy.yml")["jobs"]["deploy"]["steps"]]
    assert steps.index("smoke test the new revision") < steps.index("move traffic to the new revision")
    script = deploy_script()
    assert "--no-traffic" in script and "/health" in script and "--user" in script
    assert "::add-mask::" in script


# ---------------------------------------------------------------- the set-up script, fake gcloud

FAKE_GCLOUD = r'''#!PYTHON
"""A stand-in for gcloud: records every call, remembers what was created."""
import json, os, sys
state_dir = os.environ["FAKE_GCLOUD_STATE"]
state_path = os.path.join(state_dir, "state.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {"created": [], "secrets": {}}
args = sys.argv[1:]
project = None
words = []
i = 0
while i < len(args):
    a = args[i]
    if a == "--project":
        project = args[i + 1]; i += 2; continue
    if a == "--quiet":
        i += 1; continue
    words.append(a); i += 1
stdin = sys.stdin.read() if "--data-file=-" in words else None
with open(os.path.join(state_dir, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"args": words, "stdin_len": len(stdin) if stdin is not None else None}) + "\n")

def key(verb):
    at = words.index(verb)
    group = [w for w in words[:at] if not w.startswith("-")]
    name = words[at + 1]
    if group == ["iam", "service-accounts"] and "@" not in name:
        name = f"{name}@{project}.iam.gserviceaccount.com"
    return " ".join(group + [name])

if words[:2] == ["projects", "describe"]:
    print("123456789"); sys.exit(0)
if "describe" in words:
    sys.exit(0 if key("describe") in state["created"] else 1)
for verb in ("create", "create-oidc"):
    if verb in words:
        state["created"].append(key(verb))
if words[:3] == ["secrets", "versions", "add"]:
    state["secrets"].setdefault(words[3], []).append(stdin)
json.dump(state, open(state_path, "w"))
'''


@pytest.fixture
def fake_gcloud(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcloud = bindir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("PYTHON", sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    state = tmp_path / "state"
    state.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_GCLOUD_STATE": str(state),
           "GCP_PROJECT": "proj-1", "GITHUB_REPOSITORY": "acme/mlflow-server", "GCP_REGION": "europe-west1"}

    def run(*args: str, stdin: str | None = None):
        result = subprocess.run(["bash", str(BOOTSTRAP), *args], env=env, capture_output=True, text=True,
                                input=stdin, timeout=120)
        calls_path = state / "calls.jsonl"
        calls = [json.loads(line)["args"] for line in calls_path.read_text().splitlines()] if calls_path.exists() else []
        calls_path.unlink(missing_ok=True)
        return result, calls

    run.state = state
    return run


def bindings(calls: list[list[str]]) -> set[tuple[str, str, str]]:
    found = set()
    for call in calls:
        if "add-iam-policy-binding" not in call:
            continue
        at = call.index("add-iam-policy-binding")
        resource = " ".join([*call[:at], call[at + 1]])
        member = call[call.index("--member") + 1]
        role = call[call.index("--role") + 1]
        found.add((resource, member, role))
    return found


def test_bootstrap_asks_before_doing_anything(fake_gcloud):
    result, calls = fake_gcloud()
    assert result.returncode != 0 and "--yes" in result.stderr
    assert calls == []
    assert "will make sure these exist" in result.stderr


def test_bootstrap_creates_everything_with_least_privilege_then_nothing(fake_gcloud):
    first, calls = fake_gcloud("--yes")
    assert first.returncode == 0, first.stderr
    created = json.loads((fake_gcloud.state / "state.json").read_text())["created"]
    runtime = "mlflow-runtime@proj-1.iam.gserviceaccount.com"
    deployer = "mlflow-deployer@proj-1.iam.gserviceaccount.com"
    for resource in ("artifacts repositories mlflow", "storage buckets gs://proj-1-mlflow-artifacts",
                     "sql instances mlflow-pg", "sql databases mlflow", "sql users mlflow",
                     "secrets mlflow-backend-store-uri", "secrets mlflow-artifacts-destination",
                     "secrets mlflow-auth-users", "secrets mlflow-smoke-test-password",
                     f"iam service-accounts {runtime}", f"iam service-accounts {deployer}",
                     "iam workload-identity-pools github", "iam workload-identity-pools providers github-oidc"):
        assert resource in created, resource

    bucket_call = next(c for c in calls if c[:3] == ["storage", "buckets", "create"])
    assert "--uniform-bucket-level-access" in bucket_call and "--public-access-prevention" in bucket_call
    provider = next(c for c in calls if "create-oidc" in c)
    condition = provider[provider.index("--attribute-condition") + 1]
    assert "assertion.repository == 'acme/mlflow-server'" in condition and "refs/heads/main" in condition

    granted = bindings(calls)
    runtime_roles = {(r, role) for r, m, role in granted if m == f"serviceAccount:{runtime}"}
    assert runtime_roles == {
        ("projects proj-1", "roles/cloudsql.client"),
        ("storage buckets gs://proj-1-mlflow-artifacts", "roles/storage.objectAdmin"),
        ("secrets mlflow-backend-store-uri", "roles/secretmanager.secretAccessor"),
        ("secrets mlflow-artifacts-destination", "roles/secretmanager.secretAccessor"),
        ("secrets mlflow-auth-users", "roles/secretmanager.secretAccessor"),
    }
    deployer_roles = {(r, role) for r, m, role in granted if m == f"serviceAccount:{deployer}"}
    assert deployer_roles == {
        ("projects proj-1", "roles/run.admin"),
        ("artifacts repositories mlflow", "roles/artifactregistry.writer"),
        (f"iam service-accounts {runtime}", "roles/iam.serviceAccountUser"),
        ("secrets mlflow-smoke-test-password", "roles/secretmanager.secretAccessor"),
    }
    wif = {(r, m, role) for r, m, role in granted if role == "roles/iam.workloadIdentityUser"}
    assert wif == {(f"iam service-accounts {deployer}",
                    "principalSet://iam.googleapis.com/projects/123456789/locations/global/"
                    "workloadIdentityPools/github/attribute.repository/acme/mlflow-server",
                    "roles/iam.workloadIdentityUser")}
    assert not any(role in ("roles/owner", "roles/editor") for _, _, role in granted)

    # generated passwords went to Secret Manager through stdin, and were never printed
    secrets = json.loads((fake_gcloud.state / "state.json").read_text())["secrets"]
    uri = secrets["mlflow-backend-store-uri"][0]
    assert uri.startswith("postgresql://mlflow:") and "?host=/cloudsql/proj-1:europe-west1:mlflow-pg" in uri
    password = uri.split(":")[2].split("@")[0]
    users = secrets["mlflow-auth-users"][0]
    smoke = secrets["mlflow-smoke-test-password"][0]
    assert f"smoke-test:{smoke}" in users
    for value in (password, smoke, users.split("\n")[0].split(":", 1)[1]):
        assert len(value) >= 24 and value not in first.stdout + first.stderr
    assert not any(password in " ".join(c) for c in calls if c[:3] != ["sql", "users", "create"])
    assert "GCP_WIF_PROVIDER=projects/123456789/" in first.stdout

    second, calls_again = fake_gcloud("--yes")
    assert second.returncode == 0, second.stderr
    assert not [c for c in calls_again if "create" in c or "create-oidc" in c or c[:3] == ["secrets", "versions", "add"]]
    assert bindings(calls_again) == granted  # re-stating a binding is a no-op in IAM
