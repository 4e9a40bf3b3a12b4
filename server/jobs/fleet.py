"""One instance's share of the fleet's jobs: claim from the shared table, run, keep the lease.

Every instance runs one ``FleetRunner`` (in the job runner process, ``server/jobs/runner.py``).
It takes PENDING jobs from the database with one conditional statement each
(``server/jobs/table.py``), so a job is run by exactly one runner of the whole fleet, whichever
instance took the request; each job runs in a subprocess of its own, as MLflow runs it
(MLflow's ``_prepare_job_subprocess``). While a job runs, its lease is renewed every third of
the lease; a runner that dies stops renewing, and any live runner then settles the job once the
lease has run out (``LOST_RUNNER``). Cancelling a job, on any instance, is seen here within a
second and stops the subprocess.

Exclusive jobs (MLflow's ``@job(exclusive=...)``, online scoring per experiment) take a row of
MLflow's ``job_locks`` table after the claim, keyed by MLflow's own ``_compute_job_lock_key``;
a job that finds the key held by a live job is cancelled, as MLflow's runner does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

from server.jobs.table import CANCELED, PENDING, RUNNING, ClaimedJob, JobTable, LapsedJob

log = logging.getLogger("server.job_fleet")

POLL_SECONDS = 0.5  # how often the queue is looked at, and running jobs' cancellation checked
CLAIM_GRACE_MS = 1000  # a new job's own instance (polling twice within it) takes it before the others

# What happens to a job whose runner died mid-run (its lease ran out), by MLflow 3.17's job
# kinds. Each of them writes its results as it goes, so a second run from the start would write
# part of them twice: they are failed with the reason, never run again. A kind not listed is
# failed too; list a kind here only if running it twice from the start is harmless.
LOST_RUNNER = {
    "invoke_scorer": "it logs an assessment per trace as it goes: a re-run would add a second "
                     "assessment to the traces it had scored; run the judge again on the traces without one",
    "run_online_trace_scorer": "online scoring keeps its progress in the experiment's checkpoint: "
                               "the next minute's scheduling starts a new job from there",
    "run_online_session_scorer": "online scoring keeps its progress in the experiment's checkpoint: "
                                 "the next minute's scheduling starts a new job from there",
    "invoke_issue_detection": "it records issues as it finds them: a re-run would record them twice",
    "invoke_genai_evaluate": "it logs evaluation results to its run as it goes: a re-run would log them twice",
    "optimize_prompts": "it calls the optimizer's models and may have registered prompt versions: "
                        "a re-run would pay for the calls and register them again",
}
RERUN_SAFE: frozenset[str] = frozenset()  # kinds that a lost runner's job is queued again for
RESERVATION_LOST = ("the instance that took this request held its provider credentials and stopped before the job "
                    "started; submit it again")
STOPPED = "the instance running this job stopped (SIGTERM) before the job finished; it is not run again: "


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Held:
    """A job this runner claimed (``popen`` is None until its subprocess starts)."""

    job_id: str
    job_name: str
    popen: subprocess.Popen | None = None
    stop_reason: str | None = None  # set when the job must be stopped: cancelled, or no longer ours


class FleetRunner:
    """Claims and runs jobs until ``stop`` is set.

    ``table`` holds the statements, ``store`` is MLflow's job store (the transitions a finished
    job makes: finish, fail, retry, time out), ``folder`` the instance's job folder where the web
    workers leave what a reserved job needs (``server/jobs/submit.py``).
    """

    def __init__(self, table: JobTable, store, folder: str, lease_seconds: float):
        from mlflow.server.jobs import utils

        self.table = table
        self.store = store
        self.folder = folder
        self.lease_seconds = lease_seconds
        self.name = instance_name()
        self._utils = utils
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._slots = {name: self._function(name)._job_fn_metadata.max_workers
                       for name in utils._job_name_to_fn_fullname_map}
        self._busy: dict[str, int] = dict.fromkeys(self._slots, 0)
        self._stopping = False

    def _function(self, job_name: str):
        return self._utils._load_function(self._utils.get_job_fn_fullname(job_name))

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        log.info("job runner %s takes jobs from the database (lease %.0f s; kinds: %s)", self.name,
                 self.lease_seconds, ", ".join(sorted(self._slots)))
        renew_every = self.lease_seconds / 3
        next_renewal = next_reap = time.monotonic()
        while not stop.is_set():
            try:
                self._watch_held()
                if time.monotonic() >= next_renewal:
                    self._renew()
                    next_renewal = time.monotonic() + renew_every
                if time.monotonic() >= next_reap:
                    self.reap()
                    next_reap = time.monotonic() + renew_every
                self._claim_all()
            except Exception:
                # a database outage: try again on the next poll; running jobs keep running
                log.exception("job runner: coordination step failed; retrying")
            stop.wait(POLL_SECONDS)

    def _left_here(self, suffix: str) -> list[str]:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        return [n[: -len(suffix)] for n in names if n.endswith(suffix)]

    def _reserved(self) -> list[str]:
        """Jobs the web workers of this instance reserved for it (their credentials are here)."""
        return self._left_here(".env.json")

    def _submitted_here(self) -> list[str]:
        """Jobs the web workers of this instance submitted, whoever runs them (markers)."""
        return self._left_here(".local")

    def _claim_all(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                free = [name for name, slots in self._slots.items() if self._busy[name] < slots]
            job = self.table.claim(free, self._reserved() + self._submitted_here(), CLAIM_GRACE_MS)
            if job is None:
                return
            self._start(job)

    def _start(self, job: ClaimedJob) -> None:
        held = _Held(job.job_id, job.job_name)
        with self._lock:
            self._held[job.job_id] = held
            self._busy[job.job_name] += 1
        log.info("job %s (%s) claimed by %s", job.job_id, job.job_name, self.name)
        threading.Thread(target=self._run_job, args=(job, held), name=f"job-{job.job_id}", daemon=True).start()

    def _watch_held(self) -> None:
        """Stop the subprocess of a job that was cancelled, or that this runner no longer holds."""
        with self._lock:
            running = list(self._held.values())
        if not running:
            return
        statuses = self.table.statuses([h.job_id for h in running])
        for held in running:
            status = statuses.get(held.job_id)
            if status == RUNNING:
                continue
            held.stop_reason = "cancelled" if status == CANCELED else f"no longer held (status {status})"
            if held.popen is not None and held.popen.poll() is None:
                log.info("job %s: %s, stopping its subprocess", held.job_id, held.stop_reason)
                held.popen.kill()

    def _renew(self) -> None:
        with self._lock:
            ids = list(self._held)
        ids += [job_id for job_id in self._reserved() if job_id not in ids]
        still = self.table.renew(ids)
        for job_id in set(ids) - still:
            self._forget_reservation(job_id)
        # markers of jobs another instance took (this one was busy), or that ended
        markers = self._submitted_here()
        statuses = self.table.statuses(markers)
        for job_id in markers:
            if statuses.get(job_id) != PENDING:  # taken elsewhere, ended, or deleted
                self._forget_reservation(job_id)

    def _forget_reservation(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._held:
                return
        for suffix in (".env.json", ".local"):
            try:
                os.unlink(os.path.join(self.folder, f"{job_id}{suffix}"))
            except OSError:
                pass

    def reap(self) -> list[LapsedJob]:
        """Settle the jobs whose lease ran out, on whichever instance they ran."""
        settled = []
        for job in self.table.lapsed():
            if job.status == PENDING:
                requeue, reason = False, RESERVATION_LOST
            else:
                requeue = job.job_name in RERUN_SAFE
                reason = ("the instance running this job stopped renewing its lease (it died or lost the database) "
                          "before the job finished; it is not run again: "
                          + LOST_RUNNER.get(job.job_name, "its kind is not known to be safe to run twice"))
            if self.table.settle_lapsed(job, requeue, reason):
                settled.append(job)
                log.warning("job %s (%s): its lease ran out; %s", job.job_id, job.job_name,
                            "queued again" if requeue else "marked FAILED")
        return settled

    # ------------------------------------------------------------------ one job

    def _extra_envs(self, job_id: str, workspace: str | None) -> dict[str, str] | None:
        """What the job's environment adds: the credentials a web worker reserved for it, and
        for a job of a workspace, a credential that is admin in that workspace only."""
        path = os.path.join(self.folder, f"{job_id}.env.json")
        try:
            with open(path) as fh:
                extra = json.load(fh)
        except (OSError, ValueError):
            extra = None
        runner = (os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        if workspace is not None and all(runner):
            from server.gate.auth import job_credential

            name, password = job_credential(runner, workspace)
            extra = {**(extra or {}), "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}
        return extra

    def _run_job(self, job: ClaimedJob, held: _Held) -> None:
        from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
        from mlflow.utils.workspace_context import ServerWorkspaceContext

        workspace = job.workspace if MLFLOW_ENABLE_WORKSPACES.get() else None
        context = ServerWorkspaceContext(workspace) if workspace else nullcontext()
        lock_key = None
        try:
            with context:
                params = json.loads(job.params)
                meta = self._function(job.job_name)._job_fn_metadata
                if meta.exclusive:
                    lock_key = self._utils._compute_job_lock_key(job.job_name, params, meta.exclusive, workspace)
                    if not self.table.acquire_lock(lock_key, job.job_id):
                        lock_key = None
                        log.info("job %s (%s): exclusive key held by a live job; cancelled as MLflow does",
                                 job.job_id, job.job_name)
                        self.store.cancel_job(job.job_id)
                        return
                outcome = self._execute(job, held, meta, params, workspace)
                self._record(job, outcome)
        except Exception as exc:
            if not self._stopping:
                log.exception("job %s (%s) failed in the runner", job.job_id, job.job_name)
                try:
                    with context:
                        self.store.fail_job(job.job_id, repr(exc))
                except Exception:
                    log.exception("job %s: could not record the failure; its lease will run out", job.job_id)
        finally:
            if lock_key is not None:
                try:
                    self.table.release_lock(lock_key, job.job_id)
                except Exception:
                    log.exception("job %s: could not release its exclusive key; it frees when the job is settled",
                                  job.job_id)
            with self._lock:
                self._held.pop(job.job_id, None)
                self._busy[job.job_name] -= 1
            self._forget_reservation(job.job_id)

    def _execute(self, job: ClaimedJob, held: _Held, meta, params: dict, workspace: str | None):
        """Run the job's subprocess as MLflow's ``_exec_job_in_subproc`` does; returns its
        ``_SubprocessJobResult``, or None when it was stopped (cancelled, timed out, lost)."""
        from mlflow.utils.process import _exec_cmd

        utils = self._utils
        with tempfile.TemporaryDirectory() as tmpdir:
            prepared = utils._prepare_job_subprocess(
                meta.fn_fullname, params, meta.python_env, meta.transient_error_classes, tmpdir,
                job.job_id, job.job_name, workspace, self._extra_envs(job.job_id, workspace))
            for setup in prepared.setup_commands:
                _exec_cmd(setup.command, cwd=setup.cwd, extra_env=setup.extra_env, capture_output=False)
            with self._lock:  # once stop() has begun, no job starts: it hands them back instead
                if self._stopping:
                    return None
                popen = held.popen = subprocess.Popen(prepared.command, env=prepared.env)
            started = time.monotonic()
            with popen:
                while popen.poll() is None:
                    time.sleep(0.2)
                    if held.stop_reason is not None or self._stopping:
                        popen.kill()
                        return None
                    if job.timeout is not None and time.monotonic() - started >= job.timeout:
                        popen.kill()
                        self.store.mark_job_timed_out(job.job_id)
                        return None
                if held.stop_reason is not None or self._stopping:
                    return None
                if popen.returncode == 0:
                    return utils._SubprocessJobResult.load(prepared.result_path)
                return utils._SubprocessJobResult.from_error(RuntimeError(
                    f"The subprocess that executes job function {meta.fn_fullname} "
                    f"exited with error code {popen.returncode}"))

    def _record(self, job: ClaimedJob, result) -> None:
        """The job's end in the store, as MLflow's ``_exec_job`` records it."""
        if result is None:
            return
        if result.succeeded:
            self.store.finish_job(job.job_id, result.result)
            log.info("job %s (%s) SUCCEEDED on %s", job.job_id, job.job_name, self.name)
        elif result.is_transient_error:
            # PENDING again, claimable by any runner once the store's backoff has passed
            retries = self.store.retry_or_fail_job(job.job_id, result.error)
            log.info("job %s (%s): transient error, %s", job.job_id, job.job_name,
                     f"retry {retries} queued" if retries is not None else "out of retries, FAILED")
        else:
            log.error("job %s (%s) failed with error: %s", job.job_id, job.job_name, result.error)
            self.store.fail_job(job.job_id, result.error)

    # ------------------------------------------------------------------ stopping

    def stop(self) -> list[str]:
        """The instance is stopping: stop its jobs at once rather than leave them to the lease.
        A job whose subprocess had started may have written part of its results: it is marked
        FAILED with the reason. One that had not is PENDING again, for another instance, as is
        nothing else; a reservation (credentials only this instance held) is FAILED. Returns the
        ids marked FAILED."""
        with self._lock:
            self._stopping = True
            held = list(self._held.values())
        started = [h for h in held if h.popen is not None]
        for h in started:
            if h.popen.poll() is None:
                h.popen.kill()
        reserved = [job_id for job_id in self._reserved() if job_id not in self._held]
        failed, released = [], []
        try:
            released = self.table.release([h.job_id for h in held if h.popen is None])
            for job_name in {h.job_name for h in started}:
                ids = [h.job_id for h in started if h.job_name == job_name]
                failed += self.table.fail_held(ids, STOPPED + LOST_RUNNER.get(job_name, ""))
            failed += self.table.fail_held(reserved, RESERVATION_LOST)
        except Exception:
            log.exception("job runner: could not mark its jobs at stop; their leases will run out")
        if failed or released:
            log.warning("job runner stopping: %d job(s) marked FAILED (%s), %d not started handed back (%s)",
                        len(failed), ", ".join(failed), len(released), ", ".join(released))
        return failed
