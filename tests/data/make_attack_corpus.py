"""Writes attack_corpus.json: raw HTTP requests that carry no valid credentials.

    python tests/data/make_attack_corpus.py      (the JSON is committed; re-run after edits)

Each entry: a name, a group, and the request's bytes (base64), with {HOST} to be replaced by
the test. None of them may reach MLflow, none may get a 5xx.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

API = "/api/2.0/mlflow/experiments/search?max_results=1"
GOOD_USER, GOOD_PASSWORD = "alice", "alice-Pl41n-password"  # the tests' user; used only malformed here


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def request(method: str, target: str, headers: list[bytes] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"Host: {HOST}"]
    lines += list(headers)
    if body and not any(h.lower().startswith((b"content-length", b"transfer-encoding")) for h in headers):
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def auth_headers() -> list[tuple[str, bytes]]:
    good = f"{GOOD_USER}:{GOOD_PASSWORD}".encode()
    cases = [
        ("none", None),
        ("empty", b""),
        ("scheme only", b"Basic"),
        ("scheme and space", b"Basic "),
        ("bad base64", b"Basic !!!!"),
        ("bad base64 padding", b"Basic " + base64.b64encode(good).rstrip(b"=")[:-1]),
        ("base64 with spaces", b"Basic " + base64.b64encode(good)[:8] + b" " + base64.b64encode(good)[8:]),
        ("no colon", b"Basic " + base64.b64encode(b"alicealice")),
        ("empty user", b"Basic " + base64.b64encode(b":" + GOOD_PASSWORD.encode())),
        ("empty password", b"Basic " + base64.b64encode(b"alice:")),
        ("only colon", b"Basic " + base64.b64encode(b":")),
        ("wrong password", b"Basic " + base64.b64encode(b"alice:wrong")),
        ("unknown user", b"Basic " + base64.b64encode(b"mallory:" + GOOD_PASSWORD.encode())),
        ("user case", b"Basic " + base64.b64encode(b"ALICE:" + GOOD_PASSWORD.encode())),
        ("password prefix", b"Basic " + base64.b64encode(good[:-1])),
        ("password suffix", b"Basic " + base64.b64encode(good + b"x")),
        ("trailing newline in password", b"Basic " + base64.b64encode(good + b"\n")),
        ("nul in password", b"Basic " + base64.b64encode(good + b"\x00")),
        ("nul in user", b"Basic " + base64.b64encode(b"alice\x00:" + GOOD_PASSWORD.encode())),
        ("non-utf8 credentials", b"Basic " + base64.b64encode(b"alice:\xff\xfe\xfd")),
        ("latin-1 user", b"Basic " + base64.b64encode("ålice:x".encode("latin-1"))),
        ("non-utf8 header bytes", b"Basic \xff\xfe\xfd\xfc"),
        ("huge 6 kB", b"Basic " + b"QUFB" * 1500),
        ("huge 7.9 kB", b"Basic " + b"QUFB" * 2000),
        ("huge 64 kB", b"Basic " + b"QUFB" * 16000),
        ("bearer", b"Bearer " + base64.b64encode(good)),
        ("digest", b'Digest username="alice", realm="MLflow", nonce="x", uri="/", response="y"'),
        ("negotiate", b"Negotiate YIIB"),
        ("aws sigv4", b"AWS4-HMAC-SHA256 Credential=x/y, SignedHeaders=host, Signature=z"),
        ("basic no space", b"Basic" + base64.b64encode(good)),
        ("two schemes", b"Basic " + base64.b64encode(b"bob:x") + b", Bearer abc"),
        ("comma joined", b"Basic " + base64.b64encode(b"x:y") + b",Basic " + base64.b64encode(b"z:w")),
        ("tab separator", b"Basic\t" + base64.b64encode(b"alice:wrong")),
        ("unicode escapes", b"Basic \\u0061lice"),
        ("url-encoded", b"Basic YWxpY2U%3Awrong"),
        ("base64url alphabet", b"Basic " + base64.urlsafe_b64encode(b"alice:\xfb\xff?>")),
        ("sql injection user", b"Basic " + base64.b64encode(b"' OR '1'='1:x")),
        ("very long user", b"Basic " + base64.b64encode(b"a" * 3000 + b":x")),
        ("header injection", b"Basic " + base64.b64encode(b"alice:x") + b"\r\nX-Injected: 1"),
        ("control chars", b"Basic " + base64.b64encode(b"al\x07ice:x\x1b")),
    ]
    return cases


def corpus() -> list[dict]:
    entries = []

    def add(group, name, raw):
        entries.append({"group": group, "name": name, "raw": b64(raw)})

    # 1. malformed Authorization headers, on GET, POST and the UI's ajax path
    for name, value in auth_headers():
        header = [] if value is None else [b"Authorization: " + value]
        add("authorization", f"GET api, {name}", request("GET", API, header))
        add("authorization", f"POST create, {name}", request(
            "POST", "/api/2.0/mlflow/experiments/create", [*header, b"Content-Type: application/json"],
            b'{"name": "should-never-exist"}'))
        add("authorization", f"GET ajax, {name}", request("GET", "/ajax-api/2.0/mlflow/experiments/search", header))
    # repeated headers
    for name, headers in [
        ("two bad", [b"Authorization: Basic " + base64.b64encode(b"a:b"),
                     b"Authorization: Basic " + base64.b64encode(b"c:d")]),
        ("bad then empty", [b"Authorization: Basic " + base64.b64encode(b"a:b"), b"Authorization: "]),
        ("bearer then basic bad", [b"Authorization: Bearer x", b"Authorization: Basic " + base64.b64encode(b"a:b")]),
        ("folded header", [b"Authorization: Basic", b" " + base64.b64encode(b"a:b")]),
    ]:
        add("authorization", f"repeated: {name}", request("GET", API, headers))

    # 2. path tricks around the open health path (no credentials)
    paths = [
        "/health/../api/2.0/mlflow/experiments/search", "/health/..%2fapi/2.0/mlflow/experiments/search",
        "/health/%2e%2e/api/2.0/mlflow/experiments/search", "/health%2f..%2fapi/2.0/mlflow/experiments/search",
        "/health/%252e%252e/api/2.0/mlflow/experiments/search", "/health/./../api/2.0/mlflow/experiments/search",
        "//health", "///health", "//health/../api/2.0/mlflow/experiments/search", "/./health",
        "/health/", "/health/.", "/health/..", "/health.", "/health..", "/health;", "/health;/../api/2.0/mlflow/experiments/search",
        "/health;jsessionid=1", "/health%3b/../api", "/health#/../api/2.0/mlflow/experiments/search",
        "/health%23/../api/2.0/mlflow/experiments/search", "/health\\..\\api\\2.0\\mlflow\\experiments\\search",
        "/health%5c..%5capi", "/HEALTH", "/Health", "/hEaLtH", "/%68ealth", "/%48EALTH", "/health%00",
        "/health%20", "/health ", "/health?x=/../api", "/healthz", "/health2", "/health/api/2.0/mlflow/experiments/search",
        "/api/2.0/mlflow/../../health", "/api/2.0/mlflow/experiments/search#/health", "/api/2.0/mlflow/experiments/search?/health",
        "/api/2.0/mlflow/experiments/search;/health", "/static-files/../health", "/static-files/index.html",
        "/static-files/../api/2.0/mlflow/experiments/search", "/version", "/", "/#/experiments",
        "/get-artifact?path=../../etc/passwd&run_uuid=x", "/api/2.0/mlflow-artifacts/artifacts/x",
        "/ajax-api/2.0/mlflow/users/current", "/ajax-api/3.0/mlflow/assistant/config",
        "http://{HOST}/api/2.0/mlflow/experiments/search", "*", "/%2e%2e/%2e%2e/etc/passwd",
        "/..;/api/2.0/mlflow/experiments/search", "/health/%2e%2e%2fapi%2f2.0%2fmlflow%2fexperiments%2fsearch",
        "/%2fhealth", "/health%2F", "/%u0068ealth", "/health%ef%bc%8f..%ef%bc%8fapi",
    ]
    for path in paths:
        add("path", f"GET {path}", request("GET", path))

    # 3. methods
    for method in ("HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "PATCH", "POST", "CONNECT", "PROPFIND", "GET"):
        for target in ("/health", API, "/"):
            if method in ("GET", "HEAD") and target == "/health":
                continue  # the open health check, by design
            add("method", f"{method} {target}", request(method, target))
    add("method", "OPTIONS preflight", request("OPTIONS", API, [
        b"Origin: https://evil.example", b"Access-Control-Request-Method: POST"]))

    # 4. request smuggling shapes
    smuggled = b"GET " + API.encode() + b" HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    chunk_body = b"0\r\n\r\n" + smuggled
    add("smuggling", "CL.TE", request("POST", "/health", [b"Content-Length: %d" % len(chunk_body),
                                                          b"Transfer-Encoding: chunked"], chunk_body))
    add("smuggling", "TE.CL", request("POST", "/health", [b"Transfer-Encoding: chunked", b"Content-Length: 3"],
                                      b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"))
    add("smuggling", "TE obfuscated space", request("POST", "/health", [b"Transfer-Encoding : chunked",
                                                                       b"Content-Length: 4"], b"0\r\n\r\n"))
    add("smuggling", "TE xchunked", request("POST", "/health", [b"Transfer-Encoding: xchunked",
                                                               b"Content-Length: 4"], b"0\r\n\r\n"))
    add("smuggling", "TE chunked, identity", request("POST", "/health", [b"Transfer-Encoding: chunked, identity"],
                                                    b"0\r\n\r\n"))
    add("smuggling", "two TE", request("POST", "/health", [b"Transfer-Encoding: chunked",
                                                          b"Transfer-Encoding: identity"], b"0\r\n\r\n"))
    add("smuggling", "two CL differing", request("POST", "/health", [b"Content-Length: 4", b"Content-Length: 40"],
                                                 b"abcd"))
    add("smuggling", "CL with plus", request("POST", "/health", [b"Content-Length: +4"], b"abcd"))
    add("smuggling", "CL negative", request("POST", "/health", [b"Content-Length: -1"], b"abcd"))
    add("smuggling", "CL hex", request("POST", "/health", [b"Content-Length: 0x4"], b"abcd"))
    add("smuggling", "chunk size overflow", request("POST", "/health", [b"Transfer-Encoding: chunked"],
                                                    b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n"))
    add("smuggling", "chunk extension junk", request("POST", "/health", [b"Transfer-Encoding: chunked"],
                                                     b"4;\x00ext\r\nabcd\r\n0\r\n\r\n"))
    add("smuggling", "bare LF line endings", b"GET " + API.encode() + b" HTTP/1.1\nHost: {HOST}\n\n")
    add("smuggling", "header without colon", request("GET", API, [b"Authorization Basic YTpi"]))
    add("smuggling", "space before colon", request("GET", API, [b"Authorization : Basic " + base64.b64encode(b"a:b")]))
    add("smuggling", "HTTP/1.0 keep", b"GET " + API.encode() + b" HTTP/1.0\r\n\r\n")
    add("smuggling", "HTTP/0.9", b"GET " + API.encode() + b"\r\n\r\n")
    add("smuggling", "HTTP/2 preface to h1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    add("smuggling", "absurd version", b"GET " + API.encode() + b" HTTP/9.9\r\nHost: {HOST}\r\n\r\n")
    add("smuggling", "huge request line", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
    add("smuggling", "many headers", request("GET", API, [b"X-H%d: v" % i for i in range(300)]))
    add("smuggling", "pipelined after health", request("GET", "/health") .replace(b"Connection: close\r\n", b"")
        + smuggled)
    return entries


if __name__ == "__main__":
    items = corpus()
    out = Path(__file__).with_name("attack_corpus.json")
    out.write_text(json.dumps(items, indent=1) + "\n")
    print(f"{len(items)} requests written to {out}")
