"""The hot path against its floor: our server, `mlflow server` and the floor, one interleaved run.

    .venv/bin/python -m bench.floor              # ~12 minutes on 2 cores
    .venv/bin/python -m bench.floor --cycles 1   # a quicker look

The floor (``bench/floor_wsgi.py``) is the same gunicorn with the same settings serving an app
that only parses the body and runs the metric write's one SQL statement on the same PostgreSQL:
what a metric write cannot cost less than on this stack. Each cycle starts the three servers
afresh and keeps them up together; the loads take turns (A B C, C B A, ...). Ours and the floor
share one database, which our first start gives our indexes; stock runs on a copy made before
any load, without them (MLflow's own schema), so their write cost counts on our side. Each round
measures ``log_metric`` twice: from a plain keep-alive HTTP client (what the server sustains) and
from the stock ``MlflowClient`` (what one training process sees). Figures of the
issue's first table, each beside its floor where one exists, go into docs/benchmarks.md; then
where the microseconds of one ``log_metric`` go, layer by layer (``bench/hot_path.py``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import requests
import sqlalchemy

from bench import hot_path
from bench.common import database_uri, load_average, median, services
from bench.run import (
    idle_pss,
    log_batch_latencies,
    log_metric_rate,
    make_search_experiment,
    metric_runs,
    raw_log_metric_rate,
    search_latencies,
    write_doc_section,
)
from bench.servers import WORKERS, Running, start
from server.borrowed import own_indexes
from server.config import normalize_backend_uri
from tests.services import latencies

MARKERS = ("<!-- floor:begin -->", "<!-- floor:end -->")
SIDES = {"ours": "ours", "stock": "baseline", "floor": "floor"}


def plain_latencies(server: Running, calls: int, method: str, path: str, body: dict | None = None,
                    check=None) -> list[float]:
    """Seconds per call of one request from a plain HTTP session that only reads the answer (a
    2xx, and ``check(answer)`` when given), after one warm-up call."""
    session = requests.Session()

    def one():
        answer = session.request(method, server.url + path, json=body, auth=server.auth, timeout=60)
        answer.raise_for_status()
        if check is not None:
            check(answer)

    one()
    return latencies(one, calls)


def raw_search_latencies(server: Running, experiment_id: str, calls: int) -> list[float]:
    """``search_runs`` as the stock client sends it (its JSON, up to 1000 runs), from a plain HTTP
    session: the stock client also turns the answer into protobuf messages and entities (tens of
    ms for 500 runs), which count on both sides alike and so pull the ratio toward 1."""
    body = {"experiment_ids": [experiment_id], "max_results": 1000, "run_view_type": "ACTIVE_ONLY"}

    def all_500_runs(answer):
        assert len(answer.json()["runs"]) == 500

    return plain_latencies(server, calls, "POST", "/api/2.0/mlflow/runs/search", body, all_500_runs)


def ui_search_latencies(server: Running, calls: int) -> list[float]:
    """The UI's experiments list call (a page of 25, newest first)."""
    return plain_latencies(server, calls, "GET",
                           "/ajax-api/2.0/mlflow/experiments/search?max_results=25&order_by=last_update_time+DESC")


def measured_window(server: Running, runs: list[str], seconds: float, load=raw_log_metric_rate) -> tuple[float, float]:
    """req/s of `log_metric` over one window of ``load``, and the server's CPU ms per request in
    it (requests counted by the client: stock has no access log to count them in)."""
    cpu, started = server.cpu_seconds(), time.monotonic()
    rate = load(server, runs, seconds)
    requests_sent = rate * (time.monotonic() - started)
    return rate, (server.cpu_seconds() - cpu) / requests_sent * 1000


def cold_start(kind: str, uri: str, dest: str, work, env) -> float:
    s = start(kind, uri, dest, work, extra_env=env)
    try:
        return s.wait_first_api_ok()
    finally:
        s.stop()


def stock_database(pg, ours_db: str, stock_db: str) -> str:
    """A copy of our migrated database without our indexes: stock writes to MLflow's own schema,
    so what our indexes cost metric writes shows on our side only."""
    uri = database_uri(pg, stock_db, template=ours_db)
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as conn:
            for index in own_indexes.INDEXES:
                conn.execute(sqlalchemy.text(f"DROP INDEX IF EXISTS {index.name}"))
    finally:
        engine.dispose()
    return uri


