"""Slow and silent connections without credentials (issue: attack resistance, item 3): 200 of
them from one address leave logged-in users served, over HTTP/1 and over HTTP/2 cleartext (h2c,
as Cloud Run's front end speaks it). How fast, idle and under attack: ``bench/attacks.py``."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import requests

from tests.conftest import ALICE, figure, gcs_server_config
from tests.services import SLOW_OPENINGS, Attackers, Server, wait_for_workers
from tests.test_auth import basic

pytestmark = pytest.mark.reliability

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.fixture(scope="module")
def server(workdir, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_slow")
    env.update(MLFLOW_WORKERS="2", MLFLOW_THREADS="8", MLFLOW_HTTP2_CLEARTEXT="both",
               FORWARDED_ALLOW_IPS="127.0.0.1")  # the test client may speak h2c, as Cloud Run does
    server = Server(workdir / "server-slow", env, secrets).start()
    wait_for_workers(server.proc.pid, 2)
    yield server
    server.stop()


def http1(server: Server):
    r = requests.get(server.url + SEARCH, auth=ALICE, timeout=30, headers={"Connection": "close"})
    assert r.status_code == 200


def under_attack(server: Server, openings: list[tuple[bytes, bool]], send) -> None:
    """``send`` (a logged-in request, which asserts its 200) served over and over while 200
    slow or silent connections are held open; bench/attacks.py times it, idle and under attack."""
    attackers = [Attackers(server.port, 100, opening, trickle) for opening, trickle in openings]
    try:
        time.sleep(1.0)
        for _ in range(20):
            send()
        # the attackers' connections are still open: the server serves beside them
        assert sum(a.count_closed() for a in attackers) < sum(len(a.sockets) for a in attackers)
    finally:
        for a in attackers:
            a.close()


def test_http1_slowloris_and_silent_connections(server):
    under_attack(server, SLOW_OPENINGS["HTTP/1"], lambda: http1(server))


def test_h2c_slow_and_silent_connections(server):
    def send():  # a new connection each time, as a front end opens more under load
        with httpx.Client(http1=False, http2=True, auth=ALICE, timeout=30) as h2c:
            r = h2c.get(server.url + SEARCH)
            assert r.status_code == 200 and r.http_version == "HTTP/2"

    under_attack(server, SLOW_OPENINGS["h2c"], send)


def test_a_head_that_never_completes_is_closed(server):
    attackers = Attackers(server.port, 5, b"GET / HTTP/1.1\r\nHost: x\r\n", trickle=True)
    try:
        time.sleep(13)  # HEAD_TIMEOUT is 10 s from the connection
        assert attackers.count_closed() == 5
    finally:
        attackers.close()
    http1(server)


def h2_request(conn, sock, stream_id: int, method: str, path: str, end_stream: bool, extra=()):
    conn.send_headers(stream_id, [(":method", method), (":path", path), (":scheme", "http"),
                                  (":authority", "127.0.0.1"), ("authorization", basic(*ALICE)), *extra],
                      end_stream=end_stream)
    sock.sendall(conn.data_to_send())


def test_a_stalled_upload_does_not_hold_up_other_streams_of_its_connection(server):
    """Item 10: on one h2c connection, an upload whose body stops after 16 KiB must not hold up a
    request on another stream (gunicorn served them in turn: 20 s and more)."""
    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    try:
        h2_request(conn, sock, 1, "PUT", "/api/2.0/mlflow-artifacts/artifacts/h2-hol/stalled.bin", False,
                   [("content-length", str(8 * 1024 * 1024))])
        conn.send_data(1, b"x" * 16384)
        sock.sendall(conn.data_to_send())
        time.sleep(1.0)  # the upload is being served, and stalls
        started = time.monotonic()
        h2_request(conn, sock, 3, "GET", SEARCH, True)
        status, done, upload_events = None, False, []
        while not done:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 3:
                    status = dict(event.headers)[":status"]
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == 3:
                    done = True
                if getattr(event, "stream_id", None) == 1 and not isinstance(event, h2.events.WindowUpdated):
                    upload_events.append(type(event).__name__)
            sock.sendall(conn.data_to_send())
        figure(f"h2c, a request behind a stalled upload on the same connection: "
               f"{(time.monotonic() - started) * 1000:.0f} ms")
        # answered while the upload is still open and stalled: served in turn, it would have
        # waited for the upload to time out (20 s and more), which ends or resets stream 1
        assert status == "200" and upload_events == [], (status, upload_events)
        # the stalled upload resumes and completes on the same connection
        remaining = 8 * 1024 * 1024 - 16384
        while remaining:
            window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size, remaining)
            if window <= 0:
                conn.receive_data(sock.recv(65536))  # the server's WINDOW_UPDATEs
                sock.sendall(conn.data_to_send())
                continue
            conn.send_data(1, b"y" * window, end_stream=window == remaining)
            remaining -= window
            sock.sendall(conn.data_to_send())
        status = None
        while status is None:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                    status = dict(event.headers)[":status"]
            sock.sendall(conn.data_to_send())
        assert status == "200"
    finally:
        sock.close()
