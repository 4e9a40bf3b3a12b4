"""What one request can cost the server because of its own size or shape (issue: attack
resistance, items 1, 2 and 7). Every request here is sent by a logged-in user to a server with
one worker; the worker's peak RSS (VmHWM) and CPU time are read from /proc before and after.
Bound: no such request raises the peak by more than 64 MiB or uses more than 2 s of CPU, and
each gets a clear 4xx, while requests within MLflow's documented limits keep working."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import requests

from tests.conftest import ALICE, figure, gcs_server_config
from tests.services import Server, proc_kib, wait_for_workers, web_processes
from tests.test_auth import basic

pytestmark = pytest.mark.reliability

MIB = 1024 * 1024
RSS_BOUND_KIB = 64 * 1024
CPU_BOUND_S = 2.0


@pytest.fixture(scope="module")
def server(workdir, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_costs")
    env.update(MLFLOW_WORKERS="1", MLFLOW_THREADS="4", MLFLOW_HTTP2_CLEARTEXT="both")  # h2c from 127.0.0.1
    server = Server(workdir / "server-costs", env, secrets).start()
    wait_for_workers(server.proc.pid, 1)
    yield server
    server.stop()


def worker_pid(server: Server) -> int:
    [worker] = [p for p in web_processes(server.proc.pid) if p != server.proc.pid]
    return worker


def peak_kib(pid: int) -> int:
    return proc_kib([pid], "status", "VmHWM")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(server: Server, name: str, send) -> requests.Response:
    pid = worker_pid(server)
    peak, cpu = peak_kib(pid), cpu_seconds(pid)
    started = time.monotonic()
    response = send()
    elapsed = time.monotonic() - started
    grown, used = peak_kib(pid) - peak, cpu_seconds(pid) - cpu
    figure(f"{name}: +{grown / 1024:.1f} MiB, {used:.2f} s CPU, {elapsed:.2f} s, {response.status_code}")
    assert grown < RSS_BOUND_KIB, f"{name}: the worker's peak grew {grown / 1024:.0f} MiB"
    assert used < CPU_BOUND_S, f"{name}: {used:.1f} s of CPU"
    assert worker_pid(server) == pid, f"{name}: the worker died"
    return response


def post(server: Server, path: str, body: bytes, **headers) -> requests.Response:
    return requests.post(server.url + path, data=body, auth=ALICE, timeout=120,
                         headers={"Content-Type": "application/json", **headers})


def experiment(server: Server) -> str:
    r = post(server, "/api/2.0/mlflow/experiments/create", json.dumps({"name": f"costs-{time.time()}"}).encode())
    assert r.status_code == 200, r.text
    return r.json()["experiment_id"]


def test_a_long_order_by_is_refused_at_once(server):
    eid = experiment(server)
    body = json.dumps({"experiment_ids": [eid], "order_by": ["metrics.m" + " x" * 512 * 1024]}).encode()
    r = measured(server, "runs/search, 1 MiB order_by", lambda: post(server, "/api/2.0/mlflow/runs/search", body))
    assert r.status_code == 400 and "order_by" in r.json()["message"]
    assert len(r.content) < 1000  # the clause is not echoed back


def test_a_filter_of_many_comparisons_is_refused_and_30_work(server):
    eid = experiment(server)
    many = " AND ".join(f"metrics.m{i} > 1" for i in range(200))  # 4 KiB: 26 s of PostgreSQL before
    r = measured(server, "runs/search, 200 comparisons", lambda: post(
        server, "/api/2.0/mlflow/runs/search", json.dumps({"experiment_ids": [eid], "filter": many}).encode()))
    assert r.status_code == 400 and "clauses" in r.json()["message"]
    thirty = " AND ".join(f"metrics.m{i} > 1" for i in range(30))
    r = post(server, "/api/2.0/mlflow/runs/search", json.dumps({"experiment_ids": [eid], "filter": thirty}).encode())
    assert r.status_code == 200, r.text


def test_a_long_filter_in_the_query_string_is_refused(server):
    r = measured(server, "experiments/search, 64 KiB filter (GET)", lambda: requests.get(
        server.url + "/api/2.0/mlflow/experiments/search", params={"filter": "name = '" + "a" * 64 * 1024 + "'"},
        auth=ALICE, timeout=60))
    assert r.status_code in (400, 414)


def test_a_huge_page_token_is_refused_without_reading_it(server):
    body = b'{"experiment_ids": ["0"], "page_token": "' + b"A" * (50 * MIB) + b'"}'
    r = measured(server, "runs/search, 50 MiB page_token", lambda: post(server, "/api/2.0/mlflow/runs/search", body))
    assert r.status_code == 413


def test_millions_of_tiny_params_are_refused(server):
    eid = experiment(server)
    run = post(server, "/api/2.0/mlflow/runs/create", json.dumps({"experiment_id": eid}).encode()).json()["run"]
    run_id = run["info"]["run_id"]
    params = ",".join(f'{{"key":"k{i}","value":"v"}}' for i in range(70_000))  # just under 2 MiB
    body = f'{{"run_id":"{run_id}","params":[{params}]}}'.encode()
    assert len(body) < 2 * MIB
    r = measured(server, f"runs/log-batch, 70,000 params ({len(body) // 1024} KiB)",
                 lambda: post(server, "/api/2.0/mlflow/runs/log-batch", body))
    assert r.status_code in (400, 413)
    big = b'{"run_id":"' + run_id.encode() + b'","params":[' + b'{"key":"k","value":"v"},' * (2 * MIB) + b"]}"
    r = measured(server, "runs/log-batch, 50 MiB", lambda: post(server, "/api/2.0/mlflow/runs/log-batch", big))
    assert r.status_code == 413
    # nothing of it was stored
    got = requests.get(server.url + "/api/2.0/mlflow/runs/get", params={"run_id": run_id}, auth=ALICE, timeout=30)
    assert "params" not in got.json()["run"]["data"]


def test_deep_json_is_a_400(server):
    body = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = measured(server, "experiments/create, 100,000 nested arrays",
                 lambda: post(server, "/api/2.0/mlflow/experiments/create", body))
    assert r.status_code == 400


def chunked(server: Server, path: str, chunks) -> tuple[int, bytes]:
    """POST a chunked body over a raw socket; returns (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as conn:
        conn.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(*ALICE)}\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode())
        try:
            for chunk in chunks:
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the whole body is sent
        data = b""
        while True:
            part = conn.recv(65536)
            if not part:
                break
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Status:
    def __init__(self, code: int):
        self.status_code = code


