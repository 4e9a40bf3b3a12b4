"""How requests grow with their data: our server against `mlflow server`, one interleaved run.

    .venv/bin/python -m bench.scale            # every size, ~25 minutes on 2 cores (seeding ~6)
    .venv/bin/python -m bench.scale --quick    # the two smallest sizes of each, ~3 minutes

One database is migrated with MLflow's own schema step and seeded by SQL (``bench/scale_data.py``);
the stock server's database is a copy of it (``CREATE DATABASE ... TEMPLATE``), so both hold the
same rows with the same ids. Our server then starts on the original, and its migration step
builds our own indexes there (the time that takes is reported: it is what a first start on a
large database costs once). Each figure is the median of ``--reps`` calls per side, the sides
taking turns call by call. Every answer of ours is compared with stock's (parsed JSON, equal);
a difference fails the run. Tables and plots go into docs/benchmarks.md and docs/scale-*.png.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import requests

from bench import scale_data
from bench.common import ROOT, database_uri, load_average, median, services
from bench.run import write_doc_section
from bench.servers import WORKERS, Running, start

DOCS = ROOT / "docs"
MARKERS = ("<!-- scale:begin -->", "<!-- scale:end -->")
DIFFS = ROOT / "test-output" / "scale-answers"  # the last answers compared, kept to read a difference
TIMEOUT = 300  # s, one call: a stock search at 500k runs takes seconds, a 1M-point history ~30 s


@dataclass
class Probe:
    """One request at one size, and what both sides measured for it."""

    family: str
    variant: str
    size: int
    method: str
    path: str
    body: dict | None = None
    reps: int | None = None  # fewer for the slowest
    seconds: dict = field(default_factory=lambda: {"ours": [], "stock": []})
    peak_rss_mb: dict = field(default_factory=lambda: {"ours": 0.0, "stock": 0.0})


def probes(ids: dict, quick: bool) -> list[Probe]:
    run_sizes = scale_data.RUN_SIZES[:2] if quick else scale_data.RUN_SIZES
    history_sizes = scale_data.HISTORY_SIZES[:2] if quick else scale_data.HISTORY_SIZES
    trace_sizes = scale_data.TRACE_SIZES[:1] if quick else scale_data.TRACE_SIZES
    out = []
    runs_page = {"max_results": 100, "run_view_type": "ACTIVE_ONLY"}
    for n in run_sizes:
        exp = [str(ids["runs"][n])]
        # the UI's runs table: a page of 100 (ajax-api is the UI's prefix)
        out += [
            Probe("runs page", "start-time order", n, "POST", "/ajax-api/2.0/mlflow/runs/search",
                  {"experiment_ids": exp, "order_by": ["attributes.start_time DESC"], **runs_page}),
            Probe("runs page", "metric order", n, "POST", "/ajax-api/2.0/mlflow/runs/search",
                  {"experiment_ids": exp, "order_by": ["metrics.`m1` DESC"], **runs_page}),
            Probe("runs page", "filter on a metric and a param", n, "POST", "/ajax-api/2.0/mlflow/runs/search",
                  {"experiment_ids": exp, "filter": "metrics.m1 > 0.5 and params.p1 = '7'",
                   "order_by": ["attributes.start_time DESC"], **runs_page}),
        ]
    run = ids["history"]["run"]
    for n in history_sizes:
        key = f"loss-{n}"
        out += [
            # no max_results: the whole history in one answer (the stock client pages by 25,000)
            Probe("metric history", "get-history (whole)", n, "GET",
                  "/api/2.0/mlflow/metrics/get-history?" + urlencode({"run_id": run, "metric_key": key}),
                  reps=3 if n >= 1_000_000 else None),
            # the UI's chart: sampled to 320 points
            Probe("metric history", "get-history-bulk-interval (chart)", n, "GET",
                  "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?"
                  + urlencode({"run_ids": run, "metric_key": key, "max_results": 320})),
        ]
    for n in trace_sizes:
        loc = [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": str(ids["traces"][n])}}]
        out += [
            Probe("traces", "search_traces", n, "POST", "/api/3.0/mlflow/traces/search",
                  {"locations": loc, "max_results": 100}),
            Probe("traces", "span-name filter", n, "POST", "/api/3.0/mlflow/traces/search",
                  {"locations": loc, "max_results": 100, "filter": "span.name = 'retrieve'"}),
        ]
    n = scale_data.EXPERIMENTS
    out.append(Probe("experiments list", "page of 25 by last update", n, "GET",
                     "/ajax-api/2.0/mlflow/experiments/search?"
                     + urlencode({"max_results": 25, "order_by": "last_update_time DESC"})))
    return out


class PeakRss:
    """The server's RSS (all processes), sampled every 20 ms while a call runs: growth over before."""

    def __init__(self, server: Running):
        self.server, self.peak, self.stop = server, 0.0, threading.Event()

    def __enter__(self):
        self.base = self.server.rss_mb()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.server.rss_mb() - self.base)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def call(session: requests.Session, server: Running, probe: Probe) -> tuple[float, bytes]:
    started = time.perf_counter()
    r = session.request(probe.method, server.url + probe.path, json=probe.body, timeout=TIMEOUT,
                        auth=server.auth)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{server.kind} {probe.method} {probe.path}: {r.status_code} {r.text[:300]}")
    return elapsed, r.content


