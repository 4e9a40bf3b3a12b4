"""Authentication as WSGI middleware, failing closed: HTTP Basic, and Google sign-in through IAP.

Replaces wsgi-basic-auth 1.1.0 rather than subclassing it: every method of that class that
matters (credential loading, the header parser, the comparison and the path exclusions) had to
change, so a subclass would have kept only its name.

What it guarantees:

* every request needs valid credentials, except ``GET``/``HEAD`` of the exact open paths
  (``/health``): no prefix match, and the raw request target must be exactly the same path, so
  ``/health/../api``, ``//health`` or ``/%68ealth`` are not open;
* any malformed, non-UTF-8, oversized, repeated or non-Basic ``Authorization`` header gets the
  same 401 with ``WWW-Authenticate: Basic realm="...", charset="UTF-8"``, never a 500;
* passwords are compared in constant time; every verified ``Authorization`` value is then
  remembered by a keyed digest (never the value itself), so a known client's next request
  costs one keyed BLAKE2 hash and a lookup, and hashed passwords (bcrypt, argon2) cost no more
  per request than plain ones;
* a failed login costs one hash check whatever the name (unknown, plain or hashed password),
  so time does not tell which names exist; hash checks run one at a time per worker, within
  the instance's hash budget (``server/gate/failures.py``), else 429 at once;
* a (client, user) pair with too many failures gets 429 for a while, and so does a client
  spraying names; other clients and users do not, and logged-in users are never slowed;
* with an IAP audience configured, a request carrying ``x-goog-iap-jwt-assertion`` is judged by
  that assertion alone (``server/gate/iap.py``): a missing (when Basic users are not configured),
  malformed, forged, expired or wrong-audience one gets 401, never a fall-through to Basic;
* the authenticated user name is put in ``REMOTE_USER`` and the user's role in the environ
  (``server/gate/role_gate.py`` judges it), and the ``Authorization`` header is removed before MLflow
  sees the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from server.gate import roles
from server.gate.account import SIGN_IN
from server.gate.failures import FailureLimiter, HashBudget
from server.gate.iap import HEADER as IAP_HEADER
from server.gate.iap import IapError, IapUnavailableError, IapVerifier
from server.gate.role_gate import DECISION, GRANTS, ROLE
from server.gate.users import User, decoy_for, password_matches
from server.gate.verified_cache import VerifiedCache

MAX_HEADER_BYTES = 4096
HASH_WAIT = 2.0  # seconds a login waits for this worker's hash check slot before a 429
FLIGHT_WAIT = 10.0  # seconds a request waits for the same header's check in progress
BUSY_RETRY_AFTER = 2
OPEN_PATHS = frozenset({"/health"})
OPEN_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK = frozenset({"127.0.0.1", "::1"})
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")


def job_credential(credential: tuple[str, str], workspace: str) -> tuple[str, str]:
    """The credential of a job of ``workspace``, derived from the runner's: admin in that
    workspace only, so a job (or code it runs) cannot reach another workspace's data."""
    return f"{credential[0]}@{workspace}", job_password(credential[1], workspace)


