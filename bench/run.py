"""Benchmarks: our server against MLflow's own `mlflow server`, interleaved on one machine.

    .venv/bin/python -m bench.run                 # everything, ~30 minutes on 2 cores
    .venv/bin/python -m bench.run --cycles 2 --seconds 10 --skip-large --skip-instructions   # ~8 minutes

Each comparison runs both sides in the same run, alternating A B A B ..., and reports medians
and the ratio; absolute times are context only (this machine is shared and noisy). The table
is printed and written into docs/benchmarks.md between its bench markers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import gc
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import bcrypt

from bench import auth_instructions
from bench.common import (
    AUTH_HEADER,
    ROOT,
    USER,
    client_env,
    database_uri,
    median,
    median_interval,
    percentile,
    services,
)
from bench.servers import WORKERS, Running, start
from tests.services import latencies, wait_for_workers

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def mlflow_client(server: Running):
    from mlflow import MlflowClient

    client_env(server)
    return MlflowClient(tracking_uri=server.url)


def metric_runs(server: Running, label: str, threads: int = 8) -> tuple[str, list[str]]:
    """A fresh experiment and one run per client thread, for the `log_metric` load."""
    client = mlflow_client(server)
    exp = client.create_experiment(f"{label}-{time.time_ns()}")
    return exp, [client.create_run(exp).info.run_id for _ in range(threads)]


def fresh_connections() -> None:
    """Drop the stock client's pooled keep-alive connections so the next window connects afresh.

    Gunicorn hands each new connection to whichever worker accepts it first; kept alive across
    windows, one lopsided split would weigh on every window of that server alike.
    """
    from mlflow.utils.request_utils import _cached_get_request_session

    _cached_get_request_session.cache_clear()
    gc.collect()  # the sessions' sockets close as they are freed


def calls_per_second(runs: list[str], seconds: float, call) -> float:
    """Calls per second from one thread per run, for ``seconds``: each thread gets its function
    from ``call(run_id)`` and calls it with step 0, 1, 2, ..."""
    deadline = time.monotonic() + seconds
    counts = [0] * len(runs)

    def loop(i):
        one = call(runs[i])
        step = 0
        while time.monotonic() < deadline:
            one(step)
            step += 1
            counts[i] += 1

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        list(pool.map(loop, range(len(runs))))
    return sum(counts) / (time.monotonic() - started)


def log_metric_rate(server: Running, runs: list[str], seconds: float) -> float:
    """req/s of `log_metric` from one client thread per run, for `seconds`, on new connections."""
    fresh_connections()
    client = mlflow_client(server)
    return calls_per_second(runs, seconds,
                            lambda run_id: lambda step: client.log_metric(run_id, "m", step * 0.1, step=step))


def raw_log_metric_rate(server: Running, runs: list[str], seconds: float) -> float:
    """req/s of `log_metric` from one thread per run, each on a keep-alive connection of its own,
    sending the JSON the stock client sends with nothing else in the client's loop.

    The stock client spends a few ms of Python per call (validation, protobuf, `requests`), and
    with 8 threads in one process on 2 cores it holds about a core: that rate is the client's as
    much as the server's. This one spends tens of us, so the rate is what the server sustains.
    """
    headers = {"Content-Type": "application/json"}
    if server.auth:
        headers["Authorization"] = AUTH_HEADER
    connections = []

    def sender(run_id: str):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connections.append(conn)
        prefix = f'{{"run_id": "{run_id}", "key": "m", "timestamp": '

        def send(step: int) -> None:
            body = f'{prefix}{int(time.time() * 1000)}, "value": {step * 0.1}, "step": {step}}}'
            conn.request("POST", "/api/2.0/mlflow/runs/log-metric", body, headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{server.kind}: log-metric answered {response.status}: {answer[:200]!r}")

        return send

    try:
        return calls_per_second(runs, seconds, sender)
    finally:
        for conn in connections:
            conn.close()


def measured_window(server: Running, runs: list[str], seconds: float) -> tuple[float, float]:
    """req/s of `log_metric` over one window, and the server's CPU ms per request in it."""
    cpu, served = server.cpu_seconds(), server.requests_served()
    rate = log_metric_rate(server, runs, seconds)
    return rate, (server.cpu_seconds() - cpu) / (server.requests_served() - served) * 1000


