"""The UI as a person uses it, in a real headless Chromium (Debian's package, driven by
Playwright), against the production-like server (Postgres + GCS emulator, two users) reached
under a public-looking host name, so MLflow's Host and Origin checks run as on Cloud Run."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE, BOB, IN_CI, OUTPUT, USERS_FILE
from tests.services import ROOT, Server, free_port
from tests.test_roles import EDITOR, VIEWER, VIEWER_HASH
from tests.test_training_flow import run_script

pytestmark = pytest.mark.browser

HOST = "mlflow.example.test"
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = OUTPUT / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def ui_server(workdir, postgres, gcs):
    port = free_port()
    env = {**gcs.env(), "MLFLOW_PUBLIC_URL": f"http://{HOST}:{port}"}
    secrets = {"mlflow_backend_store_uri": postgres.create_database("mlflow_ui"),
               "mlflow_artifacts_destination": f"gs://{gcs.bucket}/ui",
               "mlflow_auth_users": f"{USERS_FILE}[editor]\n{':'.join(EDITOR)}\n[viewer]\n{VIEWER[0]}:{VIEWER_HASH}\n"}
    server = Server(workdir / "server-ui", env, secrets, port=port).start()
    data = run_script(server, ALICE, "train", "ui-model")
    yield server, data, f"http://{HOST}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("Chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("Chromium is not installed")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", f"--host-resolver-rules=MAP {HOST} 127.0.0.1"],
        )
        yield chromium
        chromium.close()
    # The README's screenshots are refreshed only on request, so a test run leaves the checkout clean.
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        for shot in SHOTS.glob("*.png"):
            shutil.copy(shot, DOC_SHOTS / shot.name)


BENIGN_CONSOLE = ("ResizeObserver loop completed with undelivered notifications",)


class Tab:
    """A fresh browser context (new profile state) with the network and console watched."""

    def __init__(self, browser, credentials: tuple[str, str] | None):
        kwargs = {"viewport": {"width": 1400, "height": 900}, "accept_downloads": True}
        if credentials:
            kwargs["http_credentials"] = {"username": credentials[0], "password": credentials[1]}
        self.context = browser.new_context(**kwargs)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.responses: list[tuple[int, str]] = []
        self.documents = []  # responses to page navigations
        self.page.on("response", self._response)
        self.page.on("console", self._console)
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        # every Content-Security-Policy violation, whether or not Chromium also logs it
        self.context.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")

    def _console(self, message):
        # Chromium reports a layout pass that needed a second ResizeObserver round as an
        # error event; the UI re-logs it. It depends on timing only, not on the server.
        if message.type == "error" and not any(b in message.text for b in BENIGN_CONSOLE):
            self.problems.append(f"console: {message.text[:300]}")

    def _response(self, response):
        self.responses.append((response.status, response.url))
        if response.request.resource_type == "document":
            self.documents.append(response)
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.url}")

    def open(self, url: str, wait_for_text: str | None = None, timeout: float = 30_000):
        response = self.page.goto(url)
        if wait_for_text:
            self.page.get_by_text(wait_for_text).first.wait_for(timeout=timeout)
        time.sleep(1.0)  # let the page's follow-up requests settle
        self.check_csp()
        return response

    def check_csp(self) -> None:
        """Record the page's CSP violations as problems (the server sends a policy on every page)."""
        try:
            violations = self.page.evaluate("window.__csp || []")
        except Exception as exc:  # a page that navigated away has no window to ask
            violations = [f"(could not read: {exc})"]
        self.problems += [f"CSP violation: {v}" for v in violations]
        if violations:
            self.page.evaluate("window.__csp = []")

    def open_refused(self, url: str):
        """Navigate where the server refuses the login: Chromium gives up on the challenge
        (ERR_INVALID_AUTH_CREDENTIALS); return the refused document response it received."""
        from playwright.sync_api import Error

        try:
            self.page.goto(url)
        except Error as exc:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc) or "401" in str(exc), exc
        self.page.wait_for_load_state()  # the refusal page Chromium shows instead, drawn
        assert self.documents, "no document response was received"
        return self.documents[-1]

    def shot(self, name: str) -> None:
        from playwright.sync_api import Error

        # Chromium now and then refuses a capture outright, mostly the first one after a cold
        # browser start, and takes the same picture when asked again (robotframework-browser
        # #5237 measured it; it failed one run here): one retry, on that answer only
        try:
            self.page.screenshot(path=str(SHOTS / f"{name}.png"))
        except Error as exc:
            if "Unable to capture screenshot" not in str(exc):
                raise
            time.sleep(0.25)
            self.page.screenshot(path=str(SHOTS / f"{name}.png"))

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser):
    opened = []

    def make(credentials=ALICE):
        t = Tab(browser, credentials)
        opened.append(t)
        return t

    yield make
    for t in opened:
        t.close()


