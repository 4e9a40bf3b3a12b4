"""The users allowed in, parsed from htpasswd-style text, and how a password is checked.

Accepted forms, one user a line (``#`` comments and blank lines are ignored)::

    alice:plain-text-password
    bob:$2b$12$...            # bcrypt (htpasswd -B); $2a$/$2y$ too
    carol:$argon2id$v=19$...  # argon2 (argon2-cffi)
    [viewer]                  # the users below get this role (server/gate/roles.py)
    dave:pass:with:colons     # the password is everything after the first ':'
    [editor team-a]           # a role in one workspace only
    erin:$2b$12$...
    dave                      # a name alone: a role for a user defined elsewhere in the file

Users before any ``[role]`` line are admins. A user listed only under workspace sections has
no role outside those workspaces. The wsgi-basic-auth variable
``WSGI_AUTH_CREDENTIALS`` (``user:pass|user2:pass2``) is accepted unchanged, its users admins,
so that blog-post deployments migrate as they are.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from server.gate import roles

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
# Other htpasswd schemes are weak (MD5-crypt, SHA-1, crypt) and refused rather than guessed at.
REFUSED_PREFIXES = ("$apr1$", "{SHA}", "$1$", "$5$", "$6$")


class UsersError(Exception):
    """A users definition that cannot be used; the message never contains a password."""


@dataclass(frozen=True)
class User:
    name: str
    secret: str  # plain password or a hash
    kind: str  # "plain", "bcrypt" or "argon2"
    role: str | None = roles.DEFAULT_ROLE  # server-wide; None: roles in workspaces only
    workspaces: tuple[tuple[str, str], ...] = ()  # (workspace, role)

    @property
    def is_hashed(self) -> bool:
        return self.kind != "plain"

    @property
    def grants(self) -> roles.Grants:
        return roles.Grants(self.role, dict(self.workspaces))


def _kind_of(secret: str) -> str:
    if secret.startswith(BCRYPT_PREFIXES):
        return "bcrypt"
    if secret.startswith(ARGON2_PREFIXES):
        return "argon2"
    return "plain"


def _make_user(name: str, secret: str, where: str, role: str | None = roles.DEFAULT_ROLE) -> User:
    if not name:
        raise UsersError(f"{where}: a user name is empty")
    if ":" in name or any(ch.isspace() for ch in name):
        # not shown: a line like "alice Pw3:..." would put part of a password in the log
        raise UsersError(f"{where}: the user name has a ':' or white space")
    if not secret:
        raise UsersError(f"{where}: the password of user {name!r} is empty")
    if secret.startswith(REFUSED_PREFIXES):
        raise UsersError(
            f"{where}: the password hash of user {name!r} uses a weak scheme; "
            "use bcrypt (htpasswd -B) or argon2"
        )
    kind = _kind_of(secret)
    if kind == "bcrypt":
        import bcrypt

        try:
            bcrypt.checkpw(b"", secret.encode("ascii"))
        except ValueError:
            raise UsersError(f"{where}: the bcrypt hash of user {name!r} is malformed") from None
    elif kind == "argon2":
        from argon2.exceptions import InvalidHashError, VerifyMismatchError

        try:
            _argon2().verify(secret, "")
        except VerifyMismatchError:
            pass
        except InvalidHashError:
            raise UsersError(f"{where}: the argon2 hash of user {name!r} is malformed") from None
    return User(name, secret, kind, role)


def parse_htpasswd(text: str, where: str) -> list[User]:
    defined: dict[str, User] = {}
    server_roles: dict[str, str] = {}
    workspace_roles: dict[str, dict[str, str]] = {}
    for number, line, role, workspace in roles.sectioned(text, where, roles.DEFAULT_ROLE, error=UsersError):
        name, sep, secret = line.partition(":")
        if sep:
            if name in defined:
                raise UsersError(f"the user {name!r} is defined twice (give a further role with the name alone)")
            defined[name] = _make_user(name, secret, f"{where} line {number}", None)
        elif any(ch.isspace() for ch in line):
            raise UsersError(f"{where}: line {number} is not 'user:password', a user name nor a [role] line")
        if workspace is None:
            server_roles[name] = roles.stronger(server_roles.get(name), role)
        else:
            held = workspace_roles.setdefault(name, {})
            held[workspace] = roles.stronger(held.get(workspace), role)
    # not named: a password line that lost its ':' would otherwise reach the log
    unknown = (set(server_roles) | set(workspace_roles)) - set(defined)
    if unknown:
        raise UsersError(f"{where}: {len(unknown)} line(s) without ':' name no user defined in the file "
                         "(a user line is 'user:password'; a name alone gives a role to a user defined elsewhere)")
    return [User(u.name, u.secret, u.kind, server_roles.get(name), tuple(sorted(workspace_roles.get(name, {}).items())))
            for name, u in defined.items()]


def parse_wsgi_auth_credentials(text: str, where: str) -> list[User]:
    users = []
    for number, item in enumerate(text.split("|"), start=1):
        item = item.strip()
        if not item:
            continue
        name, sep, secret = item.partition(":")
        if not sep:
            raise UsersError(f"{where}: entry {number} is not 'user:password'")
        users.append(_make_user(name, secret, f"{where} entry {number}"))
    return users


def merge(*groups: list[User]) -> dict[str, User]:
    by_name: dict[str, User] = {}
    for group in groups:
        for user in group:
            if user.name in by_name:
                raise UsersError(f"the user {user.name!r} is defined twice")
            by_name[user.name] = user
    return by_name


_argon2_hasher = None


def _argon2():
    global _argon2_hasher
    if _argon2_hasher is None:
        from argon2 import PasswordHasher

        _argon2_hasher = PasswordHasher()
    return _argon2_hasher


def password_matches(user: User, password: str) -> bool:
    """Check ``password`` against the user's secret in constant time (or the hash's own time)."""
    supplied = password.encode("utf-8")
    if user.kind == "plain":
        return hmac.compare_digest(supplied, user.secret.encode("utf-8"))
    if user.kind == "bcrypt":
        import bcrypt

        # bcrypt reads at most 72 bytes; bcrypt 5 raises on longer input instead of truncating.
        return bcrypt.checkpw(supplied[:72], user.secret.encode("ascii"))
    from argon2.exceptions import VerificationError

    try:
        return _argon2().verify(user.secret, supplied)
    except VerificationError:
        return False


def decoy_for(users: dict[str, User]) -> User:
    """A user that never matches, as costly to check as the costliest real one.

    Checking it for unknown names keeps the response time from telling which names exist.
    """
    hashed = [u for u in users.values() if u.is_hashed]
    if not hashed:
        return User("", secrets.token_urlsafe(24), "plain")
    if any(u.kind == "bcrypt" for u in hashed):
        import bcrypt

        model = next(u for u in hashed if u.kind == "bcrypt")
        rounds = int(model.secret.split("$")[2])
        return User("", bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds)).decode(), "bcrypt")
    return User("", _argon2().hash(secrets.token_urlsafe(16)), "argon2")