def run(pg, ours_db: str, dest: str, work, env: dict, cycles: int, window: float, rounds: int,
        cold_samples: int = 3) -> dict:
    figures = ("rps", "rps_client", "cpu_ms", "batch_s", "search_s", "search_raw_s", "ui_s", "cold_s", "pss_mb", "procs")
    out = {side: {k: [] for k in figures} for side in SIDES}
    out["ours"].update(master_own_mb=[], worker_own_mb=[], runner_own_mb=[])
    uri = database_uri(pg, ours_db)
    # migrate once and make the runs the floor writes to (it has no API to make them)
    s = start("ours", uri, dest, work, extra_env=env)
    s.wait_first_api_ok()
    search_exp = make_search_experiment(s, runs=500)  # the search
    s.stop()
    uris = {"ours": uri, "floor": uri, "stock": stock_database(pg, ours_db, f"{ours_db}_stock")}
    for cycle in range(cycles):
        order = list(SIDES) if cycle % 2 == 0 else list(SIDES)[::-1]
        # several fresh starts per side, in turn: one start per cycle moved more than a change did
        for sample in range(cold_samples):
            for side in order if sample % 2 == 0 else order[::-1]:
                out[side]["cold_s"].append(cold_start(SIDES[side], uris[side], dest, work, env))
        servers: dict[str, Running] = {}
        try:
            for side in order:
                servers[side] = start(SIDES[side], uris[side], dest, work, extra_env=env)
                servers[side].wait_first_api_ok()
            for side, server in servers.items():
                out[side]["pss_mb"].append(idle_pss(server) if side != "floor" else floor_pss(server))
                out[side]["procs"].append(len(server.pids()))
                if side == "ours":
                    roles = server.own_mb_by_role()
                    out[side]["master_own_mb"] += roles["master"]
                    out[side]["worker_own_mb"] += roles["workers"]
                    out[side]["runner_own_mb"] += roles["job runner"]
            runs, exps = {}, {}
            for side, server in servers.items():
                maker = servers["ours"] if side == "floor" else server
                exps[side], runs[side] = metric_runs(maker, f"floor-{side}")
                measured_window(server, runs[side], 2)  # warm
            for round_ in range(rounds):
                for side in order[:: 1 if round_ % 2 == 0 else -1]:
                    server = servers[side]
                    rate, cpu_ms = measured_window(server, runs[side], window)
                    out[side]["rps"].append(rate)
                    out[side]["cpu_ms"].append(cpu_ms)
                    out[side]["rps_client"].append(measured_window(server, runs[side], window, log_metric_rate)[0])
                    out[side]["batch_s"] += log_batch_latencies(server, exps[side], 3,
                                                                run_maker=servers["ours"] if side == "floor" else None)
                    if side != "floor":
                        out[side]["search_s"] += search_latencies(server, search_exp, 2)
                        out[side]["search_raw_s"] += raw_search_latencies(server, search_exp, 2)
                        out[side]["ui_s"] += ui_search_latencies(server, 5)
        finally:
            for server in servers.values():
                server.stop()
    return out


def floor_pss(server: Running) -> float:
    """The floor's idle PSS: it answers none of the API idle_pss warms up with, and starts no
    process after its first answer, so a short settle is enough."""
    time.sleep(3)
    return server.pss_mb()


# ---------------------------------------------------------------- report

def _range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}, {len(values)} starts"


