"""Before/after for one server change: the working tree against an earlier commit, interleaved.

    .venv/bin/python -m bench.ab f1d12a4                 # log_metric (8 threads), log_batch
    .venv/bin/python -m bench.ab f1d12a4 --cycles 3 --rounds 10 --window 3
    .venv/bin/python -m bench.ab bcec85a --after-role editor   # the working tree's user has a role

The commit is checked out into a temporary git worktree and served by its own entry-point.sh,
with this checkout's venv (so only changes that keep the locks compare fairly). Each cycle
starts both servers afresh on one database and loads them in turn, A B then B A, so the
machine's drift falls on both: a window of `log_metric` from 8 client threads, then two
`log_batch` calls of 1000 metrics. It prints the median req/s, the server CPU per request and
the `log_batch` latency, each with the median of the per-round ratios and its 95 % interval.
This is how the before/after rows in docs/benchmarks.md are measured.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from bench.common import ROOT, USER, database_uri, median, services
from bench.run import load_round, log_metric_rate, metric_runs, paired_ratio
from bench.servers import Running, start


def worktree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="mlflow-bench-ab-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), ref],
                   check=True, capture_output=True)
    if subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", ref, "--", "requirements.txt"]).returncode:
        print(f"warning: requirements.txt differs at {ref}; both sides run this checkout's venv")
    return path


def compare(before_root: Path, uri: str, dest: str, work: Path, cycles: int, rounds: int, window: float,
            after_role: str | None = None) -> dict:
    out = {side: {"rps": [], "cpu_ms": [], "batch_s": []} for side in ("before", "after")}
    for _ in range(cycles):
        servers: dict[str, Running] = {}
        try:
            for side, root in (("before", before_root), ("after", ROOT)):  # one at a time: migrations
                # the same user; on the working tree's side under a [role] section, if asked (an
                # admin's requests skip the role decision, an editor's take it)
                users = f"[{after_role}]\n{':'.join(USER)}" if side == "after" and after_role else None
                servers[side] = start("ours", uri, dest, work, app_root=root, users=users)
                servers[side].wait_first_api_ok()
            runs, experiments = {}, {}
            for side, s in servers.items():
                experiments[side], runs[side] = metric_runs(s, f"ab-{side}")
                log_metric_rate(s, runs[side], 2)  # warm
            for round_ in range(rounds):
                for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                    load_round(out[side], servers[side], runs[side], experiments[side], window)
        finally:
            for s in servers.values():
                s.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="the commit to compare the working tree with")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--after-role", choices=("viewer", "editor", "admin"),
                        help="put the working tree's user under this [role] section of the users file")
    args = parser.parse_args()
    before_root = worktree(args.ref)
    try:
        with services() as (work, pg, gcs):
            out = compare(before_root, database_uri(pg, "ab"), f"gs://{gcs.bucket}/ab", work, args.cycles,
                          args.rounds, args.window, args.after_role)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_root)], check=False)
    b, a = out["before"], out["after"]
    print(f"log_metric, 8 client threads, {len(a['rps'])} windows of {args.window:.0f} s each side")
    print(f"| | {args.ref} | working tree | after / before |")
    print("|---|---|---|---|")
    print(f"| req/s (median) | {median(b['rps']):.0f} | {median(a['rps']):.0f} | {paired_ratio(a['rps'], b['rps'])} |")
    print(f"| server CPU per request (ms, median) | {median(b['cpu_ms']):.2f} | {median(a['cpu_ms']):.2f} | "
          f"{paired_ratio(a['cpu_ms'], b['cpu_ms'])} |")
    print(f"| `log_batch` of 1000 metrics, p50 (ms) | {median(b['batch_s']) * 1000:.0f} | "
          f"{median(a['batch_s']) * 1000:.0f} | {paired_ratio(a['batch_s'], b['batch_s'])} |")


if __name__ == "__main__":
    main()
