"""scripts/gcp-bootstrap.sh: what it creates and grants, that it converges from any partial
state, and that no secret reaches an argument list or its output. Its state machine runs
against the fake gcloud (tests/fake_gcloud.py); its command lines, all of them, also go through
the real gcloud CLI."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gcp import FakeProject, real_gcloud

pytestmark = pytest.mark.deploy

RUNTIME = "mlflow-runtime@proj-1.iam.gserviceaccount.com"
DEPLOYER = "mlflow-deployer@proj-1.iam.gserviceaccount.com"
SECRETS = ("mlflow-backend-store-uri", "mlflow-artifacts-destination", "mlflow-auth-users",
           "mlflow-smoke-test-password")


@pytest.fixture
def project(tmp_path):
    return FakeProject(tmp_path / "project")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A bootstrap of an empty project: its run, and the state it leaves."""
    project = FakeProject(tmp_path_factory.mktemp("clean") / "project")
    run = project.bootstrap("--yes")
    assert run.returncode == 0, run.stderr
    return run, project.state


def words(call: dict) -> list[str]:
    """A gcloud call's arguments after the bootstrap's common --project P --quiet."""
    args = call["args"]
    return args[3:] if args[:1] == ["--project"] else args


def generated_secrets(state: dict) -> list[str]:
    """Every password the bootstrap generated, as stored."""
    backend = state["secrets"]["mlflow-backend-store-uri"][-1]
    users = state["secrets"]["mlflow-auth-users"][-1]
    found = [backend.split(":")[2].split("@")[0], state["secrets"]["mlflow-smoke-test-password"][-1]]
    found += [line.split(":", 1)[1] for line in users.splitlines() if ":" in line]  # not [role] lines
    return found


def consistent(state: dict) -> dict:
    """The state a bootstrap must end in, checked for its inner consistency, in a comparable form."""
    secrets = state["secrets"]
    backend = secrets["mlflow-backend-store-uri"][-1]
    db_password = re.fullmatch(r"postgresql://mlflow:([A-Za-z0-9]{32})@/mlflow\?host=/cloudsql/proj-1:europe-west1:mlflow-pg",
                               backend).group(1)
    assert state["sql_users"] == {"mlflow": db_password}, "the database user's password is not the secret's"
    smoke = secrets["mlflow-smoke-test-password"][-1]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", smoke)
    users = secrets["mlflow-auth-users"][-1].splitlines()
    assert f"smoke-test:{smoke}" in users and any(line.startswith("admin:") for line in users)
    assert users.index("[viewer]") == users.index(f"smoke-test:{smoke}") - 1
    assert secrets["mlflow-artifacts-destination"][-1] == "gs://proj-1-mlflow-artifacts/artifacts"
    return {"created": sorted(state["created"]), "secrets with a version": sorted(k for k, v in secrets.items() if v),
            "bindings": sorted(map(tuple, state["bindings"])), "instance": state["instance"],
            "providers": state["providers"], "cleanup_policy": state["cleanup_policy"], "service": state["service"]}


def test_bootstrap_asks_before_doing_anything(project):
    run = project.bootstrap()
    assert run.returncode != 0 and "--yes" in run.stderr
    assert run.calls == []
    assert "will make sure these exist" in run.stderr


def test_bootstrap_needs_the_numeric_github_ids(project):
    run = project.bootstrap("--yes", env={"GITHUB_REPOSITORY_ID": "acme/mlflow-server"})
    assert run.returncode != 0 and "numbers" in run.stderr and run.calls == []


