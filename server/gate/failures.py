"""Failed logins and password-hash work, counted once for all the workers of an instance.

Two things a guesser without credentials could otherwise do:

* guess one user's password (or spray names) without end: ``FailureLimiter`` counts failures
  per (client address, user name), refused at ``max_failures`` within ``window`` seconds, and
  per client address across names, at ``address_factor`` times that; a login that succeeds
  clears only its own (address, user) count, and a user who has not failed from an address may
  still log in from it when the address is over its bound. IPv6 clients are counted per /64
  (one subscriber's network), IPv4 clients per address.
* make the server compute password hashes (bcrypt, argon2: ~0.25 s of CPU each) for every bad
  login: ``HashBudget`` gives hash checks a fixed share of one CPU (``share`` seconds of CPU per
  second, with ``burst`` seconds in reserve); past it, a login that would need a hash is refused
  at once, while users already logged in (their credentials verified before, no hash) are
  served as usual.

Both live in a ``SharedCounters`` table: an anonymous shared memory map made in gunicorn's
master before it forks, so every worker sees the same counts, with one inter-process lock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import mmap
import multiprocessing
import secrets
import struct
import time

# one slot: key (64-bit digest), failure count, last failure (monotonic seconds)
_SLOT = struct.Struct("<QId")
_BUDGET = struct.Struct("<dd")  # hash budget: seconds of CPU available, when last refilled
_PROBE = 8


class SharedCounters:
    """A fixed-size table of counters shared by forked processes.

    Args:
        slots: table size; when every slot a key may use holds a live entry, the entry with the
            oldest failure is evicted (a flood of addresses cannot grow memory).
        clock: seconds, the same in every process (``time.monotonic`` is system-wide on Linux).
    """

    def __init__(self, slots: int = 16384, clock=time.monotonic, key: bytes | None = None):
        self.slots = slots
        self._clock = clock
        self._mem = mmap.mmap(-1, _BUDGET.size + slots * _SLOT.size)  # MAP_SHARED: survives fork shared
        self._lock = multiprocessing.get_context("fork").Lock()
        # the digests' key: random, or the one every instance shares when they share counts
        self._key = key or secrets.token_bytes(16)

    def now(self) -> float:
        return self._clock()

    def digest(self, key: str) -> int:
        value = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), key=self._key,
                                               digest_size=8).digest(), "little")
        return value or 1  # 0 marks an empty slot

    def _offset(self, index: int) -> int:
        return _BUDGET.size + (index % self.slots) * _SLOT.size

    def _find(self, digest: int):
        """(offset, count, last) of the key's slot, or None."""
        for step in range(_PROBE):
            offset = self._offset(digest + step)
            key, count, last = _SLOT.unpack_from(self._mem, offset)
            if key == digest:
                return offset, count, last
        return None

    def count(self, key: str, window: float) -> int:
        """Failures of ``key`` within the last ``window`` seconds."""
        digest = self.digest(key)
        with self._lock:
            found = self._find(digest)
        if found is None:
            return 0
        _, count, last = found
        return count if self.now() - last < window else 0

    def add(self, key: str, window: float) -> int:
        """Count one failure of ``key``; returns its count within the window."""
        digest = self.digest(key)
        now = self.now()
        with self._lock:
            found = self._find(digest)
            if found is not None:
                offset, count, last = found
                count = count + 1 if now - last < window else 1
            else:
                offset, count = self._free_slot(digest, now, window), 1
            _SLOT.pack_into(self._mem, offset, digest, count, now)
        return count

    def merge(self, digest: int, count: int, window: float) -> None:
        """Take in another instance's count for the key of ``digest``: at least ``count``
        failures within the window, or, for 0 (a login that succeeded), none."""
        now = self.now()
        with self._lock:
            found = self._find(digest)
            if count == 0:
                if found is not None:
                    _SLOT.pack_into(self._mem, found[0], 0, 0, 0.0)
                return
            if found is not None:
                offset, current, last = found
                current = current if now - last < window else 0
            else:
                offset, current = self._free_slot(digest, now, window), 0
            if count > current:
                _SLOT.pack_into(self._mem, offset, digest, count, now)

    def clear(self, key: str) -> None:
        digest = self.digest(key)
        with self._lock:
            found = self._find(digest)
            if found is not None:
                _SLOT.pack_into(self._mem, found[0], 0, 0, 0.0)

    def _free_slot(self, digest: int, now: float, window: float) -> int:
        oldest_offset, oldest = None, None
        for step in range(_PROBE):
            offset = self._offset(digest + step)
            key, _, last = _SLOT.unpack_from(self._mem, offset)
            if key == 0 or now - last >= window:
                return offset
            if oldest is None or last < oldest:
                oldest_offset, oldest = offset, last
        return oldest_offset

    # the hash budget's two numbers sit in front of the slots, under the same lock

    def take_budget(self, share: float, burst: float) -> bool:
        """Whether a hash check may start now (the budget, refilled, is above zero)."""
        now = self.now()
        with self._lock:
            available, refilled = _BUDGET.unpack_from(self._mem, 0)
            if refilled == 0.0:
                available = burst  # first use: a full reserve
            else:
                available = min(burst, available + (now - refilled) * share)
            _BUDGET.pack_into(self._mem, 0, available, now)
            return available > 0

    def spend_budget(self, seconds: float) -> None:
        with self._lock:
            available, refilled = _BUDGET.unpack_from(self._mem, 0)
            _BUDGET.pack_into(self._mem, 0, available - seconds, refilled)


