"""Several of our servers on one PostgreSQL behave as one server for MLflow's jobs
(server/jobs/fleet.py, server/jobs/periodic.py): what Cloud Run does to them (scale out, scale
in, a container killed whole, a deploy's overlap) never runs a job twice or leaves one behind.

Each server is started as the container starts it (``entry-point.sh``) and driven by the stock
client and the UI's own calls; the judges are LLM judges on an AI-gateway endpoint whose model
is an OpenAI-compatible stand-in on loopback (``tests/llm_stand_in.py``), which takes a few
milliseconds a call, as a model does, and counts the calls. The tests print the figures the
issue asks for: runs per job, assessments and judge calls per trace, seconds to settle a dead
instance's job, periodic runs per period.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE, USERS_FILE, figure
from tests.llm_stand_in import ChatStandIn
from tests.services import (
    ROOT,
    Postgres,
    Server,
    open_connections,
    process_tree,
    run_client,
    start_together,
    wait_for,
    web_processes,
)

pytestmark = pytest.mark.reliability

LEASE_SECONDS = 6  # short, so a dead instance's job is settled within the test
FLEET_ENV = {
    "MLFLOW_AUTH_MAX_FAILURES": "100000", "MLFLOW_SERVER_JOB_LEASE_TTL": str(LEASE_SECONDS),
    # one judge job for all the traces it is given (MLflow's default splits them by 100)
    "MLFLOW_SERVER_SCORER_INVOKE_BATCH_SIZE": "1000",
    # the judges' model is on loopback: an operator's choice, as for a private LLM endpoint
    "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https", "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
    # online scoring takes traces as soon as they are in (MLflow waits 5 minutes for a trace to complete)
    "MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS": "0",
}
SCRIPT = ROOT / "tests" / "fleet_script.py"
TRACES = 240
JUDGE_SECONDS = 0.05  # the stand-in model's time per call
SCORERS = ("mid_job", "killed", "stopped", "after_stop", "overlap", "cancelled")
TERMINAL = ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED")
STATUS = {0: "PENDING", 1: "RUNNING", 2: "SUCCEEDED", 3: "FAILED", 4: "TIMEOUT", 5: "CANCELED", 6: "NEEDS_RECOVERY"}


@dataclass
class Fleet:
    postgres: Postgres
    database: str
    workdir: Path
    secrets: dict[str, str]
    experiment_id: str
    trace_ids: list[str]
    scorers: dict[str, str]

    def server(self, name: str, **env: str) -> Server:
        return Server(self.workdir / f"{name}-{time.monotonic_ns()}", {**FLEET_ENV, **env}, self.secrets)

    def job(self, job_id: str) -> tuple[str, str | None]:
        [(status, result)] = self.postgres.query(self.database, "SELECT status, result FROM jobs WHERE id = %s",
                                                 (job_id,))
        return STATUS[status], result

    def wait(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> str:
        wait_for(lambda: self.job(job_id)[0] in statuses, timeout, f"job {job_id} to be {'/'.join(statuses)}")
        return self.job(job_id)[0]

    def assessments(self, name: str) -> dict[str, int]:
        """How many assessments of the judge ``name`` each trace has."""
        return dict(self.postgres.query(self.database, "SELECT trace_id, count(*) FROM assessments WHERE name = %s "
                                                       "GROUP BY trace_id", (name,)))


def client(server: Server, *args: str, env: dict[str, str] | None = None) -> dict:
    done, out = run_client(SCRIPT, list(args), server.url, ALICE, timeout=300,
                           env={"MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def llm():
    with ChatStandIn(delay=JUDGE_SECONDS) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def fleet(workdir, postgres, llm):
    uri = postgres.create_database("fleet")
    secrets = {"mlflow_backend_store_uri": uri, "mlflow_artifacts_destination": str(workdir / "fleet-artifacts"),
               "mlflow_auth_users": USERS_FILE}
    seeder = Server(workdir / "fleet-seed", FLEET_ENV, secrets).start()
    try:
        seed = client(seeder, "judges", llm.api_base, str(TRACES), "fleet", *SCORERS)
    finally:
        seeder.stop()
    return Fleet(postgres, "fleet", workdir, secrets, seed["experiment_id"], seed["trace_ids"], seed["scorers"])


def run_judge(fleet: Fleet, server: Server, scorer: str, trace_ids: list[str]) -> str:
    """The UI's "Run judge" on ``trace_ids``: the id of the job it starts."""
    response = requests.post(f"{server.url}/ajax-api/3.0/mlflow/scorer/invoke", auth=ALICE, timeout=60, json={
        "experiment_id": fleet.experiment_id, "serialized_scorer": fleet.scorers[scorer],
        "trace_ids": trace_ids, "log_assessments": True})
    assert response.status_code == 200, response.text
    [job] = response.json()["jobs"]
    return job["job_id"]


