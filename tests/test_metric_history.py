"""get-history through server/borrowed/metric_history.py: the answers of stock ``mlflow server``
on the same database, for whole histories larger than a batch, every page size around the
batch boundary followed token by token, NaN and infinities, ties, and every bad request; and a
whole history of 300,000 points read without the worker holding it in memory."""

from __future__ import annotations

import json
import math
import urllib.parse

import pytest
import requests
from mlflow import MlflowClient

from server.borrowed.metric_history import BATCH
from tests.conftest import CAROL, gcs_server_config
from tests.services import Server, StockServer, proc_kib, web_processes

POINTS = 2 * BATCH + 345  # three batches, the last one partial
LARGE = 300_000
T0 = 1_700_000_000_000

# every point of "loss": steps out of order, timestamp ties broken by step then value, and the
# values MLflow stores specially (NaN as a flag, infinities as the largest floats)
LOSS_SQL = """
INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)
SELECT 'loss',
       CASE WHEN i %% 997 = 0 THEN 0 WHEN i %% 1009 = 0 THEN 1.7976931348623157e308
            WHEN i %% 1013 = 0 THEN -1.7976931348623157e308 ELSE 1.0 / (1 + i) END,
       %(t0)s + i / 3, %(run)s, (i::bigint * 7919) %% 50000 - 100, i %% 997 = 0
FROM generate_series(1, %(n)s) i
"""


@pytest.fixture(scope="module")
def servers(workdir, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "metric_history")
    ours = Server(workdir / "metric-history", env, secrets).start()
    # the same database; the driver written into the URI, as a user of stock MLflow does
    uri = secrets["mlflow_backend_store_uri"].replace("postgresql://", "postgresql+psycopg2://")
    stock = StockServer(workdir / "metric-history-stock", uri, secrets["mlflow_artifacts_destination"], env=gcs.env())
    try:
        stock.start()
        yield ours, stock
    finally:
        stock.stop()
        ours.stop()


@pytest.fixture(scope="module")
def runs(servers, postgres, monkeypatch_module):
    ours, _ = servers
    monkeypatch_module.setenv("MLFLOW_TRACKING_USERNAME", CAROL[0])
    monkeypatch_module.setenv("MLFLOW_TRACKING_PASSWORD", CAROL[1])
    client = MlflowClient(ours.url)
    exp = client.create_experiment("metric-history")
    run, large, empty = (client.create_run(exp).info.run_id for _ in range(3))
    postgres.query("metric_history", LOSS_SQL, {"t0": T0, "run": run, "n": POINTS})
    postgres.query("metric_history", LOSS_SQL, {"t0": T0, "run": large, "n": LARGE})
    client.log_metric(run, "small", math.inf, timestamp=T0, step=1)
    client.log_metric(run, "small", -math.inf, timestamp=T0, step=2)
    client.log_metric(run, "small", math.nan, timestamp=T0, step=3)
    return {"run": run, "large": large, "empty": empty, "client": client}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def get(server, query: dict, prefix: str = "/api/2.0") -> requests.Response:
    auth = CAROL if isinstance(server, Server) else None
    url = f"{server.url}{prefix}/mlflow/metrics/get-history?{urllib.parse.urlencode(query, doseq=True)}"
    return requests.get(url, auth=auth, timeout=120)


def both(servers, query: dict, prefix: str = "/api/2.0") -> tuple[int, object]:
    ours, stock = (get(s, query, prefix) for s in servers)
    assert ours.status_code == stock.status_code, (query, ours.text[:300], stock.text[:300])
    assert ours.json() == stock.json(), query
    return ours.status_code, ours.json()


@pytest.mark.parametrize("prefix", ["/api/2.0", "/ajax-api/2.0"])
def test_a_whole_history_is_stocks_answer(servers, runs, prefix):
    status, body = both(servers, {"run_id": runs["run"], "metric_key": "loss"}, prefix)
    assert status == 200 and len(body["metrics"]) == POINTS and "next_page_token" not in body
    assert "NaN" in {m["value"] for m in body["metrics"]}
    _, small = both(servers, {"run_uuid": runs["run"], "metric_key": "small"}, prefix)
    # MLflow stores infinities as the largest floats
    assert [m["value"] for m in small["metrics"]] == [1.7976931348623157e308, -1.7976931348623157e308, "NaN"]


