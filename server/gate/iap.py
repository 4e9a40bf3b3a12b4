"""Google sign-in through Identity-Aware Proxy: the ``x-goog-iap-jwt-assertion`` header verified.

IAP signs, for every request it lets through, a JWT (ES256) naming the Google account. It is
checked here with google-auth's ``jwt.decode``: the signature against IAP's published public keys,
the audience (the IAP resource this server sits behind), the expiry and issue time; and the
issuer, which ``jwt.decode`` does not check. The account's email is the user; its role comes
from the IAP roles (``[role]`` sections of emails, ``@domain`` entries, or ``*``).

google-auth's own ``id_token.verify_token`` fetches the keys on every call; here they are
fetched once per worker, kept for ``KEYS_MAX_AGE``, fetched again at most every
``KEYS_RETRY_SECONDS`` when a token names a key id not yet known (IAP rotates its keys), and a
verified assertion is remembered (by a keyed digest) until it expires.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable

from server.gate import roles
from server.gate.verified_cache import VerifiedCache

log = logging.getLogger("server.iap")

HEADER = "HTTP_X_GOOG_IAP_JWT_ASSERTION"
ISSUER = "https://cloud.google.com/iap"
GOOGLE_KEYS_URL = "https://www.gstatic.com/iap/verify/public_key"  # {key id: PEM public key}
ALGORITHM = "ES256"
KEYS_MAX_AGE = 3600.0
KEYS_RETRY_SECONDS = 60.0
FETCH_TIMEOUT = 5.0
CLOCK_SKEW = 10  # seconds of tolerance on exp and iat
MAX_ASSERTION_BYTES = 8192


class IapError(Exception):
    """The assertion is missing, malformed, forged, expired or for another audience."""


class IapUnavailableError(Exception):
    """IAP's public keys cannot be fetched, so no assertion can be checked."""


def parse_roles(text: str, where: str) -> dict[str, roles.Grants]:
    """``{email, @domain or *: grants}`` from ``[role]`` and ``[role workspace]`` sections;
    raises ValueError."""
    server: dict[str, str] = {}
    workspaces: dict[str, dict[str, str]] = {}
    for number, line, role, workspace in roles.sectioned(text, where, default=None, inline_comments=True):
        if role is None:
            raise ValueError(f"{where}: line {number} comes before any [role] line")
        subject = line.lower()
        if subject != "*" and ("@" not in subject or any(ch.isspace() for ch in subject)):
            raise ValueError(f"{where}: line {number} is not an email, an @domain or *")
        held = server if workspace is None else workspaces.setdefault(workspace, {})
        if subject in held:
            raise ValueError(f"{where}: {subject} is listed twice" + (f" for {workspace}" if workspace else ""))
        held[subject] = role
    subjects = set(server) | {s for held in workspaces.values() for s in held}
    return {s: roles.Grants(server.get(s), {w: held[s] for w, held in workspaces.items() if s in held})
            for s in subjects}


def role_for(table: dict[str, roles.Grants], email: str) -> roles.Grants:
    """The roles of an account: per workspace, by its email, else its domain, else ``*``."""
    email = email.lower()
    return roles.first_of(table.get(email), table.get("@" + email.rpartition("@")[2]), table.get("*"))


class IapKeys:
    """IAP's public keys, fetched from ``url`` when first needed and kept for a while."""

    def __init__(self, url: str = GOOGLE_KEYS_URL, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self._clock = clock
        self._keys: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, key_id: str | None) -> dict[str, str]:
        fetched_at = self._fetched_at
        age = self._clock() - fetched_at
        if age > KEYS_MAX_AGE or (key_id not in self._keys and age > KEYS_RETRY_SECONDS):
            with self._lock:
                if self._fetched_at == fetched_at:  # not fetched meanwhile by another thread
                    self._fetch()
        if not self._keys:
            raise IapUnavailableError(f"IAP's public keys could not be fetched from {self.url}")
        return self._keys

    def _fetch(self) -> None:
        self._fetched_at = self._clock()  # also on failure: retried after KEYS_RETRY_SECONDS
        try:
            # the URL is http(s), checked by server/config/
            with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT) as response:  # noqa: S310
                keys = json.loads(response.read(1024 * 1024))
            if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
                raise ValueError("not a JSON object of PEM keys")
        except (OSError, ValueError) as exc:
            log.error("cannot fetch IAP's public keys from %s: %s", self.url, exc)
            return
        self._keys = keys


class IapVerifier:
    """Args:
    audience: the IAP resource's audience, e.g. ``/projects/NUMBER/locations/REGION/services/NAME``
        for Cloud Run's own IAP, ``/projects/NUMBER/global/backendServices/ID`` behind a load balancer.
    roles: callable returning the current ``{email, @domain or *: role}`` table.
    keys: where IAP's public keys come from.
    """

    def __init__(self, audience: str, roles: Callable[[], dict[str, str]], keys: IapKeys):
        self.audience = audience
        self._roles = roles
        self._keys = keys
        self._verified: VerifiedCache[tuple[str, float]] = VerifiedCache()  # (email, expiry)

    def verify(self, assertion: str | None) -> tuple[str, roles.Grants]:
        """(email, its grants, empty for none) of a valid assertion; raises IapError or
        IapUnavailableError."""
        if not assertion:
            raise IapError("no IAP assertion")
        if len(assertion) > MAX_ASSERTION_BYTES:
            raise IapError("the IAP assertion is too long")
        digest = self._verified.digest(assertion)
        known = self._verified.get(digest)
        if known is None or known[1] <= time.time():
            known = self._decode(assertion)
            self._verified.add(digest, known)
        email = known[0]
        return email, role_for(self._roles(), email)

    def _decode(self, assertion: str) -> tuple[str, float]:
        from google.auth import exceptions, jwt

        try:
            header = jwt.decode_header(assertion)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise IapError("the IAP assertion is malformed") from exc
        if header.get("alg") != ALGORITHM:
            raise IapError("the IAP assertion is not signed with ES256")
        certs = self._keys.get(header.get("kid"))
        try:
            claims = jwt.decode(assertion, certs=certs, audience=self.audience,
                                clock_skew_in_seconds=CLOCK_SKEW)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise IapError(f"the IAP assertion is not valid: {exc}") from exc
        if claims.get("iss") != ISSUER:
            raise IapError("the IAP assertion has another issuer")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise IapError("the IAP assertion names no email")
        return email, float(claims["exp"]) + CLOCK_SKEW