def test_bootstrap_creates_everything_with_least_privilege(clean):
    run, state = clean
    for resource in ("artifacts repositories mlflow", "storage buckets gs://proj-1-mlflow-artifacts",
                     "sql instances mlflow-pg", "sql databases mlflow", "sql users mlflow",
                     *(f"secrets {name}" for name in SECRETS),
                     f"iam service-accounts {RUNTIME}", f"iam service-accounts {DEPLOYER}",
                     "iam workload-identity-pools github", "iam workload-identity-pools providers github-oidc"):
        assert resource in state["created"], resource
    consistent(state)

    bucket = next(c["args"] for c in run.calls if words(c)[:3] == ["storage", "buckets", "create"])
    assert "--uniform-bucket-level-access" in bucket and "--public-access-prevention" in bucket
    assert state["instance"] == {"deletion_protection": True, "pitr": True}
    assert state["cleanup_policy"][0]["action"]["type"] == "Keep"
    assert state["cleanup_policy"][0]["mostRecentVersions"]["keepCount"] == 20
    # the service exists before the first deploy, public without an allUsers binding
    assert state["service"] == {"invoker_iam_disabled": True}

    # Workload Identity: GitHub's numeric ids (names can be re-registered by someone else), the
    # deploy workflow on main, in the production environment
    provider = state["providers"]["github-oidc"]
    assert provider["condition"] == (
        "assertion.repository_id == '42' && assertion.repository_owner_id == '7'"
        " && assertion.ref == 'refs/heads/main'"
        " && assertion.workflow_ref == 'acme/mlflow-server/.github/workflows/deploy.yml@refs/heads/main'"
        " && assertion.environment == 'production'")
    assert "attribute.repository_id=assertion.repository_id" in provider["mapping"]

    granted = {tuple(b) for b in state["bindings"]}
    assert {(r, role) for r, m, role in granted if m == f"serviceAccount:{RUNTIME}"} == {
        ("projects proj-1", "roles/cloudsql.client"),
        ("storage buckets gs://proj-1-mlflow-artifacts", "roles/storage.objectAdmin"),
        ("secrets mlflow-backend-store-uri", "roles/secretmanager.secretAccessor"),
        ("secrets mlflow-artifacts-destination", "roles/secretmanager.secretAccessor"),
        ("secrets mlflow-auth-users", "roles/secretmanager.secretAccessor"),
    }
    # run.developer: deploys and moves traffic, cannot change who may invoke a service
    assert {(r, role) for r, m, role in granted if m == f"serviceAccount:{DEPLOYER}"} == {
        ("projects proj-1", "roles/run.developer"),
        ("artifacts repositories mlflow", "roles/artifactregistry.writer"),
        (f"iam service-accounts {RUNTIME}", "roles/iam.serviceAccountUser"),
        ("secrets mlflow-smoke-test-password", "roles/secretmanager.secretAccessor"),
    }
    assert {(r, m, role) for r, m, role in granted if role == "roles/iam.workloadIdentityUser"} == {
        (f"iam service-accounts {DEPLOYER}",
         "principalSet://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/github"
         "/attribute.repository_id/42", "roles/iam.workloadIdentityUser")}
    assert not any(role in ("roles/owner", "roles/editor", "roles/run.admin") for _, _, role in granted)

    # the GitHub variables, as commands to paste; the project number from the pool's name
    assert "gh variable set GCP_PROJECT_NUMBER --repo acme/mlflow-server --body 123456789" in run.stdout
    assert ("gh variable set GCP_WIF_PROVIDER --repo acme/mlflow-server --body "
            "projects/123456789/locations/global/workloadIdentityPools/github/providers/github-oidc") in run.stdout
    assert not any(words(c)[:2] == ["projects", "describe"] for c in run.calls)  # no Resource Manager API


def test_no_secret_in_any_argument_list_or_output(clean):
    run, state = clean
    passwords = generated_secrets(state)
    assert len(passwords) == 4
    shown = run.stdout + run.stderr + "\n".join(" ".join(c["args"]) for c in run.calls)
    for password in passwords:
        assert password not in shown
    # the database password reached Cloud SQL in a request body on curl's standard input
    [create_user] = [c for c in run.calls if c["tool"] == "curl"]
    assert create_user["args"][:2] == ["--config", "-"] and passwords[0] in create_user["stdin"]
    assert not any(words(c)[:3] == ["sql", "users", "create"] for c in run.calls)


def test_second_run_creates_nothing_and_changes_nothing(project, clean):
    assert project.bootstrap("--yes").returncode == 0
    before = project.state
    again = project.bootstrap("--yes")
    assert again.returncode == 0, again.stderr
    after = project.state
    assert consistent(after) == consistent(before) == consistent(clean[1])
    assert after["secrets"] == before["secrets"]  # no new secret version
    assert not [c for c in again.calls if {"create", "create-oidc", "patch"} & set(c["args"])]


def test_bootstrap_converges_after_a_failure_at_any_step(tmp_path, clean):
    """Every step that changes something fails once in turn; the next run ends where a clean run does."""
    _, clean_state = clean
    steps = clean_state["changes"]
    assert steps >= 25

    def fail_then_rerun(step: int):
        project = FakeProject(tmp_path / f"step-{step}")
        failed = project.bootstrap("--yes", env={"FAKE_GCLOUD_FAIL_AT": str(step)})
        rerun = project.bootstrap("--yes")
        return step, failed, rerun, project.state

    with ThreadPoolExecutor(4) as pool:
        for step, failed, rerun, state in pool.map(fail_then_rerun, range(1, steps + 1)):
            assert failed.returncode != 0, f"a failure at step {step} went unnoticed"
            assert rerun.returncode == 0, f"step {step}: {rerun.stderr}"
            assert consistent(state) == consistent(clean_state), f"step {step}"


def test_a_user_without_a_password_secret_is_repaired(project):
    """The state the old script could leave: the database user made, its password never stored."""
    project.edit_state(lambda s: s.update(created=["secrets mlflow-backend-store-uri", "sql users mlflow"],
                                          sql_users={"mlflow": "lost"}, secrets={}, bindings=[], instance={},
                                          providers={}, cleanup_policy=None, service=None, changes=0))
    run = project.bootstrap("--yes")
    assert run.returncode == 0, run.stderr
    consistent(project.state)