def test_without_credentials_the_page_is_401_and_shows_nothing_of_mlflow(ui_server, tab):
    _, _, base = ui_server
    t = tab(None)
    response = t.open_refused(base + "/")
    t.shot("01-no-credentials")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert "mlflow" not in t.page.content().lower()
    assert b"mlflow" not in response.body().lower()
    assert not [url for status, url in t.responses if status < 400 and "static-files" in url]


def test_wrong_credentials_get_401_and_do_not_reveal_the_user(ui_server, tab):
    _, _, base = ui_server
    bodies = []
    for creds in ((ALICE[0], "not-her-password"), ("nobody-here", "whatever-password")):
        t = tab(creds)
        response = t.open_refused(base + "/")
        assert response.status == 401
        bodies.append((response.body(), response.headers["www-authenticate"]))
    t.shot("02-wrong-credentials")
    assert bodies[0] == bodies[1]


def test_experiments_list_loads_with_no_failed_request_or_console_error(ui_server, tab):
    _, _, base = ui_server
    t = tab()
    page = t.open(base + "/#/experiments", wait_for_text="ui-model-experiment")
    t.shot("03-experiments")
    assert t.problems == []  # CSP violations included
    headers = page.headers
    assert "script-src 'self' 'unsafe-eval';" in headers["content-security-policy"]  # no inline script
    assert headers["referrer-policy"] == "same-origin" and headers["cache-control"] in ("no-cache", "no-store")
    assert "strict-transport-security" not in headers  # plain HTTP
    assert any("static-files" in url for _, url in t.responses)  # the UI really loaded
    # the UI asks who is signed in (users/current; stock `mlflow server` answers 404) and shows it
    assert any(status == 200 and url.endswith("/users/current") for status, url in t.responses)
    assert t.page.get_by_text(ALICE[0], exact=True).first.is_visible()


def test_run_page_params_metrics_chart_and_artifacts(ui_server, tab):
    _, data, base = ui_server
    run = f"{base}/#/experiments/{data['experiment_id']}/runs/{data['run_id']}"
    t = tab()
    t.open(run, wait_for_text="batch_param")
    t.shot("04-run-overview")
    body = t.page.inner_text("body")
    for text in ("solver", "lbfgs", "loss", "acc", "team"):
        assert text in body, text

    t.open(run + "/model-metrics", wait_for_text="loss")
    t.page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    t.shot("05-run-metrics")
    assert t.page.locator(".js-plotly-plot").count() >= 1

    t.open(run + "/artifacts", wait_for_text="data.bin")
    t.page.get_by_text("dir", exact=True).click()
    t.page.get_by_text("notes.txt", exact=True).click()
    t.page.get_by_text("hello from the training script").wait_for(timeout=30_000)
    t.shot("06-artifact-viewer")
    with t.page.expect_download(timeout=30_000) as download_info:
        # the download button of the artifact view (an icon button without a label)
        t.page.locator('button[data-component-id*="artifactview"]').first.click()
    path = download_info.value.path()
    assert Path(path).read_text() == "hello from the training script\n"
    assert t.problems == []


def test_registered_model_and_alias_on_the_models_page(ui_server, tab):
    _, _, base = ui_server
    t = tab(BOB)  # the second user
    t.open(base + "/#/models", wait_for_text="ui-model")
    t.shot("07-models")
    assert "champion" in t.page.inner_text("body")
    t.open(base + "/#/models/ui-model", wait_for_text="Version 1")
    t.shot("08-model")
    assert "champion" in t.page.inner_text("body")
    assert t.problems == []


def test_two_runs_can_be_compared(ui_server, tab):
    _, data, base = ui_server
    runs = json.dumps([data["run_id"], data["second_run_id"]])
    t = tab()
    t.open(f"{base}/#/compare-runs?runs={runs}&experiments={json.dumps([data['experiment_id']])}",
           wait_for_text="Comparing 2 Runs")
    t.page.get_by_text("train-2").first.wait_for(timeout=30_000)
    t.shot("09-compare-runs")
    body = t.page.inner_text("body")
    assert data["run_id"] in body and data["second_run_id"] in body
    assert t.problems == []


