"""Submitting a job puts it in the database, where every instance's runner can take it.

MLflow's ``submit_job`` writes the job's row (PENDING) and then hands the job to a huey queue
of the process's own (``_get_or_init_huey_instance(name).submit_task(...)``): a SQLite file
only this instance reads. Here that hand-off is replaced: the row is the queue
(``server/jobs/fleet.py``), so the hand-off only has to keep what the row does not hold: which
instance took the request (an empty marker file, so that its runner takes the job first), and
the ``extra_envs`` of issue detection, the provider credentials read from the AI gateway's
secret store: they are written to a file only this instance's runner reads (mode 0600, in the
instance's in-memory job folder), and the job is reserved for this instance, since no other
could run it with them. Nothing secret is written to the database.
"""

from __future__ import annotations

import json
import os
import threading

from server.jobs.table import JobTable

_table: JobTable | None = None
_table_lock = threading.Lock()


def _job_table(lease_seconds: float) -> JobTable:
    global _table
    with _table_lock:
        if _table is None:
            from mlflow.server.handlers import _get_job_store

            _table = JobTable(_get_job_store().engine, int(lease_seconds * 1000))
        return _table


class DatabaseQueue:
    """Stands in for the ``HueyInstance`` MLflow's ``submit_job`` hands a new job to."""

    instance = None  # no huey: nothing here consumes jobs

    def __init__(self, folder: str, lease_seconds: float):
        self.folder = folder
        self.lease_seconds = lease_seconds

    def submit_task(self, job_id, workspace, job_name, params, timeout, exclusive, extra_envs=None):
        if not extra_envs:
            # the PENDING row is all any runner needs; this marker lets this instance's take it
            # at once, while the others give it a moment (server/jobs/fleet.py, CLAIM_GRACE_MS)
            os.close(os.open(os.path.join(self.folder, f"{job_id}.local"), os.O_WRONLY | os.O_CREAT, 0o600))
            return
        path = os.path.join(self.folder, f"{job_id}.env.json")
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(extra_envs, fh)
        os.replace(f"{path}.tmp", path)
        _job_table(self.lease_seconds).reserve(job_id)


def install(folder: str, lease_seconds: float) -> None:
    """In every process that may submit jobs (the web workers, the job runner's periodic tasks)."""
    from mlflow.server.jobs import utils

    queue = DatabaseQueue(folder, lease_seconds)
    utils._get_or_init_huey_instance = lambda instance_key: queue