def test_users_secret_keeps_the_teams_lines_and_gets_the_smoke_test_line_back(project):
    assert project.bootstrap("--yes").returncode == 0
    hashed = "admin:$2b$12$abcdefghijklmnopqrstuuJ1Zt0mU0V7gk9o7bq3m1i0bq6fZ6n4W"
    project.edit_state(lambda s: s["secrets"]["mlflow-auth-users"].append(f"{hashed}\nbob:bob-pw\n"))
    run = project.bootstrap("--yes")
    assert run.returncode == 0, run.stderr
    users = project.state["secrets"]["mlflow-auth-users"][-1].splitlines()
    smoke = project.state["secrets"]["mlflow-smoke-test-password"][-1]
    # the smoke-test user is a viewer: its password, which the deployer reads, can change nothing
    assert users == [hashed, "bob:bob-pw", "[viewer]", f"smoke-test:{smoke}"]
    assert project.bootstrap("--yes").returncode == 0
    assert project.state["secrets"]["mlflow-auth-users"][-1].splitlines() == users  # converged: no new version


def test_rotating_the_database_password(project):
    assert project.bootstrap("--yes").returncode == 0
    old = project.state["sql_users"]["mlflow"]
    run = project.bootstrap("--yes", "--rotate-database-password")
    assert run.returncode == 0, run.stderr
    state = project.state
    consistent(state)
    assert state["sql_users"]["mlflow"] != old and len(state["secrets"]["mlflow-backend-store-uri"]) == 2
    assert state["sql_users"]["mlflow"] not in run.stdout + run.stderr


def test_every_command_line_is_valid_for_the_real_gcloud(tmp_path, project, clean):
    """All gcloud command lines of a clean run and of a re-run, through gcloud 578's own parser."""
    assert project.bootstrap("--yes").returncode == 0
    calls = clean[0].calls + project.bootstrap("--yes").calls
    commands = [{"argv": c["args"], "stdin": c["stdin"]} for c in calls if c["tool"] == "gcloud"]
    seen = {" ".join(c["argv"][:6]) for c in commands}
    assert len(seen) > 30
    for answer in real_gcloud({"mode": "parse", "commands": commands}, tmp_path):
        # a valid command gets as far as needing an account; an invalid one stops at gcloud's usage error
        assert answer["code"] == 1 and "do not currently have an active account" in answer["error"], answer


def test_the_placeholder_service_is_public_without_an_iam_binding(tmp_path, clean):
    [deploy] = [c["args"] for c in clean[0].calls if words(c)[:2] == ["run", "deploy"]]
    [answer] = real_gcloud({"mode": "run", "commands": [deploy], "service": None,
                            "host": "mlflow-x7hash3q-ew.a.run.app"}, tmp_path)
    assert answer["sent"] == "create", answer
    annotations = answer["service"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/invoker-iam-disabled"] == "True"
    assert annotations["run.googleapis.com/ingress"] == "internal"  # nothing public until the first deploy
    assert answer["service"]["spec"]["template"]["spec"]["serviceAccountName"] == RUNTIME


def test_the_iap_variant_turns_iap_on_and_starts_the_roles_with_one_admin(project, tmp_path):
    assert project.bootstrap("--yes", "--iap").returncode != 0  # IAP_ADMIN is required
    run = project.bootstrap("--yes", "--iap", env={"IAP_ADMIN": "lead@example.com"})
    assert run.returncode == 0, run.stderr
    state = project.state
    assert state["service"]["iap_enabled"] is True and state["service"]["invoker_iam_disabled"] is True
    assert state["secrets"]["mlflow-iap-roles"] == ["[admin]\nlead@example.com\n"]
    assert ["secrets mlflow-iap-roles", f"serviceAccount:{RUNTIME}", "roles/secretmanager.secretAccessor"] in state["bindings"]
    assert ["iap web cloud-run/mlflow", "user:lead@example.com", "roles/iap.httpsResourceAccessor"] in state["bindings"]
    assert "gh variable set MLFLOW_IAP --repo acme/mlflow-server --body on" in run.stdout
    # the roles are the team's from then on: a re-run does not rewrite them
    project.edit_state(lambda s: s["secrets"]["mlflow-iap-roles"].append("[admin]\nlead@example.com\n[editor]\n@example.com\n"))
    again = project.bootstrap("--yes", "--iap", env={"IAP_ADMIN": "lead@example.com"})
    assert again.returncode == 0 and len(project.state["secrets"]["mlflow-iap-roles"]) == 2
    commands = [{"argv": c["args"], "stdin": c["stdin"]} for c in run.calls + again.calls if c["tool"] == "gcloud"]
    assert any("--iap" in c["argv"] for c in commands) and any(c["argv"][3:5] == ["iap", "web"] for c in commands)
    for answer in real_gcloud({"mode": "parse", "commands": commands}, tmp_path):
        assert answer["code"] == 1 and "do not currently have an active account" in answer["error"], answer
