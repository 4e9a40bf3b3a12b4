"""What roles per workspace cost: the working tree twice, interleaved.

    .venv/bin/python -m bench.workspaces                       # 2 cycles x 6 rounds
    .venv/bin/python -m bench.workspaces --cycles 3 --rounds 10

Three servers, each on a database of its own (MLflow refuses to turn workspaces off over data
in a workspace): ``off``, no workspaces and the bench user a server-wide ``[editor]``;
``on, server-wide``, ``MLFLOW_ENABLE_WORKSPACES=true`` and the same server-wide editor, the stock
client in a workspace (``MLFLOW_WORKSPACE``: it sends the header); ``on, per workspace``, the
same with the user an ``[editor bench]`` of that workspace only. The last two differ only in
the roles, so their ratio is what roles per workspace cost; the first two differ in MLflow's
own work for workspaces. Each round loads the three in turn (the order rotating): a window of
``log_metric`` from 8 client threads, two ``log_batch`` calls of 1000 metrics and two
``search_runs`` over an experiment of 1000 runs. Prints medians with the median of the
per-round ratios and its 95 % interval, as bench.ab does (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
import urllib.request

from bench.common import USER, database_uri, median, services
from bench.run import (
    load_round,
    make_search_experiment,
    measured_window,
    metric_runs,
    paired_ratio,
    search_latencies,
)
from bench.servers import Running, start

WORKSPACE = "bench"
BOSS = ("boss", "boss-Passw0rd-123")


def _as_boss(server: Running, method: str, path: str, body: dict | None = None) -> int:
    token = base64.b64encode(":".join(BOSS).encode()).decode()
    request = urllib.request.Request(f"{server.url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except OSError:
        return 0


def start_side(side: str, uri: str, dest: str, work) -> Running:
    section = f"[editor {WORKSPACE}]" if side == PER_WORKSPACE else "[editor]"
    users = f"{BOSS[0]}:{BOSS[1]}\n{section}\n{':'.join(USER)}"
    if side == OFF:
        return start("ours", uri, dest, work, users=users)
    server = start("ours", uri, dest, work, extra_env={"MLFLOW_ENABLE_WORKSPACES": "true"}, users=users)
    deadline = time.monotonic() + 180
    while _as_boss(server, "GET", "/api/3.0/mlflow/workspaces") != 200:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(f"the workspaces side did not start:\n{server.log.read_text()[-2000:]}")
        time.sleep(0.2)
    _as_boss(server, "POST", "/api/3.0/mlflow/workspaces", {"name": WORKSPACE})
    return server


class InWorkspace:
    """The stock client in the bench workspace while the workspaces side is loaded."""

    def __init__(self, side: str):
        self.on = side != OFF

    def __enter__(self):
        if self.on:
            os.environ["MLFLOW_WORKSPACE"] = WORKSPACE
        else:
            os.environ.pop("MLFLOW_WORKSPACE", None)

    def __exit__(self, *exc):
        os.environ.pop("MLFLOW_WORKSPACE", None)


OFF, SERVER_WIDE, PER_WORKSPACE = "off", "on, server-wide", "on, per workspace"
SIDES = (OFF, SERVER_WIDE, PER_WORKSPACE)


def compare(pg, gcs, work, cycles: int, rounds: int, window: float) -> dict:
    out = {side: {"rps": [], "cpu_ms": [], "batch_s": [], "search_s": []} for side in SIDES}
    for cycle in range(cycles):
        servers: dict[str, Running] = {}
        try:
            for side in SIDES:
                servers[side] = start_side(side, database_uri(pg, f"ws{cycle}{SIDES.index(side)}"),
                                           f"gs://{gcs.bucket}/ws-{cycle}-{SIDES.index(side)}", work)
            runs, experiments, searched = {}, {}, {}
            for side, s in servers.items():
                with InWorkspace(side):
                    experiments[side], runs[side] = metric_runs(s, f"ws-{SIDES.index(side)}")
                    searched[side] = make_search_experiment(s)
                    measured_window(s, runs[side], 2)  # warm
            for round_ in range(rounds):
                shift = round_ % len(SIDES)
                for side in SIDES[shift:] + SIDES[:shift]:
                    with InWorkspace(side):
                        load_round(out[side], servers[side], runs[side], experiments[side], window)
                        out[side]["search_s"] += search_latencies(servers[side], searched[side], 2)
        finally:
            for s in servers.values():
                s.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window", type=float, default=3.0)
    args = parser.parse_args()
    with services() as (work, pg, gcs):
        out = compare(pg, gcs, work, args.cycles, args.rounds, args.window)
    off, wide, per = out[OFF], out[SERVER_WIDE], out[PER_WORKSPACE]
    print(f"{len(per['rps'])} windows of {args.window:.0f} s each side; log_metric from 8 client threads")
    print("| | workspaces off | on, server-wide roles | on, roles per workspace | per workspace / server-wide "
          "| on / off (server-wide) |")
    print("|---|---|---|---|---|---|")
    for label, key, scale, fmt in (("`log_metric` req/s (median)", "rps", 1, ".0f"),
                                   ("server CPU per `log_metric` (ms, median)", "cpu_ms", 1, ".2f"),
                                   ("`log_batch` of 1000 metrics, p50 (ms)", "batch_s", 1000, ".0f"),
                                   ("`search_runs`, 1000 runs, p50 (ms)", "search_s", 1000, ".0f")):
        values = [format(median(side[key]) * scale, fmt) for side in (off, wide, per)]
        print(f"| {label} | {' | '.join(values)} | {paired_ratio(per[key], wide[key])} | "
              f"{paired_ratio(wide[key], off[key])} |")

if __name__ == "__main__":
    main()