def load_round(into: dict, server: Running, runs: list[str], experiment_id: str, window: float) -> None:
    """One side's turn in an interleaved comparison: a `log_metric` window (req/s, server CPU per
    request) and two `log_batch` calls, added to ``into``'s lists."""
    rate, cpu_ms = measured_window(server, runs, window)
    into["rps"].append(rate)
    into["cpu_ms"].append(cpu_ms)
    into["batch_s"] += log_batch_latencies(server, experiment_id, 2)


def log_batch_latencies(server: Running, experiment_id: str, calls: int, run_maker: Running | None = None) -> list[float]:
    """Seconds per `log_batch` of 1000 metrics to a new run of the experiment; the run is made
    through ``run_maker`` when ``server`` cannot make one (the floor)."""
    from mlflow.entities import Metric

    client = mlflow_client(server)
    run_id = mlflow_client(run_maker or server).create_run(experiment_id).info.run_id
    counter = iter(range(10**9))

    def one():
        base = next(counter) * 1000
        client.log_batch(run_id, metrics=[Metric("x", float(i), 0, base + i) for i in range(1000)])

    return latencies(one, calls)


def search_latencies(server: Running, experiment_id: str, calls: int) -> list[float]:
    client = mlflow_client(server)
    return latencies(lambda: client.search_runs([experiment_id], max_results=1000), calls)


def make_search_experiment(server: Running, runs: int = 1000) -> str:
    """An experiment of ``runs`` runs, each with 5 params, 5 metrics and 3 tags."""
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow_client(server)
    exp = client.create_experiment(f"search-{runs}-{time.time_ns()}")

    def one(i):
        run = client.create_run(exp)
        client.log_batch(run.info.run_id, metrics=[Metric(f"m{k}", i * k, 0, 0) for k in range(5)],
                         params=[Param(f"p{k}", str(i + k)) for k in range(5)],
                         tags=[RunTag(f"t{k}", str(k)) for k in range(3)])
        client.set_terminated(run.info.run_id)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(runs)))
    return exp


def idle_pss(server: Running, quiet: float = 10, limit: float = 120) -> float:
    """PSS once the process tree has stopped changing for `quiet` seconds.

    `mlflow server`'s job runner starts its huey consumers 10-20 s after the first request is
    answered, from threads; measuring earlier missed two thirds of its memory.
    """
    client = mlflow_client(server)
    for _ in range(5):
        client.search_experiments(max_results=5)
    deadline = time.monotonic() + limit
    pids, since = server.pids(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(1)
        now = server.pids()
        if now != pids:
            pids, since = now, time.monotonic()
    return server.pss_mb()


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}x" if b else "n/a"


def paired_ratio(a: list[float], b: list[float]) -> str:
    """Median of a[i]/b[i] (each pair measured in the same round), with its 95 % interval."""
    ratios = [x / y for x, y in zip(a, b, strict=True) if y]
    low, high = median_interval(ratios)
    return f"{median(ratios):.3f}x [{low:.3f}-{high:.3f}]"


def implied_ratio(layer_us: float, request_cpu_ms: float) -> float:
    """Throughput with a layer costing layer_us of CPU per request, relative to without it,
    for a CPU-bound server whose requests cost request_cpu_ms without it."""
    return request_cpu_ms / (request_cpu_ms + layer_us / 1000)


# ---------------------------------------------------------------- the figures