@pytest.mark.parametrize("page", [1, 7, BATCH - 1, BATCH, BATCH + 1, POINTS - 1, POINTS, POINTS + 1])
def test_pages_and_their_tokens_are_stocks(servers, runs, page):
    """Followed to the end, except the smallest sizes: their first pages."""
    query = {"run_id": runs["run"], "metric_key": "loss", "max_results": page}
    pages = POINTS // page + 2 if page >= BATCH - 1 else 3
    seen = []
    for _ in range(pages):
        status, body = both(servers, query)
        assert status == 200
        seen += body.get("metrics", [])
        if "next_page_token" not in body:
            break
        query["page_token"] = body["next_page_token"]
    assert len(seen) == min(POINTS, pages * page)


@pytest.mark.parametrize("query", [
    {"metric_key": "loss"},
    {"run_id": "RUN"},
    {"run_id": "RUN", "metric_key": "loss", "max_results": 0},
    {"run_id": "RUN", "metric_key": "loss", "max_results": -3},
    {"run_id": "RUN", "metric_key": "loss", "page_token": "not-a-token"},
    {"run_id": "RUN", "metric_key": "nothing-logged"},
    {"run_id": "EMPTY", "metric_key": "loss"},
    {"run_id": "0" * 32, "metric_key": "loss"},
])
def test_bad_and_empty_requests_are_answered_as_stock_does(servers, runs, query):
    query = {k: runs["run"] if v == "RUN" else runs["empty"] if v == "EMPTY" else v for k, v in query.items()}
    both(servers, query)


def test_a_max_results_that_is_not_a_number_is_refused_where_stock_ignores_it(servers, runs):
    # protobuf cannot parse it; MLflow's handler goes on without it and answers the whole
    # history, ours refuses the request (server/borrowed/unparsed_bodies.py)
    query = {"run_id": runs["run"], "metric_key": "loss", "max_results": "many"}
    ours, stock = (get(s, query) for s in servers)
    assert stock.status_code == 200 and len(stock.json()["metrics"]) == POINTS
    assert ours.status_code == 400 and ours.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "max_results" in ours.json()["message"]


def test_the_stock_client_reads_every_point(runs):
    history = runs["client"].get_metric_history(runs["run"], "loss")
    assert len(history) == POINTS
    keys = [(m.timestamp, m.step, m.value) for m in history if not math.isnan(m.value)]
    assert keys == sorted(keys)
    assert sum(math.isnan(m.value) for m in history) == POINTS // 997


def worker_peaks(server: Server) -> dict[int, int]:
    """Peak resident memory (VmHWM, kB) of gunicorn's master and each worker."""
    return {pid: proc_kib([pid], "status", "VmHWM") for pid in web_processes(server.proc.pid)}


def test_a_large_history_is_read_without_holding_it(servers, runs):
    """300,000 points: MLflow's handler holds them all as ORM objects, entities, messages and a
    JSON tree (its worker's peak grew by 841 MB here, measured); read in batches, no worker's
    peak grows by more than 57 MB (24 MB measured)."""
    ours, _ = servers
    before = worker_peaks(ours)
    for _ in range(2):  # both workers, whichever takes it
        response = get(ours, {"run_id": runs["large"], "metric_key": "loss"})
        assert response.status_code == 200 and len(response.json()["metrics"]) == LARGE
    after = worker_peaks(ours)
    growth_mb = max(after[pid] - before.get(pid, after[pid]) for pid in after) / 1024
    print(f"worker peak memory growth for {LARGE} points: {growth_mb:.0f} MB")
    assert growth_mb < 57, f"a worker's peak memory grew by {growth_mb:.0f} MB"


@pytest.mark.parametrize("printer", ["ours", "mlflow"])
@pytest.mark.parametrize("batches", [[], [1], [3, 2, 1]])
@pytest.mark.parametrize("token", [None, "tok"])
def test_spliced_batches_are_one_message(printer, batches, token):
    """Unit: the batches printed one by one and spliced read as the one message of all of them,
    with either printer (ours, compact; MLflow's, indented)."""
    import io

    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.server import handlers
    from mlflow.utils import proto_json_utils

    from server.borrowed import json_responses, metric_history

    to_json = json_responses.message_to_json if printer == "ours" else proto_json_utils.message_to_json
    points = iter(range(100))
    entities = [[Metric(f"k[{i}]", math.nan if i % 2 else i / 3, T0 + i, i) for i in
                 (next(points) for _ in range(n))] for n in batches]
    whole = GetMetricHistory.Response()
    whole.metrics.extend(m.to_proto() for batch in entities for m in batch)
    if token:
        whole.next_page_token = token
    out = io.BytesIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(handlers, "message_to_json", to_json)
        splicer = metric_history._Splicer(out)
        for batch in entities:
            splicer.metrics(batch)
        splicer.close(token)
    assert json.loads(out.getvalue()) == json.loads(to_json(whole))
