"""The Basic-auth layer, through the real gunicorn server (Postgres + GCS emulator)."""

from __future__ import annotations

import base64
import http.client
import json
import socket

import bcrypt
import pytest
import requests

from server.gate import auth as auth_mod
from server.gate.auth import BasicAuthMiddleware, parse_basic
from server.gate.users import User
from tests.conftest import ALICE, BOB, USERS_FILE, gcs_server_config
from tests.services import Server

API = "/api/2.0/mlflow/experiments/search?max_results=1"
CHALLENGE = 'Basic realm="MLflow", charset="UTF-8"'


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def raw_request(port: int, lines: list[bytes], source: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send a hand-written request (for headers no client library lets through)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), data


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        source: str = "127.0.0.1") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


MALFORMED = [
    "Basic",
    "Basic ",
    "Basic !!!notbase64!!!",
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "Basic " + base64.b64encode(b":password-without-user").decode(),
    "Basic " + base64.b64encode(b"alice:").decode(),
    "Basic " + base64.b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode().rstrip("="),  # bad padding
    "Bearer " + base64.b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode(),
    f'Digest username="{ALICE[0]}", realm="MLflow"',
    "Basic " + "QUFB" * 1500,  # 6 kB of base64
    basic(ALICE[0], ALICE[1]) + ", " + basic(BOB[0], BOB[1]),  # repeated header, joined by a comma
    basic(ALICE[0], ALICE[1] + "x"),
    basic(ALICE[0].upper(), ALICE[1]),
    basic("nobody", ALICE[1]),
    basic(BOB[0], "wrong"),
    "Basic " + base64.b64encode(f"{ALICE[0]}:{ALICE[1]}\x00".encode()).decode(),
]


@pytest.mark.parametrize("header", MALFORMED)
def test_bad_authorization_headers_get_401_never_500(gcs_server, header):
    resp = get(gcs_server.port, API, {"Authorization": header})
    assert resp.status == 401, (resp.status, resp.body[:200])
    assert resp.getheader("WWW-Authenticate") == CHALLENGE
    assert b"experiments" not in resp.body


def test_non_utf8_and_repeated_headers_get_401(gcs_server):
    non_utf8 = b"Basic " + base64.b64encode(b"alice:\xff\xfe\xfd")
    for extra in (
        [b"Authorization: " + non_utf8],
        [b"Authorization: \xff\xfe garbage"],
        [b"Authorization: " + basic(*ALICE).encode(), b"Authorization: " + basic("x", "y").encode()],
    ):
        status, data = raw_request(gcs_server.port, [f"GET {API} HTTP/1.1".encode(), b"Host: 127.0.0.1", *extra])
        assert status in (400, 401), data[:300]
        assert b"experiments" not in data
    # and the server keeps serving
    assert requests.get(gcs_server.url + API, auth=ALICE, timeout=10).status_code == 200


def test_valid_users_plain_and_bcrypt_and_lowercase_scheme(gcs_server):
    for user in (ALICE, BOB):
        assert requests.get(gcs_server.url + API, auth=user, timeout=10).status_code == 200
    resp = get(gcs_server.port, API, {"Authorization": basic(*ALICE).replace("Basic", "basic")})
    assert resp.status == 200


def test_wrong_password_and_unknown_user_look_the_same(gcs_server):
    wrong = get(gcs_server.port, API, {"Authorization": basic(ALICE[0], "nope")})
    unknown = get(gcs_server.port, API, {"Authorization": basic("mallory", "nope")})
    assert wrong.status == unknown.status == 401
    assert wrong.body == unknown.body
    assert wrong.getheader("WWW-Authenticate") == unknown.getheader("WWW-Authenticate") == CHALLENGE


OPEN = ["/health"]
CLOSED = [
    "/health/", "//health", "/health/../api/2.0/mlflow/experiments/search", "/HEALTH", "/Health",
    "/%68ealth", "/health%2f", "/health;x", "/health/x", "/healthz", "/health.", "/health\\",
    "/./health", "/api/2.0/mlflow/../../health", "/version", "/", "/static-files/index.html",
    "/ajax-api/2.0/mlflow/experiments/search",
]


