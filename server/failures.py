"""Counting failed logins per client, to refuse a client that keeps guessing.

A client that fails ``max_failures`` times within ``window`` seconds is refused (429) until
``window`` seconds after its last failure. Other clients are not affected. The table lives in
one worker process: with W workers a guesser gets at most W x max_failures tries a window.
"""

from __future__ import annotations

import threading
import time


class FailureLimiter:
    """Args:
    max_failures: failures allowed inside one window before the client is refused.
    window: seconds a failure is remembered; a refused client waits this long after its
        last failure.
    max_clients: bound on the table, so a flood of addresses cannot grow memory without end.
    """

    def __init__(self, max_failures: int, window: float, max_clients: int = 10_000, clock=time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (count, last failure time)

    def retry_after(self, client: str) -> int:
        """Seconds the client must wait, or 0 when it may try."""
        if client not in self._failures:  # the common case, without the lock (a dict read is atomic)
            return 0
        with self._lock:
            entry = self._failures.get(client)
            if entry is None:
                return 0
            count, last = entry
            elapsed = self._clock() - last
            if elapsed >= self.window:
                del self._failures[client]
                return 0
            if count >= self.max_failures:
                return max(1, int(self.window - elapsed + 0.999))
            return 0

    def record_failure(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            count, last = self._failures.get(client, (0, now))
            if now - last >= self.window:
                count = 0
            self._failures[client] = (count + 1, now)
            if len(self._failures) > self.max_clients:
                self._evict(now)

    def record_success(self, client: str) -> None:
        if client not in self._failures:  # nothing to forget: no lock on every request
            return
        with self._lock:
            self._failures.pop(client, None)

    def _evict(self, now: float) -> None:
        stale = [c for c, (_, last) in self._failures.items() if now - last >= self.window]
        for client in stale:
            del self._failures[client]
        while len(self._failures) > self.max_clients:  # still full: forget the oldest
            oldest = min(self._failures, key=lambda c: self._failures[c][1])
            del self._failures[oldest]
