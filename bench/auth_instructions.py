"""What the auth layer costs, counted in CPU instructions instead of seconds.

    .venv/bin/python -m bench.auth_instructions          # ~5 minutes (valgrind)

On this shared 2-core machine two identical servers differ in throughput by a few percent,
more than the layer's cost; instruction counts do not drift with the machine's load. One
Python process builds the real app (``server.app.create_app``, the workers' GC settings) and
sends `log_metric` requests through it in-process, in blocks that take turns: through the
auth layer with a plain password, with a bcrypt one, and straight to the app behind it.
valgrind's callgrind counts the instructions of each block (zeroed before it, dumped after
it, by ``callgrind_control``); the first round is a warm-up and is dropped. The database
server's own work is outside the process and the same for all three.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import AUTH_HEADER, ROOT, USER, in_process_app

KINDS = ("plain", "bcrypt", "noauth")


def inner(uri: str, bcrypt_line: str, rounds: int, requests: int, sync: Path) -> None:
    """Runs under valgrind: waits for `go<i>` before block i, writes `done<i>` (its kind) after."""
    from werkzeug.test import Client

    from server.gate.auth import BasicAuthMiddleware
    from server.gate.failures import FailureLimiter
    from server.gate.users import merge, parse_htpasswd

    app = in_process_app(uri, str(sync / "artifacts"))  # the auth layer outermost, plain password
    hashed = merge(parse_htpasswd(bcrypt_line, "bench"))
    apps = {"plain": app, "noauth": app.app,
            "bcrypt": BasicAuthMiddleware(app.app, users=lambda: hashed, limiter=FailureLimiter(10**6, 60))}
    headers = {"Authorization": AUTH_HEADER}
    clients = {kind: Client(a) for kind, a in apps.items()}
    experiment = clients["plain"].post("/api/2.0/mlflow/experiments/create", json={"name": "instructions"},
                                       headers=headers).get_json()["experiment_id"]
    runs = {kind: clients["plain"].post("/api/2.0/mlflow/runs/create", json={"experiment_id": experiment},
                                        headers=headers).get_json()["run"]["info"]["run_id"] for kind in KINDS}
    step = 0

    def block(kind: str, count: int) -> None:
        nonlocal step
        for _ in range(count):
            step += 1
            body = {"run_id": runs[kind], "key": "m", "value": 0.5, "timestamp": 1, "step": step}
            response = clients[kind].post("/api/2.0/mlflow/runs/log-metric", json=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{kind}: {response.status_code} {response.data[:200]!r}")

    for kind in KINDS:
        block(kind, 20)  # connections, caches, the one bcrypt verification
    for i, kind in enumerate(block_order(rounds)):
        (sync / f"ready{i}").touch()
        while not (sync / f"go{i}").exists():
            time.sleep(0.05)
        block(kind, requests)
        (sync / f"done{i}").write_text(kind)


def block_order(rounds: int) -> list[str]:
    """A B C, C B A, ...: no kind always follows the same one."""
    return [k for r in range(rounds) for k in (KINDS if r % 2 == 0 else KINDS[::-1])]


def dumped_total(out: str, before: set[str]) -> int:
    """Instructions in the newest callgrind dump (its `summary:`/`totals:` line)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(out + "*")) - before, key=os.path.getmtime)
        if new:
            for line in Path(new[-1]).read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise TimeoutError("callgrind wrote no dump")


def measure(uri: str, rounds: int = 4, requests: int = 200) -> dict[str, list[float]]:
    """Instructions per `log_metric` request for each kind, one sample per measured block."""
    import bcrypt

    bcrypt_line = f"{USER[0]}:{bcrypt.hashpw(USER[1].encode(), bcrypt.gensalt(rounds=12)).decode()}"
    sync = Path(tempfile.mkdtemp(prefix="mlflow-bench-instructions-"))
    out = str(sync / "callgrind.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
         "bench.auth_instructions", "--inner", uri, bcrypt_line, str(rounds + 1), str(requests), str(sync)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(ROOT),
             "PYTHONHASHSEED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"})

    def control(flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(proc.pid)], capture_output=True, check=True)

    def wait_for(path: Path) -> None:
        while not path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the instrumented process exited:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.1)

    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        for i, kind in enumerate(block_order(rounds + 1)):
            wait_for(sync / f"ready{i}")
            time.sleep(0.3)  # it is now polling for go<i>
            control("-z")
            (sync / f"go{i}").touch()
            wait_for(sync / f"done{i}")
            before = set(glob.glob(out + "*"))
            control("-d")
            total = dumped_total(out, before)
            if i >= len(KINDS):  # the first round warms up
                samples[kind].append(total / requests)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(sync, ignore_errors=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inner", nargs=5, metavar=("URI", "BCRYPT_LINE", "ROUNDS", "REQUESTS", "SYNC"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    if args.inner:
        uri, line, rounds, requests, sync = args.inner
        inner(uri, line, int(rounds), int(requests), Path(sync))
        return
    from bench.common import database_uri, services

    with services() as (_, pg, _gcs):
        samples = measure(database_uri(pg, "instructions"), args.rounds, args.requests)
    print(report(samples))


def report(samples: dict[str, list[float]]) -> str:
    m = {kind: statistics.median(v) for kind, v in samples.items()}
    return " / ".join(f"{kind} {m[kind]:,.0f}" for kind in KINDS) + " instructions per request; with auth: " + \
        " / ".join(f"{m[k] / m['noauth']:.4f}x ({m[k] - m['noauth']:+,.0f})" for k in ("plain", "bcrypt"))


if __name__ == "__main__":
    main()