def _create_experiment(t: Tab, base: str, name: str, shot: str | None = None):
    """Create an experiment through the UI's dialog; the dialog, after its Create was clicked."""
    t.open(base + "/#/experiments", wait_for_text="Default")
    t.page.get_by_role("button", name="Create").first.click()
    dialog = t.page.get_by_role("dialog")
    dialog.get_by_role("textbox").first.fill(name)
    if shot:
        t.shot(shot)
    dialog.get_by_role("button", name="Create").click()
    return dialog


def test_create_an_experiment_from_the_ui(ui_server, tab):
    server, _, base = ui_server
    t = tab()
    _create_experiment(t, base, "made-in-the-browser", shot="10-create-experiment")
    t.page.get_by_text("made-in-the-browser").first.wait_for(timeout=30_000)
    posts = [(s, u) for s, u in t.responses if "experiments/create" in u]
    assert posts and all(s == 200 for s, _ in posts)
    r = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name",
                     params={"experiment_name": "made-in-the-browser"}, auth=ALICE, timeout=10)
    assert r.status_code == 200
    # The create dialog asks get-by-name whether the name is free before it enables "Create":
    # that 404 (and Chromium's console line for it) is the UI's design, the only one allowed.
    expected = [p for p in t.problems if "get-by-name" in p or "404 (NOT FOUND)" in p]
    assert len(expected) <= 2 and [p for p in t.problems if p not in expected] == []


def test_a_viewer_sees_their_name_and_a_write_is_refused_naming_the_role(ui_server, tab):
    server, _, base = ui_server
    t = tab(VIEWER)
    dialog = _create_experiment(t, base, "viewer-wants-this")
    dialog.get_by_text("role 'viewer'").first.wait_for(timeout=30_000)
    assert "viewers may only read" in dialog.inner_text()
    assert t.page.get_by_text(VIEWER[0], exact=True).first.is_visible()  # who is signed in
    t.shot("11-viewer-refused")
    # the refused create (403, and Chromium's console line for it) and the dialog's name check
    # (get-by-name answers 404 for a free name, as in the create test above)
    assert [p for p in t.problems if not any(s in p for s in ("experiments/create", "403", "get-by-name", "404"))] == []
    r = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name",
                     params={"experiment_name": "viewer-wants-this"}, auth=ALICE, timeout=10)
    assert r.status_code == 404


def test_an_editor_creates_and_an_admin_deletes_an_experiment(ui_server, tab):
    server, _, base = ui_server
    t = tab(EDITOR)
    _create_experiment(t, base, "editor-made-this")
    t.page.get_by_text("editor-made-this").first.wait_for(timeout=30_000)
    made = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name",
                        params={"experiment_name": "editor-made-this"}, auth=ALICE, timeout=10).json()
    experiment_id = made["experiment"]["experiment_id"]

    a = tab(ALICE)
    a.open(base + "/#/experiments", wait_for_text="editor-made-this")
    row = a.page.get_by_role("row").filter(has_text="editor-made-this")
    row.get_by_role("checkbox").first.check()
    a.page.get_by_role("button", name="Delete").first.click()
    a.page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    wait = time.monotonic() + 30
    while time.monotonic() < wait:
        got = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id},
                           auth=ALICE, timeout=10).json()
        if got["experiment"]["lifecycle_stage"] == "deleted":
            break
        time.sleep(0.5)
    assert got["experiment"]["lifecycle_stage"] == "deleted"
    expected = ("get-by-name", "404 (NOT FOUND)")  # the create dialog's name check, as above
    assert [p for p in t.problems + a.problems if not any(s in p for s in expected)] == []


def test_the_review_page_hides_queue_creation_from_a_viewer(ui_server, tab):
    """Where MLflow's UI asks for permissions (users/current/permissions), the role shows: the
    review page's queue list offers "New queue" to an editor, not to a viewer."""
    _, data, base = ui_server
    url = f"{base}/#/experiments/{data['experiment_id']}/review-queue"
    buttons = {}
    for user in (EDITOR, VIEWER):
        t = tab(user)
        t.open(url, wait_for_text="Set up human review")
        buttons[user[0]] = t.page.get_by_role("button", name="New queue").count()
        t.shot(f"12-review-{user[0]}")
        assert t.problems == []
    assert buttons == {EDITOR[0]: 2, VIEWER[0]: 1}  # the list's own button, and the empty page's
