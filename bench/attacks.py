"""Attacks on our server, timed: what a failed login costs by kind, what a flood of bad logins
does to a logged-in user, and what 200 slow or silent connections do to one. The tests
(tests/test_login_limits.py, tests/test_auth.py, tests/test_slow_clients.py) assert the
behaviour behind these figures, not their times.

    .venv/bin/python -m bench.attacks            # ~1.5 minutes; rewrites its section of docs/benchmarks.md
    .venv/bin/python -m bench.attacks --no-doc

One server of ours (2 workers), behind one trusted proxy hop so that each request can come from
an address of its own (``X-Forwarded-For``), as on Cloud Run. Its users: a plain password and a
bcrypt one of cost 12 (what ``htpasswd -B`` makes). Every request opens a new connection, so
both workers take them.

* **failed logins**: a wrong password for the plain user, for the bcrypt user, and a name that
  does not exist, in turn (the order rotating), each from an address of its own, with a pause
  after each so the hash budget refills; the median of each kind and the slowest over the
  fastest. Every one must be answered 401.
* **a flood**: the logged-in (plain) user's latency, idle, then while 64 threads send bad logins
  from 64 addresses (unknown names and the bcrypt user's name in turn); and what the flood was
  answered (401 checked, 429 turned away by the hash budget).
* **slow and silent connections**: a logged-in search on a new connection, idle (before and
  after, the larger median kept), then while 200 connections without credentials are held open:
  100 that send nothing and 100 that send the start of a request and a byte every 2 s, over
  HTTP/1, then over HTTP/2 cleartext (the preface only; a SETTINGS frame and the first bytes of a
  HEADERS frame), as Cloud Run's front end speaks it.
"""

from __future__ import annotations

import argparse
import os
import time

import bcrypt
import httpx
import requests

from bench.common import USER, database_uri, load_average, median, percentile, services
from bench.run import write_doc_section
from bench.servers import Running, start
from tests.services import SLOW_OPENINGS, Attackers, BadLoginFlood, latencies

MARKERS = ("<!-- attacks:begin -->", "<!-- attacks:end -->")
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
PLAIN = ("erin", "erin-Pl41n-password")
HASHED = ("dave", "dave-c0st12-password")
KINDS = {"plain user, wrong password": PLAIN[0], "bcrypt user, wrong password": HASHED[0],
         "unknown name": "nobody-at-all"}
REFILL_PAUSE = 0.6  # s: the hash budget (half a CPU) refills what one cost-12 check spent
FLOOD_THREADS = 64
FLOOD_WARMUP = 3.0  # s: the flood spends the budget's reserve before the user is timed
REQUEST_TIMEOUT = 30


def get(server: Running, auth: tuple[str, str], client: str) -> tuple[int, float]:
    """(status, seconds) of one search on a new connection, from ``client``'s address."""
    started = time.perf_counter()
    response = requests.get(server.url + SEARCH, auth=auth, timeout=REQUEST_TIMEOUT,
                            headers={"X-Forwarded-For": client, "Connection": "close"})
    return response.status_code, time.perf_counter() - started


def failed_logins(server: Running, rounds: int) -> dict[str, list[float]]:
    kinds = list(KINDS.items())
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for round_ in range(rounds):
        shift = round_ % len(kinds)
        for n, (kind, name) in enumerate(kinds[shift:] + kinds[:shift]):
            status, took = get(server, (name, f"wrong-{round_}"), f"100.64.{n}.{round_ % 250}")
            if status != 401:
                raise RuntimeError(f"{kind}: answered {status}, not 401")
            seconds[kind].append(took)
            time.sleep(REFILL_PAUSE)
    return seconds


def flood(server: Running, calls: int) -> tuple[list[float], list[float], dict[str, int]]:
    """The logged-in user's latencies idle and under the flood, and the flood's answers."""
    def logged_in() -> float:
        status, took = get(server, PLAIN, "100.100.0.1")
        if status != 200:
            raise RuntimeError(f"the logged-in user was answered {status}")
        return took

    idle = [logged_in() for _ in range(calls)]
    with BadLoginFlood(lambda auth, client: get(server, auth, client)[0], HASHED[0], FLOOD_THREADS,
                       REQUEST_TIMEOUT + 5) as attack:
        time.sleep(FLOOD_WARMUP)
        loaded = [logged_in() for _ in range(calls)]
    answers = attack.answers
    return idle, loaded, answers