def cold_starts(uri_for, dest: str, work: Path, cycles: int) -> dict:
    """Process start to the first authenticated API call answered 200: migrated and empty DB."""
    out = {"ours": [], "baseline": [], "ours_empty": [], "baseline_empty": []}
    warm_uri = uri_for("cold_migrated")
    for kind in ("ours", "baseline"):  # migrate once, so the next starts find the schema current
        s = start(kind, warm_uri, dest, work)
        s.wait_first_api_ok()
        s.stop()
    for cycle in range(cycles):
        for kind in ("ours", "baseline"):
            s = start(kind, warm_uri, dest, work)
            out[kind].append(s.wait_first_api_ok())
            s.stop()
            s = start(kind, uri_for(f"cold_empty_{kind}_{cycle}"), dest, work)
            out[f"{kind}_empty"].append(s.wait_first_api_ok())
            s.stop()
    return out


def throughput_and_latency(uri: str, dest: str, work: Path, cycles: int, seconds: float) -> dict:
    """Each cycle starts both servers afresh and keeps them up together; the measurements then
    take turns in short blocks (ours, baseline, baseline, ours, ...), so samples of the two
    sides are minutes apart at most and the machine's drift falls on both alike."""
    out: dict[str, list] = {k: [] for k in ("metric_ours", "metric_base", "batch_ours", "batch_base",
                                            "search_ours", "search_base", "pss_ours", "pss_base",
                                            "procs_ours", "procs_base")}
    search_exp = None
    blocks = 3
    for _ in range(cycles):
        servers: dict[str, Running] = {}
        try:
            for side, kind in (("ours", "ours"), ("base", "baseline")):  # one at a time: migrations
                servers[side] = start(kind, uri, dest, work)
                servers[side].wait_first_api_ok()
            for side, s in servers.items():
                out[f"pss_{side}"].append(idle_pss(s))
                out[f"procs_{side}"].append(len(s.pids()))
            if search_exp is None:
                search_exp = make_search_experiment(servers["ours"])
            runs, exps = {}, {}
            for side, s in servers.items():
                exps[side], runs[side] = metric_runs(s, f"bench-{side}")
            for block in range(blocks):
                for side in ("ours", "base") if block % 2 == 0 else ("base", "ours"):
                    s = servers[side]
                    out[f"metric_{side}"].append(log_metric_rate(s, runs[side], seconds / blocks))
                    out[f"batch_{side}"] += log_batch_latencies(s, exps[side], 5)
                    out[f"search_{side}"] += search_latencies(s, search_exp, 2)
        finally:
            for s in servers.values():
                s.stop()
    return out


def auth_cost(uri: str, dest: str, work: Path, cycles: int, rounds: int, window: float) -> dict:
    """`log_metric` req/s through our server (plain and bcrypt password) and without the auth layer.

    Within a cycle the three servers run at the same time and take turns under load in short
    windows (A B C, C B A, ...), so drift in the machine's load falls on all three alike; only
    one is loaded at a time. Each cycle starts three fresh servers: two instances of the very
    same server differ here by a few percent for the whole of their life (measured: plain vs
    bcrypt, which run the same code once the one bcrypt check is cached), so one set of
    instances would report its own luck as the cost of the layer.
    """
    hashed = bcrypt.hashpw(USER[1].encode(), bcrypt.gensalt(rounds=12)).decode()
    sides = {"plain": ("ours", None), "bcrypt": ("ours", f"{USER[0]}:{hashed}"), "noauth": ("noauth", None)}
    out: dict = {k: [] for k in sides}
    out["cpu_ms"] = {k: [] for k in sides}
    out["cycle_ratios"] = {k: [] for k in ("plain", "bcrypt")}
    for _ in range(cycles):
        servers: dict[str, Running] = {}
        first = len(out["noauth"])
        try:
            for name, (kind, users) in sides.items():
                servers[name] = start(kind, uri, dest, work, users=users)
                servers[name].wait_first_api_ok()
            runs = {}
            for name, s in servers.items():
                _, runs[name] = metric_runs(s, f"auth-{name}")
                log_metric_rate(s, runs[name], 2)  # warm: connections, caches, bcrypt check
            for round_ in range(rounds):
                # A B C, then C B A: no server always follows the same one
                for name, s in list(servers.items())[:: 1 if round_ % 2 == 0 else -1]:
                    rate, cpu_ms = measured_window(s, runs[name], window)
                    out[name].append(rate)
                    out["cpu_ms"][name].append(cpu_ms)
        finally:
            for s in servers.values():
                s.stop()
        for name in out["cycle_ratios"]:
            out["cycle_ratios"][name].append(
                median([a / b for a, b in zip(out[name][first:], out["noauth"][first:], strict=True)]))
    out["middleware_us"] = middleware_cost_us(hashed)
    return out