def job_password(secret: str, workspace: str) -> str:
    return hmac.new(secret.encode(), f"workspace:{workspace}".encode(), hashlib.sha256).hexdigest()


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """Return (user, password) from an ``Authorization`` value, or None for anything unusable."""
    if not header or len(header) > MAX_HEADER_BYTES:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or not token or " " in token or "," in token:
        return None
    try:
        decoded = base64.b64decode(token.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        return None
    if _CONTROL_CHARS.search(decoded):
        return None
    return user, password


def raw_path(environ: dict) -> str:
    """The request target's path as sent, before any decoding."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:
        return environ.get("PATH_INFO", "")
    return raw.split("?", 1)[0]


class _Flight:
    """One hash check that requests with the same header share."""

    def __init__(self):
        self.done = threading.Event()
        self.result: bool | None = None


class _Verifying(NamedTuple):
    """One users table with what goes with it: its decoy and the credentials verified against it."""

    table: dict[str, User]
    decoy: User
    cache: VerifiedCache[str]  # user names


class BasicAuthMiddleware:
    """Require HTTP Basic credentials for every request to ``app``.

    Args:
        app: the WSGI application to protect.
        users: callable returning the current ``{name: User}`` table (it may change when a
            mounted secret is rotated); empty only when ``iap`` is given.
        realm: the realm shown in the browser's login prompt.
        limiter: counts failures per (client, user) and per client; None disables the limit.
        hash_budget: the share of CPU password-hash checks may use; None: no bound.
        open_paths: exact paths served without credentials for GET and HEAD.
        internal: (user, password) of this server's own job runner, accepted only from a
            loopback peer (``server/jobs/runner.py``), with the admin role; the credentials
            ``job_credential`` derives from it are admin in one workspace. None: no such user.
        iap: verifies IAP assertions; None: IAP sign-in is off.
    """

    def __init__(
        self,
        app: Callable,
        users: Callable[[], dict[str, User]],
        realm: str = "MLflow",
        limiter: FailureLimiter | None = None,
        hash_budget: HashBudget | None = None,
        open_paths: Iterable[str] = OPEN_PATHS,
        internal: tuple[str, str] | None = None,
        iap: IapVerifier | None = None,
    ):
        self.app = app
        self._iap = iap
        self._users = users
        self._limiter = limiter
        self._budget = hash_budget
        self._hash_slot = threading.BoundedSemaphore(1)  # one hash check at a time per worker
        self._swap_lock = threading.Lock()
        self._flights: dict[bytes, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._open_paths = frozenset(open_paths)
        self._verifying: _Verifying | None = None
        self._internal = None
        if internal is not None:
            token = base64.b64encode(f"{internal[0]}:{internal[1]}".encode()).decode()
            self._internal = (internal[0], f"Basic {token}")
            self._internal_secret = internal[1]
        safe_realm = realm.replace("\\", "").replace('"', "")
        self._challenge = f'Basic realm="{safe_realm}", charset="UTF-8"'
        if not users() and iap is None:
            raise ValueError("BasicAuthMiddleware needs at least one user or IAP (fail closed)")

    def _current(self) -> _Verifying:
        # Swapped as one object when the table rotates, with a fresh cache: a request still
        # verifying against the old table adds to the old cache, never to the new one.
        current = self._verifying
        table = self._users()
        if current is None or table is not current.table:
            with self._swap_lock:  # one new cache (and digest key) per table, even under a burst
                current = self._verifying
                if current is None or table is not current.table:
                    current = self._verifying = _Verifying(table, decoy_for(table), VerifiedCache())
        return current

    def _is_open(self, environ: dict) -> bool:
        path = environ.get("PATH_INFO", "")
        return (
            environ.get("REQUEST_METHOD") in OPEN_METHODS
            and path in self._open_paths
            and raw_path(environ) == path
            and not environ.get("SCRIPT_NAME")
        )

    def authenticate(self, header: str | None, client: str = "-") -> str | None:
        """Return the user name for a valid header, else None."""
        user = self.verify(header, client)[0]
        return user.name if user is not None else None

    def verify(self, header: str | None, client: str = "-") -> tuple[User | None, int]:
        """(user, 0) for a valid header; (None, seconds to wait) or (None, 0) otherwise.

        The user comes from the table the header was checked against, so a rotation of the
        table in between cannot turn a valid login into a refusal.
        """
        table, decoy, cache = self._current()
        if not header:
            return None, 0
        # a value verified before (against this table) is known without parsing it again
        digest = cache.digest(header)
        if (known := cache.get(digest)) is not None:
            return table[known], 0
        parsed = parse_basic(header)
        if parsed is None:
            self._failed(client, "")
            return None, 0
        name, password = parsed
        if self._limiter is not None and (wait := self._limiter.retry_after(client, name)):
            return None, wait
        user = table.get(name)
        if user is not None and not user.is_hashed and password_matches(user, password):
            return self._succeeded(client, user, digest, cache), 0
        # Every other outcome costs one hash check when any user has a hashed password: the
        # user's own, or the decoy's for an unknown name or a wrong plain password, so the time
        # taken does not tell which names exist or how their passwords are stored.
        check = user if user is not None and user.is_hashed else decoy
        if check.is_hashed:
            matched = self._once_per_header(digest, lambda: self._hash_check(check, password))
            if matched is None:
                return None, BUSY_RETRY_AFTER
        else:
            matched = False
        if matched and check is user:
            return self._succeeded(client, user, digest, cache), 0
        self._failed(client, name)
        return None, 0

    def _once_per_header(self, digest: bytes, check: Callable[[], bool | None]) -> bool | None:
        """Run ``check`` once for requests that carry the same header at the same time.

        Training jobs started together send the same credentials at once: the first request
        checks the hash, the others wait for its result instead of each taking a hash check
        (and the hash budget) of their own.
        """
        with self._flights_lock:
            flight = self._flights.get(digest)
            leader = flight is None
            if leader:
                flight = self._flights[digest] = _Flight()
        if not leader:
            return flight.result if flight.done.wait(FLIGHT_WAIT) else None
        try:
            flight.result = check()
        finally:
            flight.done.set()
            with self._flights_lock:
                self._flights.pop(digest, None)
        return flight.result

    def _hash_check(self, user: User, password: str) -> bool | None:
        """The hash check, within the instance's hash budget; None when over it."""
        # the budget first: a flood is turned away without waiting for the slot
        if self._budget is not None and not self._budget.try_start():
            return None
        if not self._hash_slot.acquire(timeout=HASH_WAIT):
            return None
        try:
            started = time.thread_time()
            matched = password_matches(user, password)
            if self._budget is not None:
                self._budget.spend(time.thread_time() - started)
            return matched
        finally:
            self._hash_slot.release()

    def _succeeded(self, client: str, user: User, digest: bytes, cache: VerifiedCache) -> User:
        cache.add(digest, user.name)
        if self._limiter is not None:
            self._limiter.record_success(client, user.name)
        return user

    def _failed(self, client: str, name: str) -> None:
        if self._limiter is not None:
            self._limiter.record_failure(client, name)

    def __call__(self, environ: dict, start_response: Callable):
        if self._is_open(environ):
            environ[DECISION] = "open"
            return self.app(environ, start_response)
        if (internal := self._internal_user(environ)) is not None:
            return self._let_in(environ, start_response, internal[0], internal[1], "internal")
        if self._iap is not None:
            assertion = environ.get(IAP_HEADER)
            if assertion or not self._current().table:
                return self._iap_request(environ, start_response, assertion)
        user, wait = self.verify(environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR") or "-")
        if user is not None:
            return self._let_in(environ, start_response, user.name, user.grants, "basic")
        if wait:
            return _refused(environ, start_response, "throttled", "429 Too Many Requests",
                            b"429 Too Many Requests: too many login attempts, try again later.\n",
                            ("Retry-After", str(wait)))
        return _refused(environ, start_response, "unauthenticated", "401 Unauthorized",
                        b"401 Unauthorized: valid credentials are required.\n", ("WWW-Authenticate", self._challenge))

    def _let_in(self, environ: dict, start_response: Callable, user: str, grants: roles.Grants, sign_in: str):
        environ["REMOTE_USER"] = user
        environ[GRANTS] = grants  # the role of this request is decided from them (workspace_gate.py)
        environ[ROLE] = grants.server
        environ[SIGN_IN] = sign_in
        # MLflow sees the request as ``mlflow server`` without an auth app does: no credential.
        # Its handlers read ``request.authorization`` only for its own auth app (e.g. to run a
        # judge job as the caller, with a token of that app), and nothing below needs the password.
        environ.pop("HTTP_AUTHORIZATION", None)
        return self.app(environ, start_response)

    def _iap_request(self, environ: dict, start_response: Callable, assertion: str | None):
        """A request judged by its IAP assertion alone: in, or 401/403/503, never Basic."""
        try:
            email, grants = self._iap.verify(assertion)
        except IapUnavailableError:
            return _refused(environ, start_response, "unavailable", "503 Service Unavailable",
                            b"503 Service Unavailable: IAP sign-in cannot be checked right now.\n",
                            ("Retry-After", "30"))
        except IapError:
            return _refused(environ, start_response, "unauthenticated", "401 Unauthorized",
                            b"401 Unauthorized: a valid IAP assertion (Google sign-in) is required.\n")
        if not grants:
            environ["REMOTE_USER"] = email
            return _refused(environ, start_response, "denied", "403 Forbidden",
                            f"403 Forbidden: {email} is signed in through IAP, but no role is granted to "
                            "this account on this server (MLFLOW_IAP_ROLES).\n".encode())
        return self._let_in(environ, start_response, email, grants, "iap")

    def _internal_user(self, environ: dict) -> tuple[str, roles.Grants] | None:
        """The job runner (admin) or one of its jobs (admin in the job's workspace only)."""
        if self._internal is None or environ.get("REMOTE_ADDR") not in LOOPBACK:
            return None
        name, expected = self._internal
        header = environ.get("HTTP_AUTHORIZATION") or ""
        if secrets.compare_digest(header.encode("utf-8", "surrogatepass"), expected.encode()):
            return name, roles.Grants(roles.ADMIN)
        parsed = parse_basic(header) if header.startswith("Basic ") else None
        if parsed is None or not parsed[0].startswith(name + "@"):
            return None
        workspace = parsed[0][len(name) + 1:]
        if secrets.compare_digest(parsed[1].encode("utf-8", "surrogatepass"),
                                  job_password(self._internal_secret, workspace).encode()):
            return parsed[0], roles.Grants(None, {workspace: roles.ADMIN})
        return None


def _refused(environ: dict, start_response: Callable, decision: str, status: str, body: bytes,
             *headers: tuple[str, str]) -> list[bytes]:
    """A plain-text refusal; the body of the request is not read, so the connection closes after it."""
    environ["server.close_connection"] = True
    environ[DECISION] = decision
    start_response(status, [*headers, ("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return [body]
