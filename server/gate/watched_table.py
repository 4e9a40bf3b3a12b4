"""Keeps a table read from mounted secret files (the users, the IAP roles) in step with them.

Cloud Run secret volumes (with ``latest``) and compose secrets can change under a running server.
When one of the files the table came from changes, it is read again through ``reload``;
if that fails (file removed, emptied, malformed) the error is logged without any value and the
last good table stays in force, so a bad rotation never takes the server down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("server.users")  # the name its log lines have always had

T = TypeVar("T")  # what the table maps each name to (a User, a role)


def _signature(paths: tuple[str, ...]) -> tuple:
    sig = []
    for path in paths:
        try:
            st = os.stat(path)
            sig.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append(None)
    return tuple(sig)


class WatchedTable(Generic[T]):
    """Args:
    initial: the table read at start-up.
    paths: the files it was read from (empty: nothing to watch).
    reload: reads the table again; raises on a problem.
    interval: seconds between two looks at the files.
    label: what the table holds, for the log ("users", "IAP roles").
    """

    def __init__(
        self,
        initial: dict[str, T],
        paths: tuple[str, ...],
        reload: Callable[[], dict[str, T]],
        interval: float = 2.0,
        clock=time.monotonic,
        label: str = "users",
    ):
        self._label = label
        self._table = initial
        self._paths = paths
        self._reload = reload
        self._interval = interval
        self._clock = clock
        self._signature = _signature(paths)
        self._next_look = clock() + interval
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, T]:
        if self._paths and self._clock() >= self._next_look:
            self._maybe_reload()
        return self._table

    def _maybe_reload(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            self._next_look = self._clock() + self._interval
            signature = _signature(self._paths)
            if signature == self._signature:
                return
            self._signature = signature
            missing = [p for p, sig in zip(self._paths, signature, strict=True) if sig is None]
            if missing:
                # a removed secret is a broken rotation, not "no users from this source"
                log.error("%s secret file %s is missing; keeping the previous %s", self._label, ", ".join(missing), self._label)
                return
            try:
                table = self._reload()
            except Exception as exc:  # noqa: BLE001 - keep serving with the last good table
                log.error("%s secret changed but cannot be used; keeping the previous %s: %s", self._label, self._label, exc)
                return
            self._table = table
            log.info("%s secret changed; %d entr%s now configured", self._label, len(table), "y" if len(table) == 1 else "ies")
        finally:
            self._lock.release()
