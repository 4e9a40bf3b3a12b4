"""Failed-login counts shared by every instance of the fleet, through the database.

``FailureLimiter`` counts failures in the instance's shared memory (``server/gate/failures.py``), so
with N instances behind a load balancer a guesser would get N times the bound. ``FleetFailures``
closes that without touching the request path: each worker notes the failures (and successful
logins) it records, and once a second a thread adds them to the fleet's counts in one
statement and reads back every count that changed in the fleet since its last look, which it
merges into the instance's table, where the next ``retry_after`` finds them. So the bound per
address and user is the configured one plus what arrives within about two seconds (up to a
second until a failure is sent, up to a second until the other instances read it), and a login
that succeeds clears its pair on every instance. The cost: one small read per worker
a second, and a write only in a second when a login failed or succeeded after a failure.

Keys are the instance table's own digests, keyed with a key every instance derives from the
backend store's URI (``fleet_key``): the database holds no user name and no address.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable

import sqlalchemy
from sqlalchemy.dialects import postgresql

from server.borrowed.own_tables import LOGIN_FAILURES
from server.gate.failures import SharedCounters

log = logging.getLogger("server.fleet_failures")

FLUSH_SECONDS = 1.0
MAX_PENDING = 4096  # keys held between two flushes; past it, new keys wait for the next one
_NOW_MS = sqlalchemy.literal_column("(CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))",
                                   sqlalchemy.BigInteger)


def fleet_key(backend_store_uri: str) -> bytes:
    """The digests' key, the same on every instance, unknown without the database's URI."""
    return hashlib.blake2b(backend_store_uri.encode(), digest_size=16, person=b"mlflow-fail").digest()


class FleetFailures:
    """Args:
    engine: returns the SQLAlchemy engine to use (the worker's own pool, made after the fork).
    counters: the instance's table (made with ``fleet_key``), which the fleet's counts join.
    window: seconds a failure counts (``FailureLimiter.window``).
    """

    def __init__(self, engine: Callable[[], sqlalchemy.Engine], counters: SharedCounters, window: float):
        self._engine = engine
        self._counters = counters
        self._window = window
        self._window_ms = int(window * 1000)
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # digest: failures since the last flush; 0: a success
        self._seen_ms: int | None = None  # the database time of the last look
        self._thread_pid = 0  # the thread runs in each worker, started after the fork

    def note(self, key: str) -> None:
        self._add(self._counters.digest(key), 1)

    def clear(self, key: str) -> None:
        self._add(self._counters.digest(key), 0)

    def _add(self, digest: int, failures: int) -> None:
        with self._lock:
            if digest in self._pending or len(self._pending) < MAX_PENDING:
                self._pending[digest] = self._pending.get(digest, 0) + failures if failures else 0
        if self._thread_pid != os.getpid():
            self._thread_pid = os.getpid()
            threading.Thread(target=self._run, name="fleet-failures", daemon=True).start()

    def _run(self) -> None:
        warned = 0.0
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:
                # a database outage: once a minute in the log, not once a second per worker
                if time.monotonic() - warned >= 60:
                    warned = time.monotonic()
                    log.warning("could not share failed-login counts with the other instances; retrying",
                                exc_info=True)

    def flush(self) -> None:
        """Send what was noted here since the last flush; take in what changed elsewhere."""
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            changed, now = self._exchange(pending)
        except Exception:
            with self._lock:  # sent with the next flush, once the database answers again
                for digest, failures in pending.items():
                    self._pending[digest] = self._pending.get(digest, 0) + failures if failures else 0
            raise
        self._seen_ms = now
        for key, failures in changed:
            self._counters.merge(int(key, 16), failures, self._window)

    def _exchange(self, pending: dict[int, int]):
        """One transaction: add ``pending``, read what changed since the last look."""
        table = LOGIN_FAILURES
        with self._engine().begin() as conn:
            now = conn.execute(sqlalchemy.select(_NOW_MS)).scalar_one()
            if pending:
                insert = postgresql.insert(table).values(
                    [{"key": _hex(d), "failures": n, "last_ms": now} for d, n in pending.items()])
                stale = table.c.last_ms < insert.excluded.last_ms - self._window_ms
                conn.execute(insert.on_conflict_do_update(index_elements=[table.c.key], set_={
                    # a success (0) clears; a failure adds to a count still within the window
                    "failures": sqlalchemy.case((insert.excluded.failures == 0, 0), (stale, insert.excluded.failures),
                                                else_=table.c.failures + insert.excluded.failures),
                    "last_ms": insert.excluded.last_ms}))
            since = now - self._window_ms if self._seen_ms is None else self._seen_ms - 2000
            changed = conn.execute(sqlalchemy.select(table.c.key, table.c.failures)
                                   .where(table.c.last_ms >= since)).all()
            if self._seen_ms is None or now // 60_000 != self._seen_ms // 60_000:
                conn.execute(table.delete().where(table.c.last_ms < now - self._window_ms))  # once a minute
        return changed, now


def _hex(digest: int) -> str:
    return f"{digest:016x}"
