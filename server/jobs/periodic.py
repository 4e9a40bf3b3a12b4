"""MLflow's periodic tasks, run once per period across the fleet.

MLflow registers its periodic tasks (online scoring every minute, trace archival, SQL trace
roll-ups on their cron schedule) with ``register_periodic_tasks(huey_instance)``, which only
calls two of the instance's methods as decorators: ``periodic_task(crontab)`` and
``lock_task(name)``. ``FleetSchedule`` stands in for that instance. Each minute (UTC, as huey's
crontabs are read) every instance looks at the tasks due; each due task first takes its lease in
MLflow's ``scheduler_leases`` table (``server/jobs/table.py``), so one instance in the fleet runs
it in that period and the others skip it. The lease is renewed while the task runs, so a task
that outlasts its period is never run twice at once (what huey's ``lock_task`` gave on one
instance), and when it ends the lease is set to run out ``LEASE_SECONDS`` after its claim, inside
the period it was claimed in. Instances' clocks must agree within ``60 - LEASE_SECONDS`` seconds
(Cloud Run's do, to milliseconds).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass

from server.jobs.table import JobTable

log = logging.getLogger("server.job_periodic")

LEASE_SECONDS = 45  # less than a period (a minute), more than instances' clocks disagree by
RENEW_SECONDS = 15


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    due: object  # huey crontab: datetime -> bool
    fn: object


class FleetSchedule:
    """What ``register_periodic_tasks`` needs of a huey instance, with fleet-wide leases."""

    def __init__(self, table: JobTable, lease_seconds: int = LEASE_SECONDS):
        self.table = table
        self.lease_seconds = lease_seconds
        self.tasks: list[PeriodicTask] = []
        self.runs = 0  # tasks this instance ran (its share of the fleet's)

    # the two huey methods MLflow calls
    def periodic_task(self, validate_datetime, **_):
        def register(fn):
            self.tasks.append(PeriodicTask(fn.__name__, validate_datetime, fn))
            return fn
        return register

    def lock_task(self, name):
        # every periodic task already runs under its fleet lease, which also keeps it from
        # overlapping itself; this is the name MLflow gave that per-instance lock
        def keep(fn):
            return fn
        return keep

    # ------------------------------------------------------------------

    def run_once(self, task: PeriodicTask) -> bool:
        """Run ``task`` if this instance wins its lease for the period; whether it ran."""
        key = f"mlflow-server:periodic:{task.name}"
        claimed = self.table.claim_period(key, self.lease_seconds)
        if claimed is None:
            return False
        stamp = [claimed]
        done = threading.Event()

        def renew():
            while not done.wait(min(RENEW_SECONDS, self.lease_seconds / 3)):
                try:
                    stamp[0] = self.table.renew_period(key, stamp[0]) or stamp[0]
                except Exception:
                    log.exception("periodic task %s: lease renewal failed", task.name)

        renewer = threading.Thread(target=renew, name=f"lease-{task.name}", daemon=True)
        renewer.start()
        try:
            self.runs += 1
            log.info("periodic task %s: this instance runs it for this period", task.name)
            task.fn()
        except Exception:
            log.exception("periodic task %s failed", task.name)
        finally:
            done.set()
            renewer.join()
            try:
                self.table.end_period(key, stamp[0], claimed)
            except Exception:
                log.exception("periodic task %s: could not end its lease; it runs out by itself", task.name)
        return True

    def due(self, now: datetime.datetime) -> list[PeriodicTask]:
        return [t for t in self.tasks if t.due(now)]

    def run_forever(self, stop: threading.Event) -> None:
        """At the start of every minute, each due task in a thread of its own."""
        log.info("periodic tasks, once per period across instances: %s", ", ".join(t.name for t in self.tasks))
        while not stop.wait(60 - time.time() % 60):
            minute = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, second=0, microsecond=0)
            for task in self.due(minute):
                threading.Thread(target=self._guarded, args=(task,), name=f"periodic-{task.name}",
                                 daemon=True).start()

    def _guarded(self, task: PeriodicTask) -> None:
        try:
            self.run_once(task)
        except Exception:
            log.exception("periodic task %s: could not take its lease", task.name)
