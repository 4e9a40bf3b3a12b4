"""The UI with MLflow's workspaces and roles per workspace, in headless Chromium: a team-a editor
sees team-a's experiments and models and only team-a in the list of workspaces, and a link into
team-b's workspace shows a refusal that names the workspace, with nothing of team-b on the page."""

from __future__ import annotations

import pytest

from tests.test_ui import browser, tab  # noqa: F401 - the browser fixtures
from tests.test_workspaces import ANN, server, teams  # noqa: F401 - the server with two teams

pytestmark = pytest.mark.browser


def body_text(t) -> str:
    return t.page.inner_text("body")


def test_a_team_member_sees_only_their_workspace(server, teams, tab):  # noqa: F811
    t = tab(ANN)
    t.open(f"{server.url}/", wait_for_text="Select a workspace")
    t.page.get_by_text("team-a", exact=True).first.wait_for()
    t.shot("21-workspaces-of-a-team-member")
    text = body_text(t)
    assert "team-a" in text and "team-b" not in text and "team-c" not in text
    assert t.problems == []


def test_a_team_member_works_in_their_workspace(server, teams, tab):  # noqa: F811
    t = tab(ANN)
    experiment = f"team-a-{teams['tag']}"
    t.open(f"{server.url}/#/experiments?workspace=team-a", wait_for_text=experiment)
    t.shot("22-experiments-of-team-a")
    assert "team-b-" not in body_text(t)
    t.open(f"{server.url}/#/models?workspace=team-a", wait_for_text=teams["a"]["model"])
    assert teams["b"]["model"] not in body_text(t)
    assert t.problems == []


def test_a_link_into_another_teams_workspace_is_refused_clearly(server, teams, tab):  # noqa: F811
    t = tab(ANN)
    t.open(f"{server.url}/#/experiments?workspace=team-b",
           wait_for_text="has no role in the workspace 'team-b'")
    t.shot("23-link-into-another-workspace")
    text = body_text(t)
    assert "Permission denied" in text and "team-b-" not in text and teams["b"]["run_id"] not in text
    # what was refused was the workspace's data, with a 403, and nothing else failed
    refused = [p for p in t.problems if p.startswith("403: ")]
    others = [p for p in t.problems if not p.startswith("403: ") and "status of 403" not in p]
    assert refused and others == [], t.problems