def slow_connections(server: Running, calls: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per protocol: the logged-in user's latencies idle and with 200 slow or silent connections open."""
    def http1() -> None:
        response = requests.get(server.url + SEARCH, auth=PLAIN, timeout=REQUEST_TIMEOUT,
                                headers={"Connection": "close"})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP/1: answered {response.status_code}")

    def h2c() -> None:  # a new connection each time, as a front end opens more under load
        with httpx.Client(http1=False, http2=True, auth=PLAIN, timeout=REQUEST_TIMEOUT) as client:
            response = client.get(server.url + SEARCH)
        if response.status_code != 200 or response.http_version != "HTTP/2":
            raise RuntimeError(f"h2c: answered {response.status_code} over {response.http_version}")

    out = {}
    for protocol, send in (("HTTP/1", http1), ("h2c", h2c)):
        before = latencies(send, calls)
        attackers = [Attackers(server.port, 100, opening, trickle) for opening, trickle in SLOW_OPENINGS[protocol]]
        try:
            time.sleep(1.0)
            loaded = latencies(send, calls)
        finally:
            for attacker in attackers:
                attacker.close()
        after = latencies(send, calls)
        out[protocol] = (max(before, after, key=median), loaded)
    return out


def report(seconds: dict[str, list[float]], idle: list[float], loaded: list[float], answers: dict[str, int],
           slow: dict[str, tuple[list[float], list[float]]], load: str) -> str:
    medians = {kind: median(values) for kind, values in seconds.items()}
    rows = "\n".join(f"| {kind} | {len(seconds[kind])} | {medians[kind] * 1000:.0f} |" for kind in KINDS)
    spread = max(medians.values()) / min(medians.values())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"Run {when} on {os.cpu_count()} cores (`python -m bench.attacks`), one server of ours with 2 "
        f"workers; {load}.\n\n"
        "| failed login | requests | median (ms) |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Slowest kind over fastest: {spread:.2f}x (each kind costs one cost-12 bcrypt check: the "
        "user's own, or a decoy's for a plain user's wrong password and an unknown name).\n\n"
        "| logged-in user, one search | calls | p50 (ms) | p90 (ms) |\n|---|---|---|---|\n"
        f"| idle | {len(idle)} | {median(idle) * 1000:.0f} | {percentile(idle, 90) * 1000:.0f} |\n"
        f"| under a flood of bad logins from {FLOOD_THREADS} addresses | {len(loaded)} | "
        f"{median(loaded) * 1000:.0f} | {percentile(loaded, 90) * 1000:.0f} |\n\n"
        f"The flood's answers: {answers['401']} checked and refused (401), {answers['429']} turned away "
        f"by the hash budget before any check (429), {answers['other']} other. Without the hash "
        "budget the logged-in user waited seconds (3.8 s p50 when it was added, README \"Security: "
        "what one client can cost\"); the flood threads share this machine's two cores with the server.\n\n"
        "| logged-in user, one search on a new connection | idle p50 (ms) | with 200 slow or silent "
        "connections: p50 (ms) | max (ms) |\n|---|---|---|---|\n"
        + "".join(f"| {protocol} | {median(quiet) * 1000:.0f} | {median(under) * 1000:.0f} | "
                  f"{max(under) * 1000:.0f} |\n" for protocol, (quiet, under) in slow.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="failed logins of each kind")
    parser.add_argument("--calls", type=int, default=30, help="logged-in calls idle and under each attack")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    hashed = bcrypt.hashpw(HASHED[1].encode(), bcrypt.gensalt(rounds=12)).decode()
    users = f"{':'.join(USER)}\n{PLAIN[0]}:{PLAIN[1]}\n{HASHED[0]}:{hashed}\n"
    load_before = os.getloadavg()
    with services() as (work, pg, gcs):
        server = start("ours", database_uri(pg, "attacks"), f"gs://{gcs.bucket}/login", work, users=users,
                       extra_env={**gcs.env(), "MLFLOW_TRUSTED_PROXY_HOPS": "1", "FORWARDED_ALLOW_IPS": "*",
                                  "MLFLOW_HTTP2_CLEARTEXT": "both"})
        try:
            server.wait_first_api_ok()
            time.sleep(2 * REFILL_PAUSE)
            seconds = failed_logins(server, args.rounds)
            idle, loaded, answers = flood(server, args.calls)
            slow = slow_connections(server, args.calls)
        finally:
            server.stop()
    text = report(seconds, idle, loaded, answers, slow, load_average(load_before, os.getloadavg()))
    print(text)
    if not args.no_doc:
        write_doc_section(text, MARKERS)


if __name__ == "__main__":
    main()
