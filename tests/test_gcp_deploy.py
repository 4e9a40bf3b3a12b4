"""scripts/deploy-cloud-run.sh, as the deploy workflow runs it, with every ``gcloud run`` command
carried out by the real gcloud CLI (578.0.0) against a simulated Cloud Run service: what each
deploy would send is read from gcloud's own request. The smoke test runs against our real server,
started with the environment the deploy sends, reached under the candidate's host name."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.conftest import gcs_server_config
from tests.gcp import FakeProject, real_gcloud
from tests.services import ROOT, Server

pytestmark = pytest.mark.deploy

IMAGE = "europe-west1-docker.pkg.dev/proj-1/mlflow/mlflow-server@sha256:" + "ab" * 32
NEXT_IMAGE = "europe-west1-docker.pkg.dev/proj-1/mlflow/mlflow-server@sha256:" + "cd" * 32
SETTINGS = {"GCP_PROJECT_NUMBER": "123456789", "CLOUD_RUN_SERVICE": "mlflow",
            "CLOUDSQL_INSTANCE": "proj-1:europe-west1:mlflow-pg",
            "GCP_RUNTIME_SA": "mlflow-runtime@proj-1.iam.gserviceaccount.com", "GITHUB_SHA": "0123456789abcdef"}
# the two forms Cloud Run reports a service's URL in
HOSTS = {"hash": "mlflow-x7hash3q-ew.a.run.app", "deterministic": "mlflow-123456789.europe-west1.run.app"}


def bootstrapped(workdir, host: str) -> FakeProject:
    """A project after scripts/gcp-bootstrap.sh, its Cloud Run service created by the real gcloud."""
    project = FakeProject(workdir, real_run_host=host)
    run = project.bootstrap("--yes")
    assert run.returncode == 0, run.stderr
    assert project.state["run_service"]["metadata"]["annotations"]["run.googleapis.com/invoker-iam-disabled"] == "True"
    project.env.update(SETTINGS)
    return project


def traffic(service: dict) -> list[dict]:
    return service["spec"].get("traffic", [])


def env_of(service: dict) -> dict[str, str]:
    [container] = service["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def deploy(project: FakeProject, *args: str):
    run = project.run("deploy-cloud-run.sh", *args)
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture
def project(tmp_path):
    return bootstrapped(tmp_path / "project", HOSTS["hash"])


def test_first_deploy_sends_a_candidate_without_traffic(project):
    placeholder = project.state["run_service"]["spec"]["template"]["metadata"]["name"]
    deploy(project, "candidate", IMAGE)
    sent = project.state["sent"][-1]
    assert sent["verb"] == "replace"  # the service exists from the bootstrap: no --no-traffic refusal
    service = sent["service"]
    template = service["spec"]["template"]
    revision = template["metadata"]["name"]
    # traffic stays where it was; the candidate tag is the only tag
    assert traffic(service) == [{"percent": 100, "revisionName": placeholder},
                                {"revisionName": revision, "tag": "candidate"}]
    [container] = template["spec"]["containers"]
    assert container["image"] == IMAGE
    # secrets as files, one per folder, read through NAME_FILE variables
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m["mountPath"].startswith("/secrets")}
    assert set(mounts) == {"/secrets/backend", "/secrets/artifacts", "/secrets/users"}
    volumes = {v["name"]: v["secret"] for v in template["spec"]["volumes"] if "secret" in v}
    assert {volumes[mounts[path]]["secretName"] for path in mounts} == {
        "mlflow-backend-store-uri", "mlflow-artifacts-destination", "mlflow-auth-users"}
    env = env_of(service)
    assert env["MLFLOW_BACKEND_STORE_URI_FILE"] == "/secrets/backend/uri"
    assert env["MLFLOW_AUTH_USERS_FILE"] == "/secrets/users/htpasswd"
    assert not any("postgresql://" in value for value in env.values())
    assert env["FORWARDED_ALLOW_IPS"] == "*" and env["MLFLOW_HTTP2_CLEARTEXT"] == "both"
    # HTTP/2 end to end
    assert container["ports"] == [{"containerPort": 8080, "name": "h2c"}]
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cloudsql-instances"] == "proj-1:europe-west1:mlflow-pg"
    assert annotations["run.googleapis.com/cpu-throttling"] == "False"
    assert annotations["autoscaling.knative.dev/maxScale"] == "3"
    assert "autoscaling.knative.dev/minScale" not in annotations  # a candidate keeps no instance up
    service_annotations = service["metadata"]["annotations"]
    assert service_annotations["run.googleapis.com/minScale"] == "1"  # one instance of the serving revision
    assert service_annotations["run.googleapis.com/ingress"] == "all"
    # still public through the bootstrap's setting, which the deployer cannot change
    assert service_annotations["run.googleapis.com/invoker-iam-disabled"] == "True"
    assert template["spec"]["timeoutSeconds"] == 3600 and template["spec"]["serviceAccountName"] == SETTINGS["GCP_RUNTIME_SA"]


def test_the_iap_variant_gives_the_server_its_audience_and_roles_and_keeps_iap_on(project):
    # an operator turned IAP on once (docs/deploy.md); the deployer's deploys keep it
    project.edit_state(lambda s: s["run_service"]["metadata"]["annotations"].update(
        {"run.googleapis.com/iap-enabled": "true"}))
    project.env["MLFLOW_IAP"] = "on"
    deploy(project, "candidate", IMAGE)
    service = project.state["sent"][-1]["service"]
    assert service["metadata"]["annotations"]["run.googleapis.com/iap-enabled"] == "true"
    env = env_of(service)
    assert env["MLFLOW_IAP_AUDIENCE"] == "/projects/123456789/locations/europe-west1/services/mlflow"
    assert env["MLFLOW_IAP_ROLES_FILE"] == "/secrets/iap/roles"
    template = service["spec"]["template"]
    [container] = template["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["secret"]["secretName"] for v in template["spec"]["volumes"] if "secret" in v}
    assert volumes[mounts["/secrets/iap"]] == "mlflow-iap-roles"


@pytest.mark.parametrize("url_form", sorted(HOSTS))
def test_the_server_accepts_the_candidates_host_name_and_the_smoke_test_passes(url_form, tmp_path, postgres, gcs):
    project = bootstrapped(tmp_path / "project", HOSTS[url_form])
    deploy(project, "candidate", IMAGE)
    sent_env = env_of(project.state["sent"][-1]["service"])
    candidate_url = next(t["url"] for t in project.state["run_service"]["status"]["traffic"] if t.get("tag") == "candidate")
    assert candidate_url.endswith(project.env["FAKE_RUN_HOST"])

    # our server, with the environment the deploy sends and the users file the bootstrap wrote
    env, secrets = gcs_server_config(postgres, gcs, f"mlflow_deploy_{url_form}")
    env.update({k: v for k, v in sent_env.items() if not k.endswith("_FILE") and not k.startswith("MLFLOW_SQLALCHEMY")})
    secrets["mlflow_auth_users"] = project.state["secrets"]["mlflow-auth-users"][-1]
    server = Server(tmp_path / "server", env, secrets).start()
    try:
        # curl reaches it under the candidate's host name (https → http, any host → this server)
        (project.bin / "curl").write_text(
            "#!/bin/bash\nargs=()\nfor a in \"$@\"; do case $a in https://*) a=\"http://${a#https://}\";; esac; "
            f"args+=(\"$a\"); done\nexec /usr/bin/curl --connect-to ::127.0.0.1:{server.port} \"${{args[@]}}\"\n")
        run = project.run("deploy-cloud-run.sh", "smoke-test")
        assert run.returncode == 0, run.stderr + server.logs()[-3000:]
        assert "smoke test passed" in run.stderr
        password = project.state["secrets"]["mlflow-smoke-test-password"][-1]
        assert password not in run.stdout + run.stderr + json.dumps(run.calls)

        if url_form != "hash":
            return
        # a wrong smoke password is a failed smoke test
        project.edit_state(lambda s: s["secrets"]["mlflow-smoke-test-password"].append("wrong-password"))
        failed = project.run("deploy-cloud-run.sh", "smoke-test")
        assert failed.returncode != 0 and "cannot list experiments" in failed.stderr
    finally:
        server.stop()


def test_promote_then_the_next_deploy_moves_the_candidate_tag(project):
    placeholder = project.state["run_service"]["spec"]["template"]["metadata"]["name"]
    # a tag an older deploy left (one per commit)
    project.edit_state(lambda s: s["run_service"]["spec"]["traffic"].append(
        {"revisionName": placeholder, "tag": "sha-0123456789abcd"}))
    deploy(project, "candidate", IMAGE)
    first = project.state["sent"][-1]["service"]["spec"]["template"]["metadata"]["name"]
    deploy(project, "promote")
    promoted = project.state["sent"][-1]
    assert promoted["argv"][promoted["argv"].index("update-traffic") - 2:][:2] == ["run", "services"]
    assert traffic(promoted["service"]) == [{"percent": 100, "revisionName": first},
                                            {"revisionName": first, "tag": "candidate"}]

    deploy(project, "candidate", NEXT_IMAGE)
    second = project.state["sent"][-1]["service"]
    revision = second["spec"]["template"]["metadata"]["name"]
    assert revision != first
    # the tested revision keeps serving; the tag moved to the new candidate, no other tag is left
    assert traffic(second) == [{"percent": 100, "revisionName": first}, {"revisionName": revision, "tag": "candidate"}]


def test_deploy_refuses_an_image_without_a_digest(project):
    run = project.run("deploy-cloud-run.sh", "candidate", IMAGE.split("@")[0] + ":latest")
    assert run.returncode != 0 and "by digest" in run.stderr


def test_every_deploy_command_line_is_valid_for_the_real_gcloud(project, tmp_path):
    calls = []
    for args in (("candidate", IMAGE), ("promote",)):
        calls += deploy(project, *args).calls
    commands = [c["args"] for c in calls if c["tool"] == "gcloud"]
    assert {" ".join(c[3:6]) for c in commands} >= {"run deploy mlflow", "run services describe", "run services update-traffic"}
    commands.append(["--project", "proj-1", "--quiet", "secrets", "versions", "access", "latest", "--secret",
                     "mlflow-smoke-test-password"])  # the smoke test's
    for answer in real_gcloud({"mode": "parse", "commands": commands}, tmp_path):
        assert answer["code"] == 1 and "do not currently have an active account" in answer["error"], answer


def test_every_gcloud_command_in_the_deploy_guide_is_valid(tmp_path):
    """docs/deploy.md gives exact commands: each gcloud line goes through gcloud 578's parser."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.DOTALL)
    lines = [m for block in blocks for m in re.findall(r"^gcloud (.*)$", block, re.MULTILINE)]
    lines += [m for block in blocks for m in re.findall(r"\$\(gcloud (.*)\)$", block, re.MULTILINE)]
    commands = [shlex.split(line, comments=True) for line in lines]
    # interactive sign-in, and the beta component the offline SDK does not carry
    checked = [c for c in commands if c[:2] != ["auth", "login"] and c[0] != "beta"]
    assert len(checked) >= 20
    (tmp_path / "users.txt").write_text("admin:a-new-password\n")  # the files the guide adds as versions
    (tmp_path / "iap-roles.txt").write_text("[viewer]\n*\n")
    for answer in real_gcloud({"mode": "parse", "commands": checked}, tmp_path):
        valid = answer["code"] == 1 and "do not currently have an active account" in answer["error"]
        assert valid or (answer["argv"][0] == "config" and answer["code"] == 0), answer
