"""The three roles, what each may do, and the ``[role]`` sections that assign them.

A role is given to users in the users file (and to Google identities in the IAP roles) by the
section they are listed under::

    alice:$2b$12$...        # before any section: admin, as every user was before roles
    [editor]
    ci-bot:$2b$12$...
    [viewer]
    manager:plain:password:with:colons

A section line is ``[name]`` alone on its line; it cannot be mistaken for a user line, which
always holds a ':'. Route levels (``read``, ``write``, ``admin``) are what a request needs;
``server/gate/route_access.py`` gives each of MLflow's routes its level.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def section(line: str) -> str | None:
    """The role a ``[role]`` line opens, '' for a bracketed line naming no role, None otherwise."""
    if not (line.startswith("[") and line.endswith("]")) or ":" in line:
        return None
    name = line[1:-1].strip().lower()
    return name if name in ROLES else ""


def sectioned(text: str, where: str, default: str | None, error: type[Exception] = ValueError,
              inline_comments: bool = False) -> Iterator[tuple[int, str, str | None]]:
    """(line number, line, role) of each entry of a ``[role]``-sectioned text.

    Blank lines and ``#`` lines are skipped; with ``inline_comments`` a ``#`` ends any line
    (not for password lines, which may hold one). Entries before any section get ``default``.
    A bracketed line naming no role raises ``error``, without the line itself.
    """
    role = default
    for number, line in enumerate(text.splitlines(), start=1):
        line = (line.split("#", 1)[0] if inline_comments else line).strip()
        if not line or line.startswith("#"):
            continue
        opened = section(line)
        if opened == "":
            raise error(f"{where}: line {number} names no role; use one of " + ", ".join(f"[{r}]" for r in ROLES))
        if opened:
            role = opened
            continue
        yield number, line, role
