"""Schema migrations run once, under a Postgres advisory lock, before workers fork."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
import requests

from tests.conftest import ALICE, gcs_server_config
from tests.services import Server, start_together

pytestmark = pytest.mark.reliability

MIGRATION_MARK = "running database migrations"


def burst(urls: list[str], count: int) -> list[int]:
    """`count` concurrent first requests spread over the servers: a write and a read each."""
    def one(i: int) -> int:
        base = urls[i % len(urls)]
        r = requests.post(f"{base}/api/2.0/mlflow/experiments/create", json={"name": f"burst-{i}"},
                          auth=ALICE, timeout=60)
        if r.status_code != 200:
            return r.status_code
        return requests.get(f"{base}/api/2.0/mlflow/experiments/search?max_results=5", auth=ALICE,
                            timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def migration_lines(server: Server) -> list[str]:
    return [json.loads(line)["message"] for line in server.logs().splitlines()
            if line.startswith("{") and MIGRATION_MARK in line]


def test_fresh_database_with_four_workers_gives_no_errors(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_fresh4")
    env["MLFLOW_WORKERS"] = "4"
    server = Server(tmp_path, env, secrets).start()
    try:
        statuses = burst([server.url], 16)
        assert statuses == [200] * 16, statuses
        assert len(migration_lines(server)) == 1
    finally:
        server.stop()


def test_three_instances_on_one_empty_database(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_three")
    env["MLFLOW_WORKERS"] = "2"
    servers = [Server(tmp_path / f"instance-{i}", env, secrets) for i in range(3)]
    try:
        start_together(servers)
        ran = [s for s in servers if migration_lines(s)]
        assert len(ran) == 1, [migration_lines(s) for s in servers]
        statuses = burst([s.url for s in servers], 24)
        assert statuses == [200] * 24, statuses
        head = postgres.query("mlflow_three", "SELECT version_num FROM alembic_version")
        assert len(head) == 1
    finally:
        for server in servers:
            server.stop()
