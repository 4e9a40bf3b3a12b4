"""The shared queue's statements (server/jobs/table.py) on MLflow's own tables, on a real
PostgreSQL and on SQLite (local mode): claims, reservations, leases, settling a dead runner's
jobs, exclusive keys and periodic leases, each with the race it exists for."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy

from server.jobs.table import CANCELED, FAILED, PENDING, RUNNING, JobTable

LEASE_MS = 2_000


@pytest.fixture(scope="module")
def pg_uri(postgres):
    uri = postgres.create_database("job_table").replace("postgresql://", "postgresql+psycopg2://")
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore

    SqlAlchemyJobStore(uri)  # MLflow creates its schema
    return uri


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, tmp_path):
    """(JobTable, MLflow's job store) on a fresh set of jobs."""
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore

    if request.param == "postgresql":
        uri = request.getfixturevalue("pg_uri")
    else:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = SqlAlchemyJobStore(uri)
    with store.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM job_locks"))
        conn.execute(sqlalchemy.text("DELETE FROM scheduler_leases"))
        conn.execute(sqlalchemy.text("DELETE FROM jobs"))
    return JobTable(sqlalchemy.create_engine(uri), LEASE_MS), store


def new_job(store, name="invoke_scorer", age_ms=5_000):
    job = store.create_job(name, '{"experiment_id": "1"}')
    with store.engine.begin() as conn:  # as if submitted age_ms ago
        conn.execute(sqlalchemy.text("UPDATE jobs SET creation_time = creation_time - :age WHERE id = :id"),
                     {"age": age_ms, "id": job.job_id})
    return job.job_id


def row(store, job_id):
    with store.engine.begin() as conn:
        return conn.execute(sqlalchemy.text("SELECT status, lease_expires_at, result, retry_count FROM jobs "
                                            "WHERE id = :id"), {"id": job_id}).one()


def test_each_job_is_claimed_by_one_of_many_racing_runners(db):
    table, store = db
    ids = {new_job(store) for _ in range(30)}
    claimed: list[str] = []
    gate = threading.Barrier(6)

    def runner():
        gate.wait()
        while (job := table.claim(["invoke_scorer"], [], 500)) is not None:
            claimed.append(job.job_id)

    threads = [threading.Thread(target=runner) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert all(row(store, i)[0] == RUNNING and row(store, i)[1] is not None for i in ids)


def test_a_new_job_waits_out_the_grace_and_other_kinds_are_left_alone(db):
    table, store = db
    fresh = new_job(store, age_ms=0)
    assert table.claim(["invoke_scorer"], [], 60_000) is None  # its own instance's turn first
    assert table.claim(["optimize_prompts"], [], 0) is None  # a kind this runner was not asked for
    assert table.claim(["invoke_scorer"], [], 0).job_id == fresh


def test_a_reserved_job_is_claimed_by_its_instance_only(db):
    table, store = db
    job_id = new_job(store, "invoke_issue_detection")
    assert table.reserve(job_id)
    assert table.claim(["invoke_issue_detection"], [], 0) is None  # another instance
    assert table.claim(["invoke_issue_detection"], [job_id], 0).job_id == job_id  # its own


def test_renewing_keeps_a_job_and_a_lapsed_one_is_failed_once_with_its_reason(db):
    table, store = db
    kept, lost = new_job(store), new_job(store)
    assert {table.claim(["invoke_scorer"], [], 0).job_id for _ in range(2)} == {kept, lost}
    time.sleep(LEASE_MS / 1000 * 0.6)
    assert table.renew([kept]) == {kept}
    time.sleep(LEASE_MS / 1000 * 0.6)
    lapsed = table.lapsed()
    assert [j.job_id for j in lapsed] == [lost]
    assert table.settle_lapsed(lapsed[0], requeue=False, reason="its runner died")
    assert not table.settle_lapsed(lapsed[0], requeue=False, reason="a second instance, too late")
    status, lease, result, _ = row(store, lost)
    assert (status, lease, result) == (FAILED, None, "its runner died")
    assert row(store, kept)[0] == RUNNING


def test_a_lease_renewed_after_it_was_seen_lapsed_is_not_settled(db):
    table, store = db
    job_id = new_job(store)
    table.claim(["invoke_scorer"], [], 0)
    time.sleep(LEASE_MS / 1000 + 0.2)
    [lapsed] = table.lapsed()
    assert table.renew([job_id]) == {job_id}  # its runner was only slow
    assert not table.settle_lapsed(lapsed, requeue=False, reason="too late")
    assert row(store, job_id)[0] == RUNNING


def test_a_kind_safe_to_rerun_is_queued_again(db):
    table, store = db
    job_id = new_job(store)
    table.claim(["invoke_scorer"], [], 0)
    time.sleep(LEASE_MS / 1000 + 0.2)
    [lapsed] = table.lapsed()
    assert table.settle_lapsed(lapsed, requeue=True, reason="")
    status, lease, _, retries = row(store, job_id)
    assert (status, lease, retries) == (PENDING, None, 1)
    assert table.claim(["invoke_scorer"], [], 0).job_id == job_id


def test_a_lapsed_reservation_and_a_stopping_instances_jobs_are_failed(db):
    table, store = db
    reserved, running = new_job(store, "invoke_issue_detection"), new_job(store)
    table.reserve(reserved)
    table.claim(["invoke_scorer"], [], 0)
    assert sorted(table.fail_held([reserved, running], "stopping")) == sorted([reserved, running])
    assert row(store, reserved)[:3] == (FAILED, None, "stopping") == row(store, running)[:3]


def test_a_stopping_instances_unstarted_jobs_are_handed_back(db):
    table, store = db
    job_id = new_job(store)
    table.claim(["invoke_scorer"], [], 0)
    assert table.release([job_id]) == [job_id]
    assert row(store, job_id)[:2] == (PENDING, None)
    assert table.claim(["invoke_scorer"], [], 0).job_id == job_id  # another instance takes it


def test_an_exclusive_key_is_held_while_its_job_lives(db):
    table, store = db
    first, second = new_job(store), new_job(store)
    table.claim(["invoke_scorer"], [], 0)
    table.claim(["invoke_scorer"], [], 0)
    assert table.acquire_lock("online:exp-1", first)
    assert not table.acquire_lock("online:exp-1", second)
    assert table.acquire_lock("online:exp-2", second)  # another key
    store.cancel_job(first)  # cancelled: its runner still needs a moment to stop it
    assert not table.acquire_lock("online:exp-1", second)
    table.release_lock("online:exp-1", first)
    assert table.acquire_lock("online:exp-1", second)


def test_an_exclusive_key_of_a_dead_runner_frees_when_its_lease_runs_out(db):
    table, store = db
    dead, other = new_job(store), new_job(store)
    table.claim(["invoke_scorer"], [], 0)
    table.claim(["invoke_scorer"], [], 0)
    assert table.acquire_lock("k", dead)
    assert not table.acquire_lock("k", other)
    time.sleep(LEASE_MS / 1000 + 0.2)
    table.renew([other])
    assert table.acquire_lock("k", other)


def test_a_periodic_lease_is_won_by_one_instance_and_freed_within_its_period(db):
    table, _ = db
    wins = []
    gate = threading.Barrier(5)

    def instance():
        gate.wait()
        wins.append(table.claim_period("mlflow-server:periodic:t", 2))

    threads = [threading.Thread(target=instance) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [w for w in wins if w is not None]
    assert len(stamps) == 1  # one instance runs this period
    time.sleep(1.2)
    renewed = table.renew_period("mlflow-server:periodic:t", stamps[0])
    assert renewed is not None and renewed > stamps[0]
    time.sleep(1.2)  # past the claim's ttl, but renewed: still held while it runs
    assert table.claim_period("mlflow-server:periodic:t", 2) is None
    table.end_period("mlflow-server:periodic:t", renewed, stamps[0])  # done: free from claim + ttl on
    assert table.claim_period("mlflow-server:periodic:t", 2) is not None


def test_the_statuses_match_mlflows_own():
    from mlflow.entities._job_status import JobStatus

    assert [JobStatus.PENDING.to_int(), JobStatus.RUNNING.to_int(), JobStatus.FAILED.to_int(),
            JobStatus.CANCELED.to_int()] == [PENDING, RUNNING, FAILED, CANCELED]