def test_a_chunked_body_is_counted_and_a_small_one_works(server):
    status = measured(server, "experiments/create, 50 MiB chunked", lambda: Status(chunked(
        server, "/api/2.0/mlflow/experiments/create", (b" " * MIB for _ in range(50)))[0]))
    assert status.status_code == 413
    code, body = chunked(server, "/api/2.0/mlflow/experiments/create", [b'{"name": "chun', b'ked"}'])
    assert code == 200, body
    assert json.loads(body)["experiment_id"]
    # the location rule holds for a chunked body too
    code, body = chunked(server, "/api/2.0/mlflow/experiments/create",
                         [b'{"name": "chunked-escape", "artifactLocation"', b': "file:///etc"}'])
    assert code == 400 and b"artifact_location must be under" in body


def test_nul_bytes_and_bad_graphql_are_400s(server):
    eid = experiment(server)
    for name, send in [
        ("NUL in a query value", lambda: requests.get(server.url + "/api/2.0/mlflow/experiments/get-by-name",
                                                      params={"experiment_name": "a\x00b"}, auth=ALICE, timeout=30)),
        ("NUL in a JSON string", lambda: post(server, "/api/2.0/mlflow/experiments/set-experiment-tag",
                                              json.dumps({"experiment_id": eid, "key": "k", "value": "a\x00b"}).encode())),
        ("GraphQL batch", lambda: post(server, "/graphql", b'[{"query": "{ __typename }"}, {"query": "{ __typename }"}]')),
        ("GraphQL over GET", lambda: requests.get(server.url + "/graphql", params={"query": "mutation { x }"},
                                                  auth=ALICE, timeout=30)),
        ("GraphQL without a query", lambda: post(server, "/graphql", b"{}")),
    ]:
        r = send()
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
    ok = post(server, "/graphql", b'{"query": "{ __typename }"}')
    assert ok.status_code == 200, ok.text


def test_requests_within_mlflows_limits_keep_working(server):
    eid = experiment(server)
    run_id = post(server, "/api/2.0/mlflow/runs/create", json.dumps({"experiment_id": eid}).encode()).json()["run"]["info"]["run_id"]
    batch = {"run_id": run_id,
             "metrics": [{"key": f"m{i % 50}", "value": i * 0.5, "timestamp": 1700000000000 + i, "step": i}
                         for i in range(1000 - 200)],
             "params": [{"key": f"p{i}", "value": "v" * 6000} for i in range(100)],
             "tags": [{"key": f"t{i}", "value": "t" * 8000} for i in range(100)]}
    body = json.dumps(batch).encode()
    r = measured(server, f"runs/log-batch at MLflow's limits ({len(body) // 1024} KiB)",
                 lambda: post(server, "/api/2.0/mlflow/runs/log-batch", body))
    assert r.status_code == 200, r.text
    r = post(server, "/api/2.0/mlflow/runs/search", json.dumps(
        {"experiment_ids": [eid], "max_results": 50000, "filter": "params.p1 LIKE 'v%'",
         "order_by": ["metrics.m1 DESC", "attributes.start_time"]}).encode())
    assert r.status_code == 200 and len(r.json()["runs"]) == 1
    r = requests.get(server.url + "/api/2.0/mlflow/experiments/search", params={"max_results": 50000},
                     auth=ALICE, timeout=30)
    assert r.status_code == 200


