"""Span ingestion and trace search: ours against stock ``mlflow server``, interleaved.

    .venv/bin/python -m bench.spans                      # 3 cycles, ~6 minutes on 2 cores
    .venv/bin/python -m bench.spans --cycles 1 --seconds 10

Spans reach the server the way the 3.x client sends them: ``@mlflow.trace`` in 8 client
threads, each trace a root and 9 child spans, exported by the stock client's OTLP exporter to
``POST /v1/traces`` (synchronously, so the clock stops when the server has them). Reported:
spans/s per side and the ratio, and the p50 of ``search_traces`` by span name over the traces
just written. Both servers run in each cycle, on one Postgres and one GCS emulator, in turns
(A B B A), fresh servers every cycle; medians over cycles. The result is printed as a
Markdown table (docs/benchmarks.md keeps the last one).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import threading
import time
from pathlib import Path

from bench.common import client_env, database_uri, median, percentile, services
from bench.servers import Running, start

THREADS = 8
CHILDREN = 9


def ingest(server: Running, experiment_id: str, seconds: float) -> float:
    """Spans per second the server took in over ``seconds`` from THREADS client threads."""
    import mlflow

    stop_at = time.monotonic() + seconds
    counts = [0] * THREADS

    @mlflow.trace(name="bench_child", span_type="LLM")
    def child(i):
        return i

    @mlflow.trace(name="bench_root", span_type="CHAIN")
    def root(n):
        return sum(child(i) for i in range(n))

    def loop(i):
        mlflow.set_experiment(experiment_id=experiment_id)
        while time.monotonic() < stop_at:
            root(CHILDREN)
            counts[i] += CHILDREN + 1

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(loop, range(THREADS)))
    return sum(counts) / (time.monotonic() - started)


def search_p50(experiment_id: str, calls: int = 10) -> float:
    import mlflow

    took = []
    for _ in range(calls):
        t = time.perf_counter()
        mlflow.search_traces(locations=[experiment_id], filter_string="span.name = 'bench_child'",
                             max_results=100, return_type="list")
        took.append(time.perf_counter() - t)
    return percentile(took, 50) * 1000


def use(server: Running) -> None:
    import mlflow

    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    client_env(server)
    mlflow.set_tracking_uri(server.url)


def run(cycles: int, seconds: float) -> dict[str, list[float]]:
    import mlflow

    out = {"spans_ours": [], "spans_base": [], "search_ours": [], "search_base": []}
    lock = threading.Lock()
    with services() as (work, pg, gcs):
        for cycle in range(cycles):
            servers = {}
            try:
                for side, kind in (("ours", "ours"), ("base", "baseline")):
                    servers[side] = start(kind, database_uri(pg, f"spans_{side}_{cycle}"),
                                          f"gs://{gcs.bucket}/spans-{side}-{cycle}", work / f"{side}-{cycle}",
                                          extra_env=gcs.env())
                    servers[side].wait_first_api_ok()
                experiments = {}
                for side, s in servers.items():
                    use(s)
                    experiments[side] = mlflow.create_experiment(f"spans-{side}")
                for side in ("ours", "base", "base", "ours"):
                    with lock:
                        use(servers[side])
                        out[f"spans_{side}"].append(ingest(servers[side], experiments[side], seconds / 2))
                        out[f"search_{side}"].append(search_p50(experiments[side]))
            finally:
                for s in servers.values():
                    s.stop()
    return out


def table(out: dict[str, list[float]]) -> str:
    ours, base = median(out["spans_ours"]), median(out["spans_base"])
    s_ours, s_base = median(out["search_ours"]), median(out["search_base"])
    return "\n".join([
        "| | ours | `mlflow server` | ratio |",
        "|---|---|---|---|",
        f"| spans/s through `/v1/traces` (stock client, 8 threads, 10-span traces) | {ours:.0f} | {base:.0f} "
        f"| {ours / base:.2f}x |",
        f"| `search_traces` by span name, p50 | {s_ours:.0f} ms | {s_base:.0f} ms | {s_base / s_ours:.2f}x faster |",
        f"\n{len(out['spans_ours'])} windows a side; raw spans/s ours {[round(v) for v in out['spans_ours']]}, "
        f"baseline {[round(v) for v in out['spans_base']]}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(run(args.cycles, args.seconds))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