def digest(body: bytes) -> str:
    """The answer's content, independent of JSON formatting (ours is compact, stock's is not)."""
    return hashlib.sha256(json.dumps(json.loads(body), sort_keys=True).encode()).hexdigest()


def measure(servers: dict[str, Running], probe: Probe, reps: int) -> None:
    sessions = {side: requests.Session() for side in servers}
    answers = {}
    for side, server in servers.items():  # warm: connections, caches; and the answers to compare
        with PeakRss(server) as rss:
            _, body = call(sessions[side], server, probe)
        probe.peak_rss_mb[side] = rss.peak
        answers[side] = digest(body)
        if len(body) < 10_000_000:
            kept = DIFFS / f"{side}.json"
            kept.parent.mkdir(exist_ok=True)
            kept.write_bytes(body)
        del body
    if answers["ours"] != answers["stock"]:
        raise AssertionError(f"different answers for {probe.family} / {probe.variant} at {probe.size}: "
                             f"see {DIFFS}")
    for rep in range(probe.reps or reps):
        for side in ("ours", "stock") if rep % 2 == 0 else ("stock", "ours"):
            elapsed, _ = call(sessions[side], servers[side], probe)
            probe.seconds[side].append(elapsed)


def first_start_with_indexes(uri: str, dest: str, work, env: dict) -> tuple[Running, float]:
    s = start("ours", uri, dest, work, extra_env=env)
    return s, s.wait_first_api_ok(timeout=1800)


# ---------------------------------------------------------------- report