@pytest.mark.parametrize("path", OPEN)
def test_health_is_open(gcs_server, path):
    assert get(gcs_server.port, path).status == 200
    assert get(gcs_server.port, path, method="HEAD").status == 200


@pytest.mark.parametrize("path", CLOSED)
def test_only_the_exact_health_path_is_open(gcs_server, path):
    status, data = raw_request(gcs_server.port, [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"])
    assert status in (400, 401, 404) and status != 200, (path, data[:200])
    if status != 400:
        assert status == 401, (path, status)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"])
def test_other_methods_on_health_need_credentials(gcs_server, method):
    assert get(gcs_server.port, "/health", method=method).status == 401


def test_authenticated_user_reaches_the_access_log(gcs_server):
    text = gcs_server.logs_after(lambda: requests.get(
        gcs_server.url + "/api/2.0/mlflow/experiments/search?max_results=2", auth=BOB, timeout=10), "max_results=2")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [e for e in lines if "httpRequest" in e and "max_results=2" in e["httpRequest"]["requestUrl"]]
    assert access and access[-1]["user"] == "bob" and access[-1]["httpRequest"]["status"] == 200
    assert all(isinstance(e.get("severity"), str) for e in lines)


def test_repeated_failures_get_429_for_that_client_only(tmp_path, postgres, gcs):
    env, secrets = gcs_server_config(postgres, gcs, "mlflow_ratelimit")
    env.update({"MLFLOW_AUTH_MAX_FAILURES": "5", "MLFLOW_AUTH_LOCKOUT_SECONDS": "30", "MLFLOW_WORKERS": "1"})
    server = Server(tmp_path, env, secrets).start()
    try:
        attacker, other = "127.0.0.2", "127.0.0.3"
        statuses = [get(server.port, API, {"Authorization": basic(ALICE[0], f"guess{i}")}, source=attacker).status
                    for i in range(8)]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
        refused = get(server.port, API, {"Authorization": basic(*ALICE)}, source=attacker)
        assert refused.status == 429 and int(refused.getheader("Retry-After")) > 0
        assert get(server.port, API, {"Authorization": basic(*ALICE)}, source=other).status == 200
        assert get(server.port, API, {"Authorization": basic(*BOB)}, source="127.0.0.1").status == 200
    finally:
        server.stop()


# ------------------------------------------------------------------ the middleware's own contract


def test_parse_basic_rejects_what_it_cannot_read():
    assert parse_basic(basic("u", "p:with:colons")) == ("u", "p:with:colons")
    assert parse_basic(basic("ünï", "pässwörd")) == ("ünï", "pässwörd")
    for header in MALFORMED[:11]:
        assert parse_basic(header) is None, header


def test_middleware_refuses_to_run_without_users():
    with pytest.raises(ValueError, match="fail closed"):
        BasicAuthMiddleware(lambda e, s: [], users=lambda: {})


def test_hashed_password_is_verified_once_then_cached(monkeypatch):
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=10)).decode()
    table = {"bob": User("bob", hashed, "bcrypt")}
    calls = []
    real = auth_mod.password_matches

    def counting(user, password):
        calls.append(user.name)
        return real(user, password)

    monkeypatch.setattr(auth_mod, "password_matches", counting)
    mw = BasicAuthMiddleware(lambda e, s: [b"ok"], users=lambda: table)
    for _ in range(20):
        assert mw.authenticate(basic("bob", "s3cret-pw")) == "bob"
    assert calls == ["bob"]
    assert mw.authenticate(basic("bob", "wrong")) is None  # a wrong password is always checked
    assert calls == ["bob", "bob"]


