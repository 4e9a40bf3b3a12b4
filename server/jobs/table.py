"""The statements that make MLflow's ``jobs`` table a queue shared by every instance.

MLflow 3.17's tables already hold what a fleet needs: a job's ``status``, a
``lease_expires_at`` (milliseconds since the epoch) that its executor engine renews, a
``job_locks`` table for exclusive jobs and a ``scheduler_leases`` table for periodic work. Its
default (huey) engine ignores them and keeps queues and locks in per-instance SQLite files;
these statements use the tables instead, so that every instance of every revision sharing the
database sees the same queue, the same leases and the same locks. Every time is the database's
clock (instances' clocks may disagree), every change is one conditional statement (two
instances can try the same change; one wins).

A job's lifecycle here, by its row:

* ``PENDING``, no lease: free; any runner claims it (``claim``).
* ``PENDING`` with a lease: reserved by the instance that took the request, which holds
  something for it that only it has (the provider credentials of issue detection). Only that
  instance claims it; if the lease runs out, the job is failed with that reason (``reap``).
* ``RUNNING`` with a lease: a live runner holds it and renews the lease (``renew``).
* ``RUNNING`` whose lease ran out: its runner is gone; ``reap`` fails it, or queues it again
  for job kinds that are safe to run twice.

Written for PostgreSQL (``FOR UPDATE SKIP LOCKED``) and SQLite (local mode, one instance,
where every write holds the database lock anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy
from sqlalchemy import bindparam, text

# MLflow's JobStatus.to_int() values (mlflow/entities/_job_status.py), checked by internals.py
PENDING, RUNNING, SUCCEEDED, FAILED, TIMEOUT, CANCELED, NEEDS_RECOVERY = 0, 1, 2, 3, 4, 5, 6

_NOW_MS = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
}

# The runtime columns MLflow clears whenever a job leaves RUNNING (its _transient_field_update_values)
_CLEAR_RUNTIME = ("lease_expires_at = NULL, status_message = NULL, progress = NULL, progress_updated_at = NULL, "
                  "token_hash = NULL, scoped_permissions = NULL, next_attempt_at = NULL")


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    job_name: str
    params: str
    timeout: float | None
    workspace: str | None


@dataclass(frozen=True)
class LapsedJob:
    """A job whose lease ran out: its runner (or the instance that reserved it) is gone."""

    job_id: str
    job_name: str
    status: int  # PENDING (a reservation) or RUNNING
    lease_expires_at: int | None


class JobTable:
    """The shared queue's statements, on an engine of their own.

    ``lease_ms`` is how long a claim or a renewal holds a job; ``legacy_ms`` how long a RUNNING
    job without a lease (started by a runner that does not renew, e.g. an older revision's)
    counts as alive after its last update.
    """

    def __init__(self, engine: sqlalchemy.engine.Engine, lease_ms: int, legacy_ms: int = 600_000):
        dialect = engine.dialect.name
        if dialect not in _NOW_MS:
            raise ValueError(f"job coordination supports PostgreSQL and SQLite, not {dialect}")
        self.engine = engine
        self.lease_ms = lease_ms
        self.legacy_ms = legacy_ms
        self._fragments = {
            "{now}": _NOW_MS[dialect],
            "{skip_locked}": "FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else "",
            "{clear_runtime}": _CLEAR_RUNTIME,
        }

    def _run(self, statement: str, params: dict | None = None, expanding: tuple[str, ...] = ()):
        """Run one statement in a transaction of its own; the rows it returns, as a list."""
        for name, fragment in self._fragments.items():
            statement = statement.replace(name, fragment)
        clause = text(statement).bindparams(*(bindparam(name, expanding=True) for name in expanding))
        values = {"pending": PENDING, "running": RUNNING, "failed": FAILED, "canceled": CANCELED,
                  "needs_recovery": NEEDS_RECOVERY, "lease": self.lease_ms, "legacy": self.legacy_ms, **(params or {})}
        with self.engine.begin() as conn:
            result = conn.execute(clause, values)
            return list(result) if result.returns_rows else result.rowcount

    def now_ms(self) -> int:
        return int(self._run("SELECT {now}")[0][0])

    # ------------------------------------------------------------------ jobs

    def claim(self, job_names: list[str], reserved: list[str], grace_ms: int) -> ClaimedJob | None:
        """Take the oldest runnable PENDING job of one of ``job_names``: a free one created at
        least ``grace_ms`` ago (the instance that took it gets the first go), or one of this
        instance's own ``reserved`` ones. None when there is none."""
        if not job_names:
            return None
        rows = self._run(
            """UPDATE jobs SET status = :running, lease_expires_at = {now} + :lease, last_update_time = {now}
               WHERE status = :pending AND id = (
                   SELECT id FROM jobs
                   WHERE status = :pending AND job_name IN :names
                     AND (next_attempt_at IS NULL OR next_attempt_at <= {now})
                     AND ((lease_expires_at IS NULL AND creation_time <= {now} - :grace) OR id IN :reserved)
                   ORDER BY creation_time LIMIT 1 {skip_locked})
               RETURNING id, job_name, params, timeout, workspace""",
            {"names": list(job_names), "reserved": list(reserved) or [""], "grace": grace_ms},
            expanding=("names", "reserved"))
        return ClaimedJob(*rows[0]) if rows else None

    def reserve(self, job_id: str) -> bool:
        """Hold a PENDING job for this instance (see the module's docstring)."""
        return self._run("UPDATE jobs SET lease_expires_at = {now} + :lease WHERE id = :id AND status = :pending",
                         {"id": job_id}) == 1

    def renew(self, job_ids: list[str]) -> set[str]:
        """Extend the leases of the jobs this instance holds; returns those still held."""
        if not job_ids:
            return set()
        rows = self._run(
            """UPDATE jobs SET lease_expires_at = {now} + :lease
               WHERE id IN :ids AND status IN (:pending, :running) AND lease_expires_at IS NOT NULL
               RETURNING id""", {"ids": list(job_ids)}, expanding=("ids",))
        return {row[0] for row in rows}

    def statuses(self, job_ids: list[str]) -> dict[str, int]:
        """Each job's status, for the ones that still exist."""
        if not job_ids:
            return {}
        rows = self._run("SELECT id, status FROM jobs WHERE id IN :ids", {"ids": list(job_ids)}, expanding=("ids",))
        return dict(rows)

    def lapsed(self) -> list[LapsedJob]:
        """Jobs whose lease ran out: RUNNING ones and reservations."""
        rows = self._run(
            """SELECT id, job_name, status, lease_expires_at FROM jobs
               WHERE (status = :running AND lease_expires_at IS NOT NULL AND lease_expires_at < {now})
                  OR (status = :running AND lease_expires_at IS NULL AND last_update_time < {now} - :legacy)
                  OR (status = :pending AND lease_expires_at IS NOT NULL AND lease_expires_at < {now})
               ORDER BY creation_time""")
        return [LapsedJob(*row) for row in rows]

    def settle_lapsed(self, job: LapsedJob, requeue: bool, reason: str) -> bool:
        """Fail (or, with ``requeue``, make PENDING again) a lapsed job, unless another instance
        already did or its runner renewed the lease in the meantime."""
        settle = ("UPDATE jobs SET status = :pending, result = NULL, retry_count = retry_count + 1," if requeue
                  else "UPDATE jobs SET status = :failed, result = :reason,")
        return self._run(
            settle + """ last_update_time = {now}, {clear_runtime}
               WHERE id = :id AND status = :status
                 AND (lease_expires_at = :held_until OR (lease_expires_at IS NULL AND :held_until IS NULL))""",
            {"id": job.job_id, "status": job.status, "reason": reason, "held_until": job.lease_expires_at}) == 1

    def fail_held(self, job_ids: list[str], reason: str) -> list[str]:
        """Fail the unfinished jobs this instance holds (it is stopping); returns their ids."""
        if not job_ids:
            return []
        rows = self._run(
            """UPDATE jobs SET status = :failed, result = :reason, last_update_time = {now}, {clear_runtime}
               WHERE id IN :ids AND status IN (:pending, :running) AND lease_expires_at IS NOT NULL
               RETURNING id""", {"ids": list(job_ids), "reason": reason}, expanding=("ids",))
        return [row[0] for row in rows]

    def release(self, job_ids: list[str]) -> list[str]:
        """Hand back claimed jobs that never started (this instance is stopping): PENDING again,
        for any runner; returns their ids."""
        if not job_ids:
            return []
        rows = self._run(
            """UPDATE jobs SET status = :pending, last_update_time = {now}, {clear_runtime}
               WHERE id IN :ids AND status = :running AND lease_expires_at IS NOT NULL
               RETURNING id""", {"ids": list(job_ids)}, expanding=("ids",))
        return [row[0] for row in rows]

    # ------------------------------------------------------------------ exclusive jobs

    def acquire_lock(self, lock_key: str, job_id: str) -> bool:
        """Take ``lock_key`` for ``job_id`` unless a live job of another id holds it: one running
        under a live lease, or cancelled a moment ago (its runner kills it within a second and
        then releases the key)."""
        rows = self._run(
            """INSERT INTO job_locks (lock_key, job_id, acquired_at) VALUES (:key, :job, {now})
               ON CONFLICT (lock_key) DO UPDATE SET job_id = excluded.job_id, acquired_at = excluded.acquired_at
               WHERE NOT EXISTS (
                   SELECT 1 FROM jobs holder WHERE holder.id = job_locks.job_id AND holder.id <> :job AND (
                        (holder.status IN (:running, :needs_recovery) AND holder.lease_expires_at > {now})
                     OR (holder.status = :running AND holder.lease_expires_at IS NULL
                         AND holder.last_update_time > {now} - :legacy)
                     OR (holder.status = :canceled AND holder.last_update_time > {now} - :lease)))
               RETURNING job_id""", {"key": lock_key, "job": job_id})
        return bool(rows)

    def release_lock(self, lock_key: str, job_id: str) -> None:
        self._run("DELETE FROM job_locks WHERE lock_key = :key AND job_id = :job", {"key": lock_key, "job": job_id})

    # ------------------------------------------------------------------ periodic tasks

    def claim_period(self, lease_key: str, ttl_seconds: int) -> int | None:
        """Take the periodic lease ``lease_key`` if nobody holds it; returns its stamp or None."""
        rows = self._run(
            """INSERT INTO scheduler_leases (lease_key, acquired_at, ttl_seconds) VALUES (:key, {now}, :ttl)
               ON CONFLICT (lease_key) DO UPDATE SET acquired_at = excluded.acquired_at,
                                                     ttl_seconds = excluded.ttl_seconds
               WHERE scheduler_leases.acquired_at + scheduler_leases.ttl_seconds * 1000 <= excluded.acquired_at
               RETURNING acquired_at""", {"key": lease_key, "ttl": ttl_seconds})
        return int(rows[0][0]) if rows else None

    def renew_period(self, lease_key: str, stamp: int) -> int | None:
        """Restart the holder's lease; the new stamp, or None if it was lost."""
        rows = self._run("""UPDATE scheduler_leases SET acquired_at = {now}
                            WHERE lease_key = :key AND acquired_at = :stamp RETURNING acquired_at""",
                         {"key": lease_key, "stamp": stamp})
        return int(rows[0][0]) if rows else None

    def end_period(self, lease_key: str, stamp: int, claimed_at: int) -> None:
        """The work is done: the lease now runs out its ttl after the claim, so it still covers
        the rest of its period but never the next one."""
        self._run("UPDATE scheduler_leases SET acquired_at = :claimed WHERE lease_key = :key AND acquired_at = :stamp",
                  {"key": lease_key, "stamp": stamp, "claimed": claimed_at})
