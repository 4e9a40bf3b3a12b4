"""Credentials already verified, remembered by a keyed digest (never the credential itself).

Serves the Basic ``Authorization`` values (``server/gate/auth.py``) and the IAP assertions
(``server/gate/iap.py``): a known client's next request costs one keyed hash and a lookup instead of
a password hash or a signature check.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class VerifiedCache(Generic[T]):
    """At most ``max_entries`` verified values, the least recently used dropped first.

    Keyed BLAKE2b is a MAC in its own right and, here, 3x cheaper than HMAC-SHA256 through
    OpenSSL (0.9 vs 2.6 us): this is on every request's path.
    """

    def __init__(self, max_entries: int = 1024):
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, T] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def digest(self, credential: str) -> bytes:
        return hashlib.blake2b(credential.encode("utf-8", "surrogatepass"), key=self._key, digest_size=32).digest()

    def get(self, digest: bytes) -> T | None:
        """What was verified for this digest, or None."""
        with self._lock:
            found = self._entries.get(digest)
            if found is not None:
                self._entries.move_to_end(digest)
            return found

    def add(self, digest: bytes, verified: T) -> None:
        with self._lock:
            self._entries[digest] = verified
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
