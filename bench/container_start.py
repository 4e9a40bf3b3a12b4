"""Cold start of the image: `docker run` to the first authenticated API call answered 200.

    .venv/bin/python bench/container_start.py [--runs 5] [--image mlflow-server:test]

Database already migrated (one warm-up start first). Prints the image size and the medians.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.request

from bench.common import AUTH_HEADER, USER, median, services
from tests.services import free_port


def first_ok(url: str, deadline: float) -> float:
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers={"Authorization": AUTH_HEADER})
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(req, timeout=2).status == 200:
                return time.monotonic()
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("no 200 within the deadline")


def run_once(image: str, env: dict[str, str]) -> float:
    port = free_port()
    args = ["docker", "run", "-d", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-e", f"PORT={port}",
            "-e", "MLFLOW_HOST=127.0.0.1"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    started = time.monotonic()
    cid = subprocess.run([*args, image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        return first_ok(f"http://127.0.0.1:{port}", started + 120) - started
    finally:
        subprocess.run(["docker", "stop", "-t", "10", cid], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="mlflow-server:test")
    args = parser.parse_args()
    with services() as (_, pg, gcs):
        env = {**gcs.env(), "MLFLOW_BACKEND_STORE_URI": pg.create_database("bench_container"),
               "MLFLOW_ARTIFACTS_DESTINATION": f"gs://{gcs.bucket}/bench", "MLFLOW_AUTH_USERS": ":".join(USER)}
        run_once(args.image, env)  # migrate the schema
        times = [run_once(args.image, env) for _ in range(args.runs)]
        size = json.loads(subprocess.run(["docker", "image", "inspect", args.image], capture_output=True,
                                         text=True, check=True).stdout)[0]["Size"]
        print(f"image {args.image}: {size / 1e6:.0f} MB")
        print(f"cold start (docker run -> first authenticated 200), {args.runs} runs: "
              f"median {median(times):.2f}s, min {min(times):.2f}s, max {max(times):.2f}s")


if __name__ == "__main__":
    main()