def middleware_cost_us(hashed: str, calls: int = 50_000) -> dict:
    """In-process cost of BasicAuthMiddleware per authenticated request, over a bare WSGI app."""
    import timeit

    from server.gate.auth import BasicAuthMiddleware
    from server.gate.failures import FailureLimiter
    from server.gate.users import merge, parse_htpasswd

    def bare(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/2.0/mlflow/runs/log-metric", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_AUTHORIZATION": AUTH_HEADER}
    cost = {}
    for name, line in (("plain", ":".join(USER)), ("bcrypt", f"{USER[0]}:{hashed}")):
        table = merge(parse_htpasswd(line, "bench"))
        wrapped = BasicAuthMiddleware(bare, users=lambda table=table: table, limiter=FailureLimiter(10**6, 60))
        wrapped(dict(environ), lambda *a: None)  # the one bcrypt verification
        with_auth = min(timeit.repeat(lambda w=wrapped: w(dict(environ), lambda *a: None), number=calls, repeat=3))
        without = min(timeit.repeat(lambda: bare(dict(environ), lambda *a: None), number=calls, repeat=3))
        cost[name] = (with_auth - without) / calls * 1e6
    return cost


def large_artifact(uri: str, gcs, work: Path, size_mib: int) -> dict:
    """One artifact of size_mib through the proxy to the GCS emulator: time, RSS, TMPDIR."""
    from google.cloud import storage

    blob_path = work / "large.bin"
    with open(blob_path, "wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(1024 * 1024))
    s = start("ours", uri, f"gs://{gcs.bucket}/large", work / "large-server", extra_env=gcs.env())
    s.wait_first_api_ok()
    wait_for_workers(s.proc.pid, WORKERS)  # else a worker still forking would count as growth
    peak = {"rss": s.rss_mb(), "tmp": 0}
    base_rss = peak["rss"]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], s.rss_mb())
            for root, _, files in os.walk(work / "large-server"):
                for name in files:
                    try:
                        peak["tmp"] = max(peak["tmp"], os.path.getsize(os.path.join(root, name)))
                    except OSError:
                        pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        import mlflow

        client_env(s)
        mlflow.set_tracking_uri(s.url)
        with mlflow.start_run() as run:
            started = time.monotonic()
            mlflow.log_artifact(str(blob_path))
            up = time.monotonic() - started
        started = time.monotonic()
        mlflow_client(s).download_artifacts(run.info.run_id, blob_path.name, tempfile.mkdtemp(dir=work))
        down = time.monotonic() - started
    finally:
        stop.set()
        watcher.join()
        s.stop()
    os.environ.update(gcs.env())
    bucket = storage.Client(project="bench").bucket(gcs.bucket)
    started = time.monotonic()
    bucket.blob("direct/large.bin", chunk_size=8 * 1024 * 1024).upload_from_filename(str(blob_path))
    direct = time.monotonic() - started
    blob_path.unlink()
    return {"size_mib": size_mib, "up_s": up, "down_s": down, "direct_s": direct,
            "rss_growth_mb": peak["rss"] - base_rss, "largest_tmp_mb": peak["tmp"] / 1024 / 1024}


def image_sizes() -> dict[str, float] | None:
    """MB of our image and of a stand-in for MLflow's official one, both built here now."""
    from tests.container import Missing, build_image, docker_available, inspect

    try:
        docker_available()
    except Missing as exc:
        print(f"image sizes skipped: {exc}")
        return None
    ours = build_image("mlflow-server:bench")
    with open(ROOT / "bench" / "official-like.Dockerfile", "rb") as dockerfile:
        subprocess.run(["docker", "build", "--network", "host", "-t", "mlflow-official-like:bench", "-"],
                       stdin=dockerfile, capture_output=True, check=True, timeout=1800)
    return {"ours": inspect(ours)["Size"] / 1e6, "official_like": inspect("mlflow-official-like:bench")["Size"] / 1e6}