def ms(seconds: list[float]) -> str:
    value = median(seconds) * 1000
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def tables(results: list[Probe]) -> str:
    lines = []
    for family in dict.fromkeys(p.family for p in results):
        rows = [p for p in results if p.family == family]
        memory = family == "metric history"
        lines += [f"**{family}** (p50 ms; ratio ours / stock; "
                  + ("peak RSS growth of the server while answering, MB; " if memory else "")
                  + "ours at this size / ours at the smallest)", "",
                  "| request | size | ours | stock | ratio | ours vs smallest |"
                  + (" RSS ours / stock |" if memory else ""),
                  "|---|---|---|---|---|---|" + ("---|" if memory else "")]
        for p in rows:
            smallest = min((q for q in rows if q.variant == p.variant), key=lambda q: q.size)
            growth = median(p.seconds["ours"]) / median(smallest.seconds["ours"])
            line = (f"| {p.variant} | {p.size:,} | {ms(p.seconds['ours'])} | {ms(p.seconds['stock'])} | "
                    f"{median(p.seconds['ours']) / median(p.seconds['stock']):.2f} | {growth:.2f}x |")
            if memory:
                line += f" {p.peak_rss_mb['ours']:.0f} / {p.peak_rss_mb['stock']:.0f} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def plots(results: list[Probe]) -> list[str]:
    """One PNG per family: p50 against size, log-log, ours and stock per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for family in dict.fromkeys(p.family for p in results):
        rows = [p for p in results if p.family == family]
        if len({p.size for p in rows}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for i, variant in enumerate(dict.fromkeys(p.variant for p in rows)):
            points = sorted((p for p in rows if p.variant == variant), key=lambda p: p.size)
            sizes = [p.size for p in points]
            color = f"C{i}"
            ax.plot(sizes, [median(p.seconds["ours"]) * 1000 for p in points], "o-", color=color,
                    label=f"{variant}, ours")
            ax.plot(sizes, [median(p.seconds["stock"]) * 1000 for p in points], "s--", color=color, alpha=0.6,
                    label=f"{variant}, stock")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel({"runs page": "runs in the experiment", "metric history": "points in the metric",
                       "traces": "traces in the experiment"}.get(family, "size"))
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"{family}: ours (solid) and mlflow server (dashed)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"scale-{family.replace(' ', '-')}.png"
        fig.savefig(DOCS / name)
        plt.close(fig)
        names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the smallest sizes only")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--only", default="", help="the families whose name holds this text")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with services() as (work, pg, gcs):
        env = gcs.env()
        os.environ.update(env)
        dest = f"gs://{gcs.bucket}/scale"
        ours_db, stock_db = "scale_ours", "scale_stock"
        uri = database_uri(pg, ours_db)
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        # MLflow's schema and its Default experiment, as a server's first start leaves them (so both
        # copies hold the same one); our indexes come with our server's first start
        SqlAlchemyStore(uri, "mlflow-artifacts:/").engine.dispose()
        started = time.monotonic()
        sizes = {} if not args.quick else {
            "run_sizes": scale_data.RUN_SIZES[:2], "history_sizes": scale_data.HISTORY_SIZES[:2],
            "trace_sizes": scale_data.TRACE_SIZES[:1]}
        ids = scale_data.seed(pg.dsn(ours_db), "mlflow-artifacts:/", **sizes)
        seeding = time.monotonic() - started
        stock_uri = database_uri(pg, stock_db, template=ours_db)
        servers: dict[str, Running] = {}
        try:
            servers["ours"], first_start = first_start_with_indexes(uri, dest, work, env)
            servers["stock"] = start("baseline", stock_uri, dest, work, extra_env=env)
            servers["stock"].wait_first_api_ok(timeout=600)
            results = [p for p in probes(ids, args.quick) if args.only in p.family]
            for probe in results:
                measure(servers, probe, args.reps)
                print(f"{probe.family} / {probe.variant} at {probe.size:,}: ours {ms(probe.seconds['ours'])} ms, "
                      f"stock {ms(probe.seconds['stock'])} ms", flush=True)
        finally:
            for s in servers.values():
                s.stop()
    load_after = os.getloadavg()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    images = [] if args.no_doc else plots(results)
    text = (f"Run {when} on {os.cpu_count()} cores, {WORKERS} workers each side, p50 of {args.reps} calls a side "
            f"(3 for the 1M-point whole history), the sides taking turns; {load_average(load_before, load_after)}. "
            f"Seeding took {seeding:.0f} s; our first start on the seeded database, building our "
            f"indexes, {first_start:.1f} s. Every answer of ours equal to stock's.\n\n"
            + tables(results) + "\n" + "\n".join(f"![{name}]({name})" for name in images))
    print(text)
    if not args.no_doc:
        write_doc_section(text, MARKERS)


if __name__ == "__main__":
    main()