def client_key(address: str) -> str:
    """The unit a client is counted in: an IPv4 address, or an IPv6 /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimiter:
    """Args:
    max_failures: failed logins for one user name from one client within ``window``
        before that pair is refused (429).
    window: seconds a failure is remembered; a refused client waits this long after its
        last failure.
    address_factor: failures from one client across all names allowed, as a multiple of
        ``max_failures``; past it, only names that have not failed from there may try.
    counters: the shared table (made before the workers fork).
    fleet: shares the counts with the other instances (``server/gate/fleet_failures.py``), or None.
    """

    def __init__(self, max_failures: int, window: float, address_factor: int = 10,
                 counters: SharedCounters | None = None, fleet=None):
        self.max_failures = max_failures
        self.window = window
        self.max_address_failures = max_failures * address_factor
        self.counters = counters or SharedCounters()
        self.fleet = fleet

    @staticmethod
    def _keys(client: str, user: str) -> tuple[str, str]:
        unit = client_key(client)
        return f"pair\0{unit}\0{user}", f"addr\0{unit}"

    def retry_after(self, client: str, user: str) -> int:
        """Seconds to wait before ``user`` may try again from ``client``, or 0."""
        pair, address = self._keys(client, user)
        pair_count = self.counters.count(pair, self.window)
        if pair_count >= self.max_failures:
            return int(self.window)
        if pair_count and self.counters.count(address, self.window) >= self.max_address_failures:
            return int(self.window)
        return 0

    def record_failure(self, client: str, user: str) -> None:
        pair, address = self._keys(client, user)
        self.counters.add(pair, self.window)
        self.counters.add(address, self.window)
        if self.fleet is not None:
            self.fleet.note(pair)
            self.fleet.note(address)

    def record_success(self, client: str, user: str) -> None:
        pair, _ = self._keys(client, user)
        self.counters.clear(pair)
        if self.fleet is not None:
            self.fleet.clear(pair)


class HashBudget:
    """Args:
    share: seconds of CPU per second that password-hash checks may use, all workers together.
    burst: seconds of hash work that may run at once after a quiet period.
    counters: the shared table (made before the workers fork).
    """

    def __init__(self, share: float = 0.5, burst: float = 2.0, counters: SharedCounters | None = None):
        self.share = share
        self.burst = burst
        self.counters = counters or SharedCounters(slots=1)

    def try_start(self) -> bool:
        return self.counters.take_budget(self.share, self.burst)

    def spend(self, seconds: float) -> None:
        self.counters.spend_budget(seconds)
