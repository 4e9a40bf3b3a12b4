"""The deploy side: workflow lint and schema, shell scripts, the GCP set-up script against a fake
gcloud, and the deploy workflow's security properties."""

from __future__ import annotations

import os
import re
import subprocess

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
        assert workflow["permissions"] in ({}, {"contents": "read"}), path.name
        for name, job in workflow["jobs"].items():
            perms = job.get("permissions", {})
            if perms.get("id-token") == "write":
                assert name == "deploy" and path.name == "deploy.yml"
            if perms.get("issues") == "write":  # only the rehearsal's one issue
                assert path.name == "mlflow-rehearsal.yml"
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


def deploy_steps() -> list[dict]:
    return load("deploy.yml")["jobs"]["deploy"]["steps"]


def step(name: str) -> dict:
    return next(s for s in deploy_steps() if s.get("name") == name)


def test_the_image_is_built_once_tested_pushed_and_deployed_by_digest():
    names = [s.get("name", s.get("uses", "")) for s in deploy_steps()]
    order = ["build the image", "test that image", "push the tested image",
             "deploy the candidate revision, without traffic", "smoke test the candidate",
             "move all traffic to the candidate"]
    assert [n for n in names if n in order] == order
    assert step("build the image")["run"].count("docker build") == 1
    assert not any("docker build" in s.get("run", "") for s in deploy_steps() if s.get("name") != "build the image")
    tested = step("test that image")
    assert tested["env"]["TEST_IMAGE_PREBUILT"] == "1" and "bash .ci/run -m container" in tested["run"]
    assert tested["env"]["TEST_IMAGE"] == "${{ env.LOCAL_IMAGE }}"
    pushed = step("push the tested image")["run"]
    assert 'docker tag "${LOCAL_IMAGE}"' in pushed and "@sha256:" in pushed and "GITHUB_OUTPUT" in pushed
    candidate = step("deploy the candidate revision, without traffic")
    assert candidate["env"]["IMAGE"] == "${{ steps.push.outputs.image }}"
    assert candidate["run"] == 'scripts/deploy-cloud-run.sh candidate "${IMAGE}"'
    assert step("smoke test the candidate")["run"] == "scripts/deploy-cloud-run.sh smoke-test"
    assert step("move all traffic to the candidate")["run"] == "scripts/deploy-cloud-run.sh promote"


def test_deploy_settings_come_from_repository_variables():
    env = load("deploy.yml")["jobs"]["deploy"]["env"]
    for name in ("GCP_PROJECT", "GCP_PROJECT_NUMBER", "GCP_REGION", "CLOUD_RUN_SERVICE", "CLOUDSQL_INSTANCE",
                 "GCP_RUNTIME_SA", "MLFLOW_PUBLIC_URL"):
        assert env[name] == "${{ vars." + name + " }}"
    assert env["CLOUDSDK_CORE_SHOULD_PROMPT_TO_ENABLE_API"] == "false"


SCRIPTS = [ROOT / ".github" / "workflows" / "deploy.yml", ROOT / "scripts" / "deploy-cloud-run.sh",
           ROOT / "scripts" / "gcp-bootstrap.sh"]


def test_no_flag_that_needs_run_admin_or_appends_or_needs_resource_manager():
    for path in SCRIPTS:
        text = path.read_text()
        # an allUsers binding needs run.admin on every deploy and fails under "Domain restricted sharing"
        assert "--allow-unauthenticated" not in text, path.name
        assert "--add-cloudsql-instances" not in text, path.name  # appends; --set-cloudsql-instances states
        assert "projects describe" not in text, path.name  # needs the Cloud Resource Manager API


def test_current_action_majors_on_node_24():
    minimum = {"actions/checkout": 5, "actions/upload-artifact": 5, "google-github-actions/auth": 3,
               "google-github-actions/setup-gcloud": 3}
    for path in WORKFLOWS:
        for action, major in re.findall(r"uses:\s*([\w-]+/[\w-]+)@[0-9a-f]{40}\s*#\s*v(\d+)", path.read_text()):
            assert int(major) >= minimum[action], f"{path.name}: {action} v{major}"


def test_base_image_is_pinned_by_digest_where_dependabot_finds_it():
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    external = [f for f in froms if not f.startswith("${")]
    assert external and all(re.fullmatch(r"debian:[a-z]+-slim@sha256:[0-9a-f]{64}", f) for f in external), froms
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    for update in config["updates"]:
        assert update["cooldown"]["default-days"] >= 3, update["package-ecosystem"]