def test_security_headers_and_hsts_only_behind_a_trusted_https_proxy(server):
    r = requests.get(server.url + "/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=ALICE,
                     timeout=30)
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in r.headers
    refused = requests.get(server.url + "/api/2.0/mlflow/experiments/search", timeout=30)
    assert refused.status_code == 401 and refused.headers["Cache-Control"] == "no-store"
    assert "Content-Security-Policy" in refused.headers
    # the test client is a trusted peer (FORWARDED_ALLOW_IPS holds 127.0.0.1): its https counts
    https = requests.get(server.url + "/health", headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert https.headers["Strict-Transport-Security"].startswith("max-age=")


def test_a_refused_request_with_a_body_closes_its_connection(server):
    """Without credentials, a malformed chunked body gets one 401 and the connection closes
    (gunicorn used to read on, and sent a second, unsolicited 400)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /api/2.0/mlflow/experiments/create HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz-not-a-chunk\r\n\r\n")
        data = b""
        while part := conn.recv(65536):
            data += part
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 401"), data[:300]
    assert b"connection: close" in data.lower()


def test_no_internal_detail_in_an_error_body(server, postgres):
    """MLflow's 500 for a model version's artifact named the store's URI (host, port, database)."""
    eid = experiment(server)
    run_id = post(server, "/api/2.0/mlflow/runs/create", json.dumps({"experiment_id": eid}).encode()).json()["run"]["info"]["run_id"]
    name = f"leaky-{time.time()}"
    assert post(server, "/api/2.0/mlflow/registered-models/create", json.dumps({"name": name}).encode()).status_code == 200
    assert post(server, "/api/2.0/mlflow/model-versions/create", json.dumps(
        {"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id}).encode()).status_code == 200
    r = requests.get(server.url + "/model-versions/get-artifact", params={"name": name, "version": "1", "path": "MLmodel"},
                     auth=ALICE, timeout=30)
    assert r.status_code >= 400
    body = r.text
    for detail in ("postgresql", "127.0.0.1", str(postgres.port), "mlflow_costs", "Traceback"):
        assert detail not in body, (detail, body[:300])
    if r.status_code >= 500:
        assert "error id" in r.json()["message"]
        assert r.json()["message"].split("error id ")[1] in server.logs()  # the details are in the log


def test_an_h2c_body_without_a_length_is_counted(server):
    """Behind Cloud Run's HTTP/2 end-to-end mode no 32 MiB cap stands in front of the server: a
    body without a length is counted as it arrives, and answered 413 before it ends."""
    import h2.config
    import h2.connection
    import h2.events

    def send():
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":path", "/api/2.0/mlflow/runs/search"), (":scheme", "http"),
                              (":authority", "127.0.0.1"), ("authorization", basic(*ALICE)),
                              ("content-type", "application/json")])
        sock.sendall(conn.data_to_send())
        sent, status = 0, None
        try:
            while status is None and sent < 50 * MIB:
                window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                if window > 0:
                    conn.send_data(1, b" " * window)
                    sent += window
                    sock.sendall(conn.data_to_send())
                    continue
                for event in conn.receive_data(sock.recv(65536)):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                        status = int(dict(event.headers)[":status"])
                sock.sendall(conn.data_to_send())
        finally:
            sock.close()
        figure(f"  (the 413 came after {sent // 1024} KiB of the body)")
        return Status(status)

    assert measured(server, "runs/search, 50 MiB over h2c without a length", send).status_code == 413


def otlp_spans(count: int, trace_id: bytes = b"\x01" * 16) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(count):
        span = scope.spans.add()
        span.trace_id = trace_id
        span.span_id = i.to_bytes(8, "big")
        span.name = "s"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = 1_700_000_000_000_000_001 + i
    return request.SerializeToString()


def test_a_compressed_trace_batch_cannot_inflate_past_its_cap(server):
    import gzip

    bomb = gzip.compress(b"\0" * (200 * MIB), compresslevel=9)
    r = measured(server, f"/v1/traces, {len(bomb) // 1024} KiB of gzip inflating to 200 MiB", lambda: post(
        server, "/v1/traces", bomb, **{"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}))
    assert r.status_code == 413


def test_a_trace_batch_of_many_tiny_spans(server):
    eid = experiment(server)
    body = otlp_spans(100_000)
    r = measured(server, f"/v1/traces, 100,000 spans ({len(body) // 1024} KiB)", lambda: post(
        server, "/v1/traces", body, **{"Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": eid}))
    assert r.status_code == 413, r.text[:300]
    # the largest batch allowed is stored, within the bounds
    body = otlp_spans(2000, trace_id=b"\x02" * 16)
    r = measured(server, "/v1/traces, 2,000 spans (the most a batch may hold)", lambda: post(
        server, "/v1/traces", body, **{"Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": eid}))
    assert r.status_code == 200, r.text[:300]
