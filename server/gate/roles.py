"""The three roles, what each may do, and the ``[role]`` sections that assign them.

A role is given to users in the users file (and to Google identities in the IAP roles) by the
section they are listed under::

    alice:$2b$12$...        # before any section: admin, as every user was before roles
    [editor]
    ci-bot:$2b$12$...
    [viewer]
    manager:plain:password:with:colons

A section may name a workspace (MLflow's workspaces, ``MLFLOW_ENABLE_WORKSPACES``): the role then
holds in that workspace only::

    [editor team-a]
    ann:$2b$12$...          # ann is an editor in team-a, and has no role anywhere else
    [viewer team-b]
    ann                     # a name alone: a role for a user whose password is given elsewhere

A section line is ``[name]`` or ``[name workspace]`` alone on its line; it cannot be mistaken
for a user line, which always holds a ':'. A role held server-wide holds in every workspace;
where a principal has both, the stronger one counts. Route levels (``read``, ``write``, ``admin``) are what a request needs;
``server/gate/route_access.py`` gives each of MLflow's routes its level.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

VIEWER, EDITOR, ADMIN = "viewer", "editor", "admin"
ROLES = (VIEWER, EDITOR, ADMIN)
# Users listed before any section, and WSGI_AUTH_CREDENTIALS users: full rights, so a users
# file written before roles existed means what it meant then.
DEFAULT_ROLE = ADMIN

READ, WRITE, ADMIN_ONLY = "read", "write", "admin"
LEVELS = (READ, WRITE, ADMIN_ONLY)
_RANK = {VIEWER: 0, EDITOR: 1, ADMIN: 2}
_NEEDS = {READ: 0, WRITE: 1, ADMIN_ONLY: 2}

# what the 403 says each role may do
_MAY = {VIEWER: "viewers may only read", EDITOR: "editors may not delete experiments, registered "
        "models or model versions, nor change the server's own settings"}


def allows(role: str, level: str) -> bool:
    return _RANK[role] >= _NEEDS[level]


def refusal(user: str, role: str, method: str, path: str) -> str:
    """The message of a 403: who, which role, what was refused and why."""
    return (f"Permission denied: user {user!r} has the role {role!r}, which may not "
            f"{method} {path} ({_MAY.get(role, 'role not allowed')}). Ask an admin for a role with more rights.")


# MLflow's rule for a workspace name (WorkspaceNameValidator): DNS-label-like, 2 to 63 characters
WORKSPACE_NAME = re.compile(r"[a-z0-9][-a-z0-9]{0,61}[a-z0-9]")


def stronger(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if _RANK[a] >= _RANK[b] else b


@dataclass(frozen=True)
class Grants:
    """The roles of one user or Google identity: ``server`` holds in every workspace, and each
    of ``workspaces`` in its workspace (the stronger of the two counts)."""

    server: str | None = None
    workspaces: Mapping[str, str] = field(default_factory=dict)

    def in_workspace(self, workspace: str) -> str | None:
        return stronger(self.server, self.workspaces.get(workspace))

    def __bool__(self) -> bool:
        return self.server is not None or bool(self.workspaces)


def first_of(*grants: Grants | None) -> Grants:
    """Per workspace (and server-wide), the role of the first of ``grants`` that has one there:
    an email's roles before its domain's, the domain's before ``*``'s."""
    present = [g for g in grants if g]
    server = next((g.server for g in present if g.server is not None), None)
    named = {w for g in present for w in g.workspaces}
    return Grants(server, {w: next(r for g in present if (r := g.in_workspace(w)) is not None) for w in named})


def section(line: str) -> tuple[str, str | None] | None:
    """(role, workspace or None) of a ``[role]`` or ``[role workspace]`` line; ("", None) for
    a bracketed line naming no role or a malformed workspace; None for any other line."""
    if not (line.startswith("[") and line.endswith("]")) or ":" in line:
        return None
    words = line[1:-1].split()
    name = words[0].lower() if words else ""
    if name not in ROLES or len(words) > 2:
        return "", None
    if len(words) == 2:
        workspace = words[1].lower()
        return (name, workspace) if WORKSPACE_NAME.fullmatch(workspace) else ("", None)
    return name, None


def sectioned(text: str, where: str, default: str | None, error: type[Exception] = ValueError,
              inline_comments: bool = False) -> Iterator[tuple[int, str, str | None, str | None]]:
    """(line number, line, role, workspace or None) of each entry of a ``[role]``-sectioned text.

    Blank lines and ``#`` lines are skipped; with ``inline_comments`` a ``#`` ends any line
    (not for password lines, which may hold one). Entries before any section get ``default``,
    server-wide. A bracketed line naming no role raises ``error``, without the line itself.
    """
    role, workspace = default, None
    for number, line in enumerate(text.splitlines(), start=1):
        line = (line.split("#", 1)[0] if inline_comments else line).strip()
        if not line or line.startswith("#"):
            continue
        opened = section(line)
        if opened is not None and not opened[0]:
            raise error(f"{where}: line {number} names no role; use one of "
                        + ", ".join(f"[{r}]" for r in ROLES) + ", optionally followed by a workspace name")
        if opened:
            role, workspace = opened
            continue
        yield number, line, role, workspace
