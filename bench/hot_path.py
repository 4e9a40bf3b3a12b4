"""Where the time of one ``log_metric`` goes: our layers one by one, MLflow's handler, its store, the SQL.

In one process, as a gunicorn worker has it (``bench.common.in_process_app``): the same request is
sent N times to each layer of the app in turn, from the outermost (TLS-less WSGI entry) to Flask,
then MLflow's store is called directly, then the SQL statement alone on a plain connection. A
layer's cost is its time minus the time of what it wraps. Single-threaded, so each figure is a
request's wall time in this process (CPU plus a round trip to PostgreSQL) and this process's
CPU time, which excludes the database's: what decides a CPU-bound worker's throughput. Run by ``bench.floor``; alone: ``.venv/bin/python -m bench.hot_path`` (starts PostgreSQL).
"""

from __future__ import annotations

import io
import itertools
import json
import time

CALLS = 1500


def _environ(body: bytes) -> dict:
    from werkzeug.test import EnvironBuilder

    from bench.common import AUTH_HEADER

    builder = EnvironBuilder(path="/api/2.0/mlflow/runs/log-metric", method="POST", data=body,
                             content_type="application/json", headers={"Authorization": AUTH_HEADER})
    environ = builder.get_environ()
    environ["REMOTE_ADDR"] = "127.0.0.1"
    return environ


def _per_call_us(send, calls: int = CALLS) -> tuple[float, float]:
    """(wall, CPU of this process) in us per call: the least disturbed of five blocks each."""
    send()  # warm
    wall = cpu = float("inf")
    for _ in range(5):
        started, started_cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            send()
        wall = min(wall, (time.perf_counter() - started) / calls * 1e6)
        cpu = min(cpu, (time.process_time() - started_cpu) / calls * 1e6)
    return wall, cpu


def _layers(app) -> list:
    """The app's WSGI layers from the outermost in, down to MLflow's Flask app."""
    chain = [app]
    while True:
        inner = getattr(chain[-1], "app", None)
        if inner is None or not callable(inner) or len(chain) > 30:
            return chain
        chain.append(inner)


def _environs_seen(layers: list, outer: dict) -> list[dict]:
    """The environ each layer receives when a request comes in at the top: what the layers
    outside it have added (the user, the role, the workspace) is in it, as in a real request."""
    seen = [dict(outer)]
    originals = [layer.app for layer in layers[:-1]]

    def recorder(inner):
        def record(environ, start_response):
            seen.append(dict(environ))
            return inner(environ, start_response)
        return record

    for layer, inner in zip(layers[:-1], originals, strict=True):
        layer.app = recorder(inner)
    try:
        environ = dict(outer, **{"wsgi.input": io.BytesIO(outer["wsgi.input"].getvalue())})
        result = layers[0](environ, lambda status, headers, exc_info=None: None)
        for _ in result:
            pass
        if hasattr(result, "close"):
            result.close()
    finally:
        for layer, inner in zip(layers[:-1], originals, strict=True):
            layer.app = inner
    if len(seen) != len(layers):
        raise RuntimeError(f"the request reached {len(seen)} of {len(layers)} layers")
    return seen


def measure(uri: str, destination: str, calls: int = CALLS) -> list[tuple[str, float]]:
    """[(what, (wall us, CPU us) per request)] from the whole app down to the SQL, each the time
    of that and everything inside it. CPU is this process's: the database's own work is not in it."""
    from mlflow.entities import Metric
    from mlflow.server import handlers
    from sqlalchemy.engine import make_url
    from werkzeug.test import Client

    from bench.common import AUTH_HEADER, in_process_app
    from bench.floor_wsgi import _SQL, _columns

    app = in_process_app(uri, destination)
    client = Client(app)
    run_id = client.post("/api/2.0/mlflow/runs/create", json={"experiment_id": "0"},
                         headers={"Authorization": AUTH_HEADER}).get_json()["run"]["info"]["run_id"]
    steps = itertools.count()

    def body() -> bytes:
        return json.dumps({"run_id": run_id, "key": "m", "value": 0.5, "timestamp": 1, "step": next(steps)}).encode()

    def through(layer, template):
        def send():
            data = body()
            environ = dict(template, **{"wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data))})
            result = layer(environ, lambda status, headers, exc_info=None: None)
            for _ in result:
                pass
            if hasattr(result, "close"):
                result.close()
        return send

    layers = _layers(app)
    found = []
    for layer, template in zip(layers, _environs_seen(layers, _environ(body())), strict=True):
        name = getattr(layer, "__qualname__", None) or type(layer).__name__
        found.append((f"WSGI layer `{name}` and all inside it", _per_call_us(through(layer, template), calls)))
    store = handlers._get_tracking_store()
    found.append(("MLflow's store: `SqlAlchemyStore.log_metric`",
                  _per_call_us(lambda: store.log_metric(run_id, Metric("m", 0.5, 1, next(steps))), calls)))
    import psycopg2

    url = make_url(uri)
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                            dbname=url.database)

    def sql():
        with conn.cursor() as cur:
            cur.execute(_SQL, _columns({"run_id": run_id, "key": "m", "value": 0.5, "step": next(steps)}))
        conn.commit()

    found.append(("the SQL statement alone (psycopg2, one connection)", _per_call_us(sql, calls)))
    conn.close()
    return found


def table(found: list[tuple[str, tuple[float, float]]]) -> str:
    rows = ["| one `log_metric`, in-process, single thread | wall us, with all inside | CPU us, with all inside "
            "| CPU us, this part alone |", "|---|---|---|---|"]
    for (what, (wall, cpu)), (_, (_, inner_cpu)) in zip(found, [*found[1:], (None, (0.0, 0.0))], strict=True):
        rows.append(f"| {what} | {wall:.0f} | {cpu:.0f} | {cpu - inner_cpu:.0f} |")
    return "\n".join(rows)


def main() -> None:
    from bench.common import database_uri, services

    with services() as (_, pg, gcs):
        print(table(measure(database_uri(pg, "hot_path"), f"gs://{gcs.bucket}/hot")))


if __name__ == "__main__":
    main()