def table(out: dict) -> str:
    m = {side: {k: median(v) for k, v in figures.items()} for side, figures in out.items()}
    o, s, f = m["ours"], m["stock"], m["floor"]
    rows = [
        "| figure | floor | ours | `mlflow server` | ours / stock | ours / floor | issue's target (vs stock) |",
        "|---|---|---|---|---|---|---|",
        f"| `log_metric` req/s, 8 threads of a plain HTTP client | {f['rps']:.0f} | {o['rps']:.0f} | {s['rps']:.0f} | "
        f"{o['rps'] / s['rps']:.2f}x | {o['rps'] / f['rps']:.2f} | >= 3x |",
        f"| `log_metric` req/s, 8 threads of the stock `MlflowClient` | {f['rps_client']:.0f} | {o['rps_client']:.0f} | "
        f"{s['rps_client']:.0f} | {o['rps_client'] / s['rps_client']:.2f}x | {o['rps_client'] / f['rps_client']:.2f} | |",
        f"| server CPU per `log_metric` (ms, all processes) | {f['cpu_ms']:.2f} | {o['cpu_ms']:.2f} | "
        f"{s['cpu_ms']:.2f} | {o['cpu_ms'] / s['cpu_ms']:.2f} | {o['cpu_ms'] / f['cpu_ms']:.2f}x | |",
        f"| `log_batch` 1000 metrics p50 (ms) | {f['batch_s'] * 1000:.0f} | {o['batch_s'] * 1000:.0f} | "
        f"{s['batch_s'] * 1000:.0f} | {o['batch_s'] / s['batch_s']:.2f} | {o['batch_s'] / f['batch_s']:.2f}x | <= 0.3 |",
        f"| `search_runs` 500 runs p50, stock `MlflowClient` (ms) | not measured | {o['search_s'] * 1000:.0f} | {s['search_s'] * 1000:.0f} | "
        f"{o['search_s'] / s['search_s']:.2f} | | <= 0.3 |",
        f"| `search_runs` 500 runs p50, plain HTTP client (ms) | not measured | {o['search_raw_s'] * 1000:.0f} | "
        f"{s['search_raw_s'] * 1000:.0f} | {o['search_raw_s'] / s['search_raw_s']:.2f} | | |",
        f"| UI `experiments/search` p50 (ms) | not measured | {o['ui_s'] * 1000:.1f} | {s['ui_s'] * 1000:.1f} | "
        f"{o['ui_s'] / s['ui_s']:.2f} | | <= 0.5 |",
        f"| cold start to first 200, migrated DB (s; median, range) | {f['cold_s']:.2f} | {o['cold_s']:.2f} "
        f"({_range(out['ours']['cold_s'])}) | {s['cold_s']:.2f} ({_range(out['stock']['cold_s'])}) | "
        f"{o['cold_s'] / s['cold_s']:.2f} | {o['cold_s'] / f['cold_s']:.2f}x | <= 0.2 |",
        f"| idle PSS, whole process tree (MB) | {f['pss_mb']:.0f} | {o['pss_mb']:.0f} | {s['pss_mb']:.0f} | "
        f"{o['pss_mb'] / s['pss_mb']:.2f} | {o['pss_mb'] / f['pss_mb']:.1f}x | <= 0.1 |",
        f"| ours at idle, each process's own memory (USS, MB; the rest of the PSS is the master's pages they share) | | "
        f"master {o['master_own_mb']:.0f}, each worker {o['worker_own_mb']:.0f}, job runner {o['runner_own_mb']:.0f} "
        "| | | | |",
        f"| processes at idle | {f['procs']:.0f} | {o['procs']:.0f} | {s['procs']:.0f} | | | |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--cold-samples", type=int, default=3, help="fresh starts per side and cycle")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with services() as (work, pg, gcs):
        env = gcs.env()
        os.environ.update(env)
        out = run(pg, "floor", f"gs://{gcs.bucket}/floor", work, env, args.cycles, args.window, args.rounds,
                  args.cold_samples)
        layers = hot_path.measure(normalize_backend_uri(pg.dsn("floor")), f"gs://{gcs.bucket}/floor")
    load_after = os.getloadavg()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"Run {when} on {os.cpu_count()} cores, {WORKERS} workers each, {args.cycles} cycles of fresh servers, "
            f"{args.rounds} rounds per cycle of two {args.window:.0f} s `log_metric` windows (each client), "
            f"{args.cold_samples} fresh starts per side and cycle for the cold start (the median of all); "
            f"{load_average(load_before, load_after)}. The floor's runs are made through our server (it has no API but the metric write).\n\n"
            + table(out) + "\n\n" + hot_path.table(layers))
    print(text)
    if not args.no_doc:
        write_doc_section(text, MARKERS)


if __name__ == "__main__":
    main()