def claims(job_id: str, servers: list[Server]) -> dict[str, int]:
    """How many times each server's runner claimed the job (from their logs)."""
    return {s.workdir.name: sum(1 for line in s.logs().splitlines() if f"job {job_id} (" in line and "claimed by" in line)
            for s in servers}


def claimed_by(job_id: str, servers: list[Server]) -> Server:
    wait_for(lambda: sum(claims(job_id, servers).values()) > 0, 30, f"a runner to claim job {job_id}")
    return next(s for s in servers if claims(job_id, servers)[s.workdir.name])


def start_with_runner(server: Server) -> None:
    """Start an instance beside the running ones; return once its job runner is up."""
    server.start()
    wait_for(lambda: "MLflow job runner ready" in server.logs(), 60, "the new instance's job runner")


def kill_whole(server: Server) -> None:
    """As a container dies: every process of it at once, runner and jobs included, no SIGTERM."""
    for pid in process_tree(server.proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(10)


def test_a_second_instance_starting_mid_job_runs_nothing_twice(fleet, llm):
    a = fleet.server("a").start()
    b = fleet.server("b")
    try:
        job = run_judge(fleet, a, "mid_job", fleet.trace_ids)
        fleet.wait(job, ("RUNNING",), 30)
        start_with_runner(b)
        assert fleet.job(job)[0] == "RUNNING", "the job ended before the second instance's runner was up"
        runner = [p for p in process_tree(b.proc.pid) if p not in web_processes(b.proc.pid)]
        idle_connections = open_connections(runner, fleet.postgres.port)
        status = fleet.wait(job, TERMINAL, 240)
        time.sleep(3)  # a second run, if any, would still be writing
    finally:
        b.stop()
        a.stop()
    per_trace = fleet.assessments("mid_job")
    calls = llm.calls_mentioning("judge mid_job")
    runs = claims(job, [a, b])
    figure(f"second instance mid-job: {status}, runs per job {sum(runs.values())}, assessments per trace "
           f"{sorted(collections.Counter(per_trace.values()).items())} over {len(fleet.trace_ids)} traces, "
           f"judge calls {calls}; an idle runner's own database connections: {idle_connections}")
    assert per_trace == dict.fromkeys(fleet.trace_ids, 1)
    assert calls == len(fleet.trace_ids)
    assert status == "SUCCEEDED"
    assert sum(runs.values()) == 1
    # MLflow's store refuses a second runner's transitions of a finished job with these words
    assert not [line for line in (a.logs() + b.logs()).splitlines()
                if job in line and ("cannot" in line or "finalized" in line)]


def test_a_job_of_an_instance_killed_whole_is_settled_by_another_within_the_lease(fleet, llm):
    a = fleet.server("a").start()
    b = fleet.server("b")
    try:
        job = run_judge(fleet, a, "killed", fleet.trace_ids)
        fleet.wait(job, ("RUNNING",), 30)
        start_with_runner(b)  # up before the kill, as the instances of a service are
        wait_for(lambda: len(fleet.assessments("killed")) >= 20, 60, "the judge to be mid-way")
        kill_whole(a)
        killed = time.monotonic()
        status = fleet.wait(job, TERMINAL, 120)
        settled = time.monotonic() - killed
        scored, calls = fleet.assessments("killed"), llm.calls_mentioning("judge killed")
        time.sleep(LEASE_SECONDS + 2)  # nothing runs it again afterwards
        assert (fleet.assessments("killed"), llm.calls_mentioning("judge killed")) == (scored, calls)
        runs = claims(job, [a, b])
    finally:
        a.stop()
        b.stop()
    reason = fleet.job(job)[1]
    per_trace_calls = [llm.calls_mentioning("judge killed", f"answer {i} of fleet: 7") for i in range(TRACES)]
    figure(f"instance killed whole mid-job: job {status} {settled:.1f} s after the kill (lease {LEASE_SECONDS} s); "
           f"runs per job {sum(runs.values())}; {len(scored)} of {len(fleet.trace_ids)} traces scored before the "
           f"kill, at most {max(scored.values())} assessment each; {calls} judge calls (those in flight at the "
           f"kill included), at most {max(per_trace_calls)} per trace, none after")
    assert status == "FAILED"
    assert "stopped renewing its lease" in reason and "assessment" in reason
    assert max(scored.values()) == 1 and max(per_trace_calls) == 1
    assert runs == {a.workdir.name: 1, b.workdir.name: 0}
    assert "lease ran out" in b.logs()


def test_a_job_whose_instance_stops_before_it_starts_runs_on_another(fleet):
    a = fleet.server("a", MLFLOW_SERVER_JUDGE_INVOKE_MAX_WORKERS="1").start()
    b = fleet.server("b")
    try:
        busy = run_judge(fleet, a, "stopped", fleet.trace_ids)  # takes the only judge slot of A
        fleet.wait(busy, ("RUNNING",), 30)
        waiting = run_judge(fleet, a, "after_stop", fleet.trace_ids[:50])
        wait_for(lambda: len(fleet.assessments("stopped")) >= 10, 60, "the running judge to be mid-way")
        assert fleet.job(waiting)[0] == "PENDING"
        assert a.stop() == 0
        busy_status, busy_reason = fleet.job(busy)  # marked at once, not left to its lease
        assert fleet.job(waiting)[0] == "PENDING"
        b.start()
        assert fleet.wait(waiting, TERMINAL, 120) == "SUCCEEDED"
        time.sleep(LEASE_SECONDS)
    finally:
        b.stop()
        a.stop()
    runs = claims(waiting, [a, b])
    stopped, after = fleet.assessments("stopped"), fleet.assessments("after_stop")
    figure(f"job submitted to an instance stopped before it started: ran {sum(runs.values())} time(s), on the "
           f"next instance; the job running at the stop: {busy_status}, at most "
           f"{max(stopped.values(), default=0)} assessment per trace")
    assert runs == {a.workdir.name: 0, b.workdir.name: 1}
    assert after == dict.fromkeys(fleet.trace_ids[:50], 1)
    assert busy_status == "FAILED" and "SIGTERM" in busy_reason
    assert max(stopped.values(), default=0) <= 1


def test_a_deploys_overlap_runs_each_job_once_and_leaves_none_behind(fleet, llm):
    old = fleet.server("old").start()
    candidate = fleet.server("candidate")
    chunks = [fleet.trace_ids[:110], fleet.trace_ids[110:220], fleet.trace_ids[220:230], fleet.trace_ids[230:240]]
    try:
        jobs = [run_judge(fleet, old, "overlap", chunk) for chunk in chunks[:2]]
        for job in jobs:
            fleet.wait(job, ("RUNNING",), 30)
        start_with_runner(candidate)  # the new revision, with no traffic yet
        smoke = requests.get(f"{candidate.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                             auth=ALICE, timeout=30)
        assert smoke.status_code == 200
        jobs += [run_judge(fleet, candidate, "overlap", chunk) for chunk in chunks[2:]]
        on_old = set(chunks[0] + chunks[1])
        wait_for(lambda: len(on_old & set(fleet.assessments("overlap"))) >= 10, 60,
                 "the old revision's judges to be mid-way")
        running_at_stop = [job for job in jobs[:2] if fleet.job(job)[0] == "RUNNING"]
        started = time.monotonic()
        assert old.stop() == 0  # promoted: the old revision gets SIGTERM, its jobs mid-way
        stop_seconds = time.monotonic() - started
        for job in jobs:
            fleet.wait(job, TERMINAL, 180)
        time.sleep(3)
    finally:
        candidate.stop()
        old.stop()
    outcomes = [fleet.job(job) for job in jobs]
    per_trace = fleet.assessments("overlap")
    calls = [llm.calls_mentioning("judge overlap", f"answer {i} of fleet: 7") for i in range(TRACES)]
    runs = [sum(claims(job, [old, candidate]).values()) for job in jobs]
    figure(f"deploy overlap: {len(jobs)} jobs ({len(running_at_stop)} running on the old revision at its SIGTERM), "
           f"runs per job {runs}, outcomes {sorted(collections.Counter(s for s, _ in outcomes).items())}, old "
           f"revision stopped in {stop_seconds:.1f} s, at most {max(per_trace.values())} assessment and "
           f"{max(calls)} judge call per trace")
    assert running_at_stop, "the old revision's jobs ended before its SIGTERM"
    assert max(per_trace.values()) == 1 and max(calls) == 1
    for job, (status, reason), chunk in zip(jobs, outcomes, chunks, strict=True):
        if job in running_at_stop:
            assert status == "FAILED" and "SIGTERM" in reason  # at once, not run again elsewhere
        else:
            assert status == "SUCCEEDED" and all(per_trace.get(t) == 1 for t in chunk)
    assert runs == [1] * len(jobs)


def test_cancelling_on_one_instance_stops_the_job_on_the_one_running_it(fleet):
    a, b = fleet.server("a"), fleet.server("b")
    start_together([a, b])
    try:
        job = run_judge(fleet, a, "cancelled", fleet.trace_ids)
        runner = claimed_by(job, [a, b])
        other = b if runner is a else a
        wait_for(lambda: len(fleet.assessments("cancelled")) >= 10, 60, "the judge to be mid-way")
        response = requests.patch(f"{other.url}/ajax-api/3.0/jobs/cancel/{job}", auth=ALICE, timeout=30)
        assert response.status_code == 200, response.text
        wait_for(lambda: "cancelled, stopping its subprocess" in runner.logs(), 10, "the runner to stop the job")
        at_stop = len(fleet.assessments("cancelled"))
        time.sleep(3)
        after = len(fleet.assessments("cancelled"))
    finally:
        a.stop()
        b.stop()
    figure(f"cancel through the other instance: {at_stop} of {len(fleet.trace_ids)} traces scored when the "
           f"runner stopped it, {after} three seconds later")
    assert fleet.job(job)[0] == "CANCELED"
    assert after == at_stop < len(fleet.trace_ids)


def scheduler_runs_by_minute(servers: list[Server]) -> dict[str, list[str]]:
    """Which instance ran the online-scoring scheduler in each minute."""
    runs = collections.defaultdict(list)
    for server in servers:
        for line in server.logs().splitlines():
            if "periodic task online_scoring_scheduler: this instance runs it" in line:
                runs[json.loads(line)["time"][:16]].append(server.workdir.name)
    return dict(runs)


def test_online_scoring_on_three_instances_scores_each_trace_once(fleet, llm):
    servers = [fleet.server(name) for name in ("a", "b", "c")]
    start_together(servers)
    try:
        first = client(servers[0], "online", llm.api_base, "15", "online")
        wait_for(lambda: len(fleet.assessments("polite")) == 15, 150, "the first traces to be scored online")
        second = client(servers[1], "traces", "15", "online", env={"FLEET_FIRST_TRACE": "15"})
        traces = first["trace_ids"] + second["trace_ids"]
        wait_for(lambda: len(fleet.assessments("polite")) == 30, 150, "the second traces to be scored online")
        time.sleep(5)  # a second scoring of the same traces, if any, would be under way
    finally:
        for server in servers:
            server.stop()
    per_trace = fleet.assessments("polite")
    calls = [llm.calls_mentioning("judge polite", f"answer {i} of online: 7") for i in range(30)]
    runs = scheduler_runs_by_minute(servers)
    by_instance = collections.Counter(name for names in runs.values() for name in names)
    figure(f"online scoring, 3 instances, {len(runs)} periods: scheduler runs per period "
           f"{[len(v) for v in runs.values()]} (periods per instance {sorted(by_instance.values())}), "
           f"assessments per trace {sorted(collections.Counter(per_trace.values()).items())}, "
           f"judge calls per trace {sorted(collections.Counter(calls).items())}")
    assert per_trace == dict.fromkeys(traces, 1)
    assert calls == [1] * 30
    assert len(runs) >= 2 and all(len(v) == 1 for v in runs.values())


def test_local_mode_runs_a_judge_job_on_sqlite(tmp_path, llm):
    """`entry-point.sh --local` (SQLite, one instance): the same queue, on SQLite."""
    server = Server(tmp_path, {**FLEET_ENV, "MLFLOW_LOCAL_DIR": str(tmp_path / "local")},
                    {"mlflow_auth_users": USERS_FILE}, args=["--local"]).start()
    try:
        seed = client(server, "judges", llm.api_base, "5", "local", "local_judge")
        response = requests.post(f"{server.url}/ajax-api/3.0/mlflow/scorer/invoke", auth=ALICE, timeout=60, json={
            "experiment_id": seed["experiment_id"], "serialized_scorer": seed["scorers"]["local_judge"],
            "trace_ids": seed["trace_ids"], "log_assessments": True})
        assert response.status_code == 200, response.text
        [job] = response.json()["jobs"]

        def status():
            return requests.get(f"{server.url}/ajax-api/3.0/jobs/{job['job_id']}", auth=ALICE, timeout=30).json()

        wait_for(lambda: status()["status"] in TERMINAL, 120, "the judge job on SQLite")
        final = status()["status"]
        assessed = [requests.get(f"{server.url}/api/3.0/mlflow/traces/{t}", auth=ALICE, timeout=30).json()
                    for t in seed["trace_ids"]]
    finally:
        server.stop()
    assert final == "SUCCEEDED"
    assert assessment_names(assessed) == [["local_judge"]] * 5
    assert llm.calls_mentioning("judge local_judge") == 5


def assessment_names(traces: list[dict]) -> list[list[str]]:
    """The names of each trace's assessments, as the REST API returns the trace."""
    return [sorted(a["assessment_name"] for a in t["trace"]["trace_info"].get("assessments", [])) for t in traces]
