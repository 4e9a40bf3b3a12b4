"""MLflow 3's pages in a real headless Chromium, on stock ``mlflow server`` and on ours side by
side (the ``parity`` servers, after the same stock-client session): traces and a trace view
with search, prompts with "Create prompt", judges, datasets, evaluation runs, logged models,
the AI gateway, the MCP registry and chat sessions. On ours, a page may show no failed request
and no console error that stock ``mlflow server`` does not show on the same page."""

from __future__ import annotations

import functools
import os
import re

import pytest
import requests

from tests.conftest import ALICE
from tests.test_ui import SHOTS, Tab, browser  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.browser

PAGES = {
    "traces": "/#/experiments/{eid}/traces",
    "trace-view": "/#/experiments/{eid}/traces/{trace_id}",
    "prompts": "/#/prompts",
    "prompt": "/#/prompts/parity-prompt",
    "judges": "/#/experiments/{eid}/judges",
    "datasets": "/#/experiments/{eid}/datasets",
    "evaluation-runs": "/#/experiments/{eid}/evaluation-runs",
    "logged-models": "/#/experiments/{eid}/models",
    "gateway": "/#/gateway",
    "mcp-registry": "/#/mcp-registry",
    "chat-sessions": "/#/experiments/{eid}/chat-sessions",
}
BROKEN_PAGE = ("Something went wrong", "Error loading", "Failed to fetch")


def ids(url: str, auth) -> dict[str, str]:
    """The parity experiment's id and the id of its traced call (``parity_root``) on one server."""
    from mlflow import MlflowClient

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        if auth:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = auth
        client = MlflowClient(tracking_uri=url)
        eid = client.get_experiment_by_name("parity").experiment_id
        traces = client.search_traces(locations=[eid], filter_string="span.name = 'parity_root'")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    return {"eid": eid, "trace_id": traces[0].info.trace_id}


def normalized(problem: str, base: str) -> str:
    """A problem without what differs between two servers: host, query, ids, reason phrase case."""
    text = problem.replace(base, "").split("?", 1)[0]
    text = re.sub(r"tr-[0-9a-f]{32}|[0-9a-f]{32}|\b\d+\b", "N", text)
    return text.lower()


def visit(browser, visits: list[tuple[str, str, tuple[str, str] | None, str]]):  # noqa: F811
    """Open each (base, path, credentials, shot name) in a tab of its own, all loading at once;
    each one's problems (normalised) and text."""
    tabs = []
    try:
        for base, path, credentials, _ in visits:
            tabs.append(Tab(browser, credentials))
            tabs[-1].page.goto(base + path)
        # pages poll (traces, jobs), so the network never goes quiet: a fixed settle instead,
        # which every tab spends at once (each keeps loading while the others are opened)
        tabs[-1].page.wait_for_timeout(3000)
        found = []
        for tab, (base, _, _, name) in zip(tabs, visits, strict=True):
            tab.shot(name)
            found.append(({normalized(p, base) for p in tab.problems}, tab.page.inner_text("body")))
        return found
    finally:
        for tab in tabs:
            tab.close()


@functools.cache
def parity_ids(url: str, auth) -> dict[str, str]:
    return ids(url, auth)


@pytest.mark.parametrize("page", list(PAGES))
def test_mlflow3_page_has_no_error_stock_mlflow_server_does_not_have(parity, browser, page):  # noqa: F811
    stock_ids = parity_ids(parity.stock.url, None)
    our_ids = parity_ids(parity.ours.url, ALICE)
    (stock_problems, stock_body), (our_problems, our_body) = visit(browser, [
        (parity.stock.url, PAGES[page].format(**stock_ids), None, f"mlflow3-stock-{page}"),
        (parity.ours.url, PAGES[page].format(**our_ids), ALICE, f"mlflow3-ours-{page}")])
    assert our_problems - stock_problems == set(), f"stock had only: {sorted(stock_problems)}"
    assert len(our_body) > 50 and not any(b in our_body for b in BROKEN_PAGE if b not in stock_body)
    if page == "trace-view":  # the spans came in through /v1/traces
        assert "parity_child" in our_body and "parity_child" in stock_body


def test_create_a_prompt_from_the_ui(parity, browser):  # noqa: F811
    tab = Tab(browser, ALICE)
    try:
        tab.page.goto(parity.ours.url + "/#/prompts")
        # "Create prompt" once prompts exist, "Or create a prompt manually" before
        tab.page.get_by_role("button", name=re.compile("create (a )?prompt", re.I)).first.click()
        dialog = tab.page.get_by_role("dialog")
        dialog.get_by_placeholder(re.compile("unique prompt name", re.I)).fill("made-in-the-browser")
        dialog.get_by_placeholder(re.compile("prompt content", re.I)).fill("Summarise {{text}} in one line.")
        tab.shot("mlflow3-create-prompt")
        dialog.get_by_role("button", name=re.compile("^create$", re.I)).click()
        dialog.wait_for(state="hidden", timeout=30_000)  # closes once the prompt is created
        tab.page.wait_for_timeout(1500)
        problems = list(tab.problems)
    finally:
        tab.close()
    got = requests.get(f"{parity.ours.url}/api/2.0/mlflow/registered-models/get",
                       params={"name": "made-in-the-browser"}, auth=ALICE, timeout=10)
    assert got.status_code == 200, got.text
    version = requests.get(f"{parity.ours.url}/api/2.0/mlflow/model-versions/get",
                           params={"name": "made-in-the-browser", "version": "1"}, auth=ALICE, timeout=10)
    assert version.status_code == 200, version.text
    assert version.json()["model_version"]["source"] == "dummy-source"  # what the UI sends
    assert [p for p in problems if "users/current" not in p] == []