PROFILED = {"search_runs": "one search_runs of 1000 runs", "log_batch": "one log_batch of 1000 metrics"}


def profile_calls(uri: str, dest: str, experiment_name_prefix: str = "search-1000-") -> dict[str, str]:
    """cProfile of one call of each kind in PROFILED, run in-process through the WSGI app.

    The garbage collector is set up by gunicorn.conf.py's own hooks, as in a worker; the time
    spent in collections (invisible to cProfile) is printed first.
    """
    script = f"""
import cProfile, gc, io, itertools, pstats, time
from werkzeug.test import Client
from bench.common import AUTH_HEADER, in_process_app
app = in_process_app({uri!r}, {dest!r})  # this process now stands where a fresh worker does
gc_seconds, gc_started = [0.0], [0.0]
def on_gc(phase, info):
    if phase == "start":
        gc_started[0] = time.perf_counter()
    else:
        gc_seconds[0] += time.perf_counter() - gc_started[0]
gc.callbacks.append(on_gc)
client = Client(app)
auth = {{"Authorization": AUTH_HEADER}}

def profile(name, path, make_body):
    client.post(path, json=make_body(), headers=auth)  # warm
    gc_seconds[0] = 0.0
    started = time.perf_counter()
    r = client.post(path, json=make_body(), headers=auth)
    print(f"=== {{name}}")
    print(f"one call without the profiler: {{time.perf_counter() - started:.3f}} s, "
          f"of which garbage collection {{gc_seconds[0]:.3f}} s; response {{len(r.data)}} bytes")
    prof = cProfile.Profile()
    prof.enable()
    r = client.post(path, json=make_body(), headers=auth)
    prof.disable()
    assert r.status_code == 200, r.data[:300]
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue())
    return r

exps = client.post("/api/2.0/mlflow/experiments/search", json={{"max_results": 1000}}, headers=auth).get_json()
exp = next(e["experiment_id"] for e in exps["experiments"] if e["name"].startswith({experiment_name_prefix!r}))
r = profile("search_runs", "/api/2.0/mlflow/runs/search", lambda: {{"experiment_ids": [exp], "max_results": 1000}})
assert len(r.get_json()["runs"]) == 1000
run = client.post("/api/2.0/mlflow/runs/create", json={{"experiment_id": exp}}, headers=auth).get_json()["run"]
steps = itertools.count()
profile("log_batch", "/api/2.0/mlflow/runs/log-batch", lambda: {{"run_id": run["info"]["run_id"], "metrics": [
    {{"key": "x", "value": float(i), "timestamp": 0, "step": next(steps)}} for i in range(1000)]}})
"""
    result = subprocess.run([os.sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    sections = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    return {name: sections.get(name, result.stderr[-3000:])[:9000] for name in PROFILED}


# ---------------------------------------------------------------- report

def table(cold, tput, auth, instructions, large, img) -> str:
    m = median
    rows = [
        "| figure | ours | `mlflow server` | ratio | target |",
        "|---|---|---|---|---|",
        f"| cold start, migrated DB (s, median) | {m(cold['ours']):.2f} | {m(cold['baseline']):.2f} | "
        f"{ratio(m(cold['ours']), m(cold['baseline']))} | <= 0.35x |",
        f"| cold start, empty DB incl. migrations (s) | {m(cold['ours_empty']):.2f} | {m(cold['baseline_empty']):.2f}"
        f" | {ratio(m(cold['ours_empty']), m(cold['baseline_empty']))} | <= 1.0x |",
        f"| `log_metric`, 8 client threads (req/s) | {m(tput['metric_ours']):.0f} | {m(tput['metric_base']):.0f} | "
        f"{ratio(m(tput['metric_ours']), m(tput['metric_base']))} | >= 1.8x |",
        f"| `log_batch` 1000 metrics p50 / p99 (ms) | {m(tput['batch_ours']) * 1000:.0f} / "
        f"{percentile(tput['batch_ours'], 99) * 1000:.0f} | {m(tput['batch_base']) * 1000:.0f} / "
        f"{percentile(tput['batch_base'], 99) * 1000:.0f} | {ratio(m(tput['batch_base']), m(tput['batch_ours']))} "
        "(speed) | >= 1.0x |",
        f"| `search_runs` 1000 runs p50 / p99 (ms) | {m(tput['search_ours']) * 1000:.0f} / "
        f"{percentile(tput['search_ours'], 99) * 1000:.0f} | {m(tput['search_base']) * 1000:.0f} / "
        f"{percentile(tput['search_base'], 99) * 1000:.0f} | "
        f"{ratio(m(tput['search_base']), m(tput['search_ours']))} (speed) | >= 1.0x |",
        f"| idle memory, PSS of all processes ({WORKERS} workers, MB) | {m(tput['pss_ours']):.0f} | "
        f"{m(tput['pss_base']):.0f} | {ratio(m(tput['pss_ours']), m(tput['pss_base']))} | <= 0.25x |",
        f"| processes at idle | {m(tput['procs_ours']):.0f} | {m(tput['procs_base']):.0f} | | |",
        "",
        "| auth layer (`log_metric`, 8 client threads) | with auth, plain password | with auth, bcrypt cost 12 | "
        "same gunicorn, no auth | ratios, plain / bcrypt | target |",
        "|---|---|---|---|---|---|",
        f"| req/s, median of {len(auth['noauth'])} windows; ratio: median of the per-round ratios, all cycles "
        "[95 % interval] | "
        f"{m(auth['plain']):.0f} | {m(auth['bcrypt']):.0f} | {m(auth['noauth']):.0f} | "
        f"{paired_ratio(auth['plain'], auth['noauth'])} / {paired_ratio(auth['bcrypt'], auth['noauth'])} | >= 0.97x |",
        "| control, bcrypt / plain: the same code once the one bcrypt check is cached, so any "
        "distance from 1 is this method's noise | | | | " + paired_ratio(auth["bcrypt"], auth["plain"]) + " | |",
        "| the same ratio within each cycle (fresh servers per cycle), plain / bcrypt | | | | "
        + " / ".join(", ".join(f"{r:.3f}" for r in auth["cycle_ratios"][k]) for k in ("plain", "bcrypt")) + " | |",
        "| server CPU per request (ms, all processes, median of the windows) | "
        + " | ".join(f"{m(auth['cpu_ms'][k]):.2f}" for k in ("plain", "bcrypt", "noauth")) + " | | |",
        f"| the auth middleware alone, in-process (us per request) | {auth['middleware_us']['plain']:.1f} | "
        f"{auth['middleware_us']['bcrypt']:.1f} | 0 | | |",
        "| throughput ratio implied by the middleware's share of the server's CPU per request | | | | "
        + " / ".join(f"{implied_ratio(auth['middleware_us'][k], m(auth['cpu_ms']['noauth'])):.4f}x"
                     for k in ("plain", "bcrypt")) + " | >= 0.97x |",
    ]
    if instructions:
        inst = {k: m(v) for k, v in instructions.items()}
        rows.append(
            "| CPU instructions per request through the whole app, in-process (callgrind: the same count on a "
            "quiet or a busy machine); ratio: no auth / with auth | "
            + " | ".join(f"{inst[k]:,.0f}" for k in auth_instructions.KINDS) + " | "
            + " / ".join(f"{inst['noauth'] / inst[k]:.4f}x" for k in ("plain", "bcrypt")) + " | >= 0.97x |")
    if large:
        size = large["size_mib"] * 1.048576
        rows += [
            "",
            f"| one {large['size_mib']} MiB artifact, GCS emulator | value | target |",
            "|---|---|---|",
            f"| upload through the proxy (stock client) | {large['up_s']:.1f} s, {size / large['up_s']:.0f} MB/s | |",
            f"| download through the proxy | {large['down_s']:.1f} s, {size / large['down_s']:.0f} MB/s | |",
            f"| direct upload to the emulator (google-cloud-storage) | {large['direct_s']:.1f} s, "
            f"{size / large['direct_s']:.0f} MB/s | context |",
            f"| server peak RSS growth | {large['rss_growth_mb']:.0f} MB | < 100 MB |",
            f"| largest file written under TMPDIR | {large['largest_tmp_mb']:.1f} MB | nothing artifact-sized |",
        ]
    if img:
        rows += ["", "| image (uncompressed, `docker image inspect`) | ours | MLflow's official image, stand-in | ratio |",
                 "|---|---|---|---|",
                 f"| size (MB) | {img['ours']:.0f} | {img['official_like']:.0f} | "
                 f"{ratio(img['ours'], img['official_like'])} |"]
    else:
        rows += ["", "Image sizes: no Docker engine here."]
    return "\n".join(rows)


def rounded(samples, digits: int = 3):
    """The raw samples with floats to `digits` places, for the doc (json.dumps has no such option)."""
    if isinstance(samples, dict):
        return {k: rounded(v, digits) for k, v in samples.items()}
    if isinstance(samples, list):
        return [rounded(v, digits) for v in samples]
    return round(samples, digits) if isinstance(samples, float) else samples


def write_doc(text: str) -> None:
    write_doc_section(text, (BEGIN, END))


def write_doc_section(text: str, markers: tuple[str, str]) -> None:
    """Replace what docs/benchmarks.md holds between the two markers (added at its end if missing)."""
    begin, end = markers
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin not in doc:
        doc = f"{doc.rstrip()}\n\n{begin}\n{end}\n"
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    DOC.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-image", action="store_true", help="do not build the two images to size them")
    parser.add_argument("--skip-instructions", action="store_true", help="no callgrind count of the auth layer")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    with services() as (work, pg, gcs):
        uri_for = functools.partial(database_uri, pg)
        dest = f"gs://{gcs.bucket}/bench"
        os.environ.update(gcs.env())
        shared = uri_for("bench")
        s = start("ours", shared, dest, work, extra_env=gcs.env())
        s.wait_first_api_ok()
        s.stop()
        cold = cold_starts(uri_for, dest, work, args.cycles + 1)
        tput = throughput_and_latency(shared, dest, work, args.cycles, args.seconds)
        auth = auth_cost(shared, dest, work, cycles=args.cycles, rounds=16, window=2.0)
        instructions = None
        if not args.skip_instructions:
            if shutil.which("valgrind") and shutil.which("callgrind_control"):
                instructions = auth_instructions.measure(shared)
            else:
                print("auth instructions skipped: valgrind is not installed (apt-get install valgrind)")
        large = None if args.skip_large else large_artifact(uri_for("bench_large"), gcs, work, args.large_mib)
        profiles = profile_calls(shared, dest)
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = (f"Run {when} on {os.cpu_count()} cores, {args.cycles} interleaved cycles, "
                f"{args.seconds:.0f} s per throughput run, {WORKERS} workers each side.\n\n"
                + table(cold, tput, auth, instructions, large, None if args.skip_image else image_sizes())
                + "".join(f"\n\n<details><summary>Profile: {PROFILED[name]}, in-process (cProfile, cumulative)"
                          f"</summary>\n\n```\n{stats.strip()}\n```\n</details>" for name, stats in profiles.items())
                + "\n\nRaw samples: `"
                + json.dumps(rounded({"cold": cold, "log_metric": {"ours": tput["metric_ours"],
                                                                    "baseline": tput["metric_base"]},
                                      "auth": auth, "auth_instructions": instructions})) + "`")
        print(text)
        if not args.no_doc:
            write_doc(text)


if __name__ == "__main__":
    main()