def test_every_failed_login_costs_one_hash_check_of_the_same_cost(monkeypatch):
    """A wrong password for a plain user, for a hashed user, and a name that does not exist:
    each is one bcrypt check at the hashed user's cost (the user's own, or the decoy's), so the
    time taken tells none of them apart. bench/attacks.py times them."""
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=5)).decode()
    table = {"erin": User("erin", "erin-Pl41n-password", "plain"), "bob": User("bob", hashed, "bcrypt")}
    checked = []
    real = auth_mod.password_matches

    def recording(user, password):
        checked.append((user.kind, user.secret.split("$")[2] if user.kind == "bcrypt" else None))
        return real(user, password)

    monkeypatch.setattr(auth_mod, "password_matches", recording)
    mw = BasicAuthMiddleware(lambda e, s: [b"ok"], users=lambda: table)
    for name in ("erin", "bob", "nobody-at-all"):
        checked.clear()
        assert mw.authenticate(basic(name, "wrong-password")) is None
        assert [c for c in checked if c[0] != "plain"] == [("bcrypt", "05")], (name, checked)
    checked.clear()
    assert mw.authenticate(basic("erin", "erin-Pl41n-password")) == "erin"
    assert checked == [("plain", None)]  # a plain user's right password: no hash check


def test_a_remembered_credential_is_forgotten_when_the_users_change():
    tables = [{"alice": User("alice", "first-Passw0rd", "plain")}]
    mw = BasicAuthMiddleware(lambda e, s: [b"ok"], users=lambda: tables[-1])
    header = basic("alice", "first-Passw0rd")
    assert mw.authenticate(header) == "alice"
    assert mw.authenticate(header) == "alice"  # now from the cache
    assert all("first-Passw0rd" not in repr(k) for k in mw._verifying.cache._entries)  # digests, not values
    tables.append({"alice": User("alice", "second-Passw0rd", "plain")})  # rotated
    assert mw.authenticate(header) is None
    assert mw.authenticate(basic("alice", "second-Passw0rd")) == "alice"


def test_a_check_in_flight_during_a_rotation_is_not_remembered_for_the_new_users(monkeypatch):
    # Another worker thread sees the new table while this one still checks the old password.
    tables = [{"alice": User("alice", "first-Passw0rd", "plain")}]
    mw = BasicAuthMiddleware(lambda e, s: [b"ok"], users=lambda: tables[-1])
    real = auth_mod.password_matches

    def rotating_midway(user, password):
        matched = real(user, password)
        if password == "first-Passw0rd":
            tables.append({"alice": User("alice", "second-Passw0rd", "plain")})
            assert mw.authenticate(basic("alice", "second-Passw0rd")) == "alice"
        return matched

    monkeypatch.setattr(auth_mod, "password_matches", rotating_midway)
    assert mw.authenticate(basic("alice", "first-Passw0rd")) == "alice"  # verified before the rotation
    assert mw.authenticate(basic("alice", "first-Passw0rd")) is None


def test_users_file_parsing_matches_htpasswd_and_legacy_forms():
    from server.gate.users import parse_htpasswd, parse_wsgi_auth_credentials

    users = parse_htpasswd(USERS_FILE, "test")
    assert [u.name for u in users] == ["alice", "bob"] and users[1].kind == "bcrypt"
    legacy = parse_wsgi_auth_credentials("a:1|b:two:parts", "legacy")
    assert [(u.name, u.secret) for u in legacy] == [("a", "1"), ("b", "two:parts")]


def test_the_same_header_at_once_takes_one_hash_check():
    """Sixteen training jobs starting together with one hashed credential: one check, sixteen users."""
    import threading

    from server.gate.auth import BasicAuthMiddleware
    from server.gate.users import User

    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=10)).decode()
    table = {"bob": User("bob", hashed, "bcrypt")}
    mw = BasicAuthMiddleware(lambda e, s: [], users=lambda: table)
    checks = []
    original = mw._hash_check
    mw._hash_check = lambda user, password: checks.append(1) or original(user, password)
    results = []
    threads = [threading.Thread(target=lambda: results.append(mw.authenticate(basic("bob", "s3cret-pw"))))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["bob"] * 16
    assert len(checks) < 4  # one, or a few if a thread came after the first check ended
