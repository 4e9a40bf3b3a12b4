"""Fast tests of the pure decisions behind the attack-resistance layers: request limits, the
experiment-location rule, the shared failure counts and hash budget, trusted proxies, headers."""

from __future__ import annotations

import json
import os

import pytest

from server.gate.failures import FailureLimiter, HashBudget, SharedCounters, client_key
from server.limits import experiment_guard, request_limits
from server.limits.request_limits import RequestRefusedError
from server.serving import security_headers, trusted_proxy


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def status_of(call) -> str:
    with pytest.raises(RequestRefusedError) as refused:
        call()
    return refused.value.status.split()[0]


def test_body_caps_by_route():
    assert request_limits.body_cap("/api/2.0/mlflow/runs/log-batch") == 2 * 1024 * 1024
    assert request_limits.body_cap("/ajax-api/2.0/mlflow/upload-artifact") == 10 * 1024 * 1024
    assert request_limits.body_cap("/api/2.0/mlflow-artifacts/artifacts/1/x/model.pkl") is None
    assert request_limits.body_cap("/ajax-api/2.0/mlflow-artifacts/mpu/create/x") is None


def test_search_strings_in_every_spelling_and_place():
    request_limits.check_json({"filter": "a" * 16384, "order_by": ["x"] * 32, "page_token": "t" * 8192})
    for document in ({"filter": "a" * 16385}, {"orderBy": ["m" * 1025]}, {"PageToken": "t" * 8193},
                     {"order_by": ["x"] * 33}, {"variables": {"input": {"filterString": "f" * 20000}}}):
        assert status_of(lambda d=document: request_limits.check_json(d)) == "400", document
    assert status_of(lambda: request_limits.check_query("order_by=" + "x" * 2000)) == "400"
    assert status_of(lambda: request_limits.check_query("a=" + "b" * 17000)) == "414"
    request_limits.check_query("filter=" + "x" * 1000)
    request_limits.check_json({"filter": " AND ".join(["a = 1"] * 30)})
    assert status_of(lambda: request_limits.check_json({"filter": " and ".join(["a = 1"] * 31)})) == "400"


def limits_check(path: str, body: bytes, content_type: str = "application/json") -> None:
    import io

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "CONTENT_TYPE": content_type,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    request_limits.RequestLimits(None)._check(environ)
    assert environ["wsgi.input"].read() == body  # put back whole for the app


@pytest.mark.parametrize("content_type", ["", "application/octet-stream", "application/json"])
def test_a_ui_upload_is_a_file_not_json(content_type):
    """The UI's upload body is the file itself (MLflow reads request.data): any bytes pass, within its cap."""
    upload = "/ajax-api/2.0/mlflow/upload-artifact"
    for body in (b"kept", b"C:\\temp\\order page filter", b"[" * 500, bytes(range(256)) * 40, b'"a"', b"\x00"):
        limits_check(upload, body, content_type)
    assert status_of(lambda: limits_check(upload, b"x" * (10 * 1024 * 1024 + 1), content_type)) == "413"
    if content_type != "application/octet-stream":  # the same bytes to a JSON route are checked as JSON
        assert status_of(lambda: limits_check("/api/2.0/mlflow/runs/log-batch", b"[" * 500, content_type)) == "400"


def test_a_double_encoded_body_is_checked_as_mlflow_reads_it():
    """MLflow's handlers decode a JSON body that is a JSON string a second time (older clients)."""
    import io
    import json

    def check(body: bytes):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/2.0/mlflow/runs/search",
                   "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        request_limits.RequestLimits(None)._check(environ)

    inner = {"experiment_ids": ["1"], "order_by": ["m" * 1025]}
    assert status_of(lambda: check(json.dumps(inner).encode())) == "400"
    assert status_of(lambda: check(json.dumps(json.dumps(inner)).encode())) == "400"
    assert status_of(lambda: check(json.dumps("[" * 100 + "]" * 100).encode())) == "400"
    check(json.dumps(json.dumps({"experiment_ids": ["1"], "order_by": ["m"]})).encode())


def test_depth_values_and_nul():
    deep = current = {}
    for _ in range(70):
        current["a"] = {}
        current = current["a"]
    assert status_of(lambda: request_limits.check_json(deep)) == "400"
    assert status_of(lambda: request_limits.check_json(list(range(100_001)))) == "413"
    assert status_of(lambda: request_limits.check_json({"k": "a\x00b"})) == "400"
    assert status_of(lambda: request_limits.check_json({"a\x00": 1})) == "400"
    assert status_of(lambda: request_limits.check_query("name=a%00b")) == "400"
    assert status_of(lambda: request_limits.parse_json_body(b"[" * 200_000)) == "400"
    assert request_limits.parse_json_body(b'{"x": [1, 2]}') == {"x": [1, 2]}


def test_depth_and_values_at_their_exact_bounds():
    at_depth = [0]
    for _ in range(request_limits.MAX_DEPTH - 2):
        at_depth = [at_depth]
    request_limits.check_json(at_depth)  # the scalar inside is at MAX_DEPTH
    assert status_of(lambda: request_limits.check_json([at_depth])) == "400"
    assert status_of(lambda: request_limits.check_json([{"k": at_depth}])) == "400"
    request_limits.check_json(list(range(request_limits.MAX_NODES - 1)))  # the list is a value too
    assert status_of(lambda: request_limits.check_json(list(range(request_limits.MAX_NODES)))) == "413"
    assert status_of(lambda: request_limits.check_json({"a": [{"k": 1}] * 50_000})) == "413"


def _reference_check_json(document) -> None:
    """The plain walk check_json must agree with: every value popped and checked in turn."""
    nodes, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > request_limits.MAX_NODES:
            raise RequestRefusedError("413 Content Too Large", "values")
        if depth > request_limits.MAX_DEPTH:
            raise RequestRefusedError("400 Bad Request", "depth")
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise RequestRefusedError("400 Bad Request", "nul")
                folded = key.replace("_", "").lower()
                if folded in request_limits.SEARCH_STRING_LIMITS:
                    request_limits._check_search_value(folded, item)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and "\x00" in value:
            raise RequestRefusedError("400 Bad Request", "nul")


def test_check_json_agrees_with_the_plain_walk():
    import random

    rng = random.Random(7)
    scalars = [1, 2.5, None, True, "s", "a\x00b", "f" * 20_000]
    keys = ["key", "value", "filter", "Order_By", "page_token", "k\x00", "x"]

    def build(depth, budget):  # budget: values this document may still have
        budget[0] -= 1
        kind = rng.random()
        if depth > 70 or kind < 0.35 or budget[0] < 0:
            return rng.choice(scalars[:5] if rng.random() < 0.97 else scalars)
        if kind < 0.7:
            return [build(depth + 1, budget) for _ in range(rng.randint(0, 4))]
        names = keys[:3] + keys[4:5] + keys[6:] if rng.random() < 0.95 else keys
        return {rng.choice(names): build(depth + 1, budget) for _ in range(rng.randint(0, 4))}

    verdicts = {}
    for _ in range(3000):
        document = build(rng.choice([1, 1, 1, 40, 60, 62]), [200])
        outcomes = []
        for check in (request_limits.check_json, _reference_check_json):
            try:
                check(document)
                outcomes.append(None)
            except RequestRefusedError as refusal:
                outcomes.append(refusal.status)
        assert outcomes[0] == outcomes[1], document
        verdicts[outcomes[0]] = verdicts.get(outcomes[0], 0) + 1
    assert verdicts.get(None, 0) > 500 and verdicts.get("400 Bad Request", 0) > 100  # both kinds were met


@pytest.mark.parametrize("location", ["file:///etc", "mlflow-artifacts:/../x", "mlflow-artifacts:/%2e%2e/x",
                                      "mlflow-artifacts:/%252e%252e/x", "mlflow-artifacts:/a?b",
                                      "mlflow-artifacts:/a%23b", "mlflow-artifacts:/a%00", "mlflow-artifacts:/a\\..\\b",
                                      "mlflow-artifacts:/x/..", "gs://bucket/artifacts-evil"])
def test_locations_outside_the_root_are_refused(location):
    assert not experiment_guard.allowed_location(location, "mlflow-artifacts:/")


@pytest.mark.parametrize("location", [None, "", "mlflow-artifacts:/", "mlflow-artifacts:/team-a",
                                      "mlflow-artifacts:/a..b/c"])
def test_locations_inside_the_root_are_allowed(location):
    assert experiment_guard.allowed_location(location, "mlflow-artifacts:/")


def test_client_key_counts_ipv6_per_64():
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1" and client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("-") == "-"


def test_limiter_pairs_addresses_and_success():
    clock = Clock()
    limiter = FailureLimiter(3, 60, address_factor=2, counters=SharedCounters(slots=64, clock=clock))
    for _ in range(3):
        assert limiter.retry_after("1.2.3.4", "alice") == 0
        limiter.record_failure("1.2.3.4", "alice")
    assert limiter.retry_after("1.2.3.4", "alice") == 60
    limiter.record_success("1.2.3.4", "bob")  # another user's login does not clear alice's count
    assert limiter.retry_after("1.2.3.4", "alice") == 60
    assert limiter.retry_after("5.6.7.8", "alice") == 0  # nor does it reach other clients
    limiter.record_failure("1.2.3.4", "carol")
    limiter.record_failure("1.2.3.4", "dan")
    limiter.record_failure("1.2.3.4", "erin")  # 6 failures from the address: its bound
    assert limiter.retry_after("1.2.3.4", "carol") == 60  # a name that failed there waits
    assert limiter.retry_after("1.2.3.4", "frank") == 0  # a name that did not, may try
    clock.now += 61
    assert limiter.retry_after("1.2.3.4", "alice") == 0  # the window passed
    limiter.record_failure("9.9.9.9", "x")
    limiter.record_success("9.9.9.9", "x")
    assert limiter.counters.count("pair\x009.9.9.9\x00x", 60) == 0


def test_counts_are_shared_with_forked_workers():
    counters = SharedCounters(slots=64)
    limiter = FailureLimiter(2, 60, counters=counters)
    pid = os.fork()
    if pid == 0:  # a worker: its failures are the parent's too
        limiter.record_failure("1.1.1.1", "u")
        limiter.record_failure("1.1.1.1", "u")
        os._exit(0)
    os.waitpid(pid, 0)
    assert limiter.retry_after("1.1.1.1", "u") == 60


def test_a_full_table_evicts_the_oldest_entry():
    clock = Clock()
    counters = SharedCounters(slots=8, clock=clock)
    for i in range(100):
        clock.now += 1
        counters.add(f"key-{i}", 1000)
    assert counters.count("key-99", 1000) == 1  # the newest is kept; the table did not grow


def test_hash_budget_is_a_share_with_a_reserve():
    clock = Clock()
    budget = HashBudget(share=0.5, burst=2.0, counters=SharedCounters(slots=1, clock=clock))
    started = 0
    while budget.try_start():
        budget.spend(0.25)
        started += 1
    assert started == 8  # the 2 s reserve
    clock.now += 1.0
    assert budget.try_start()  # half a second of hash work earned back
    budget.spend(0.25)
    assert budget.try_start()
    budget.spend(0.25)
    assert not budget.try_start()


def test_trusted_proxies():
    any_peer, networks = trusted_proxy.parse_trusted("*")
    assert any_peer and trusted_proxy.is_trusted("8.8.8.8", any_peer, networks)
    any_peer, networks = trusted_proxy.parse_trusted("127.0.0.1, 10.0.0.0/8,::1")
    assert trusted_proxy.is_trusted("10.1.2.3", any_peer, networks)
    assert trusted_proxy.is_trusted("::ffff:127.0.0.1", any_peer, networks)
    assert not trusted_proxy.is_trusted("203.0.113.9", any_peer, networks)
    assert not trusted_proxy.is_trusted(None, any_peer, networks)


def test_security_headers():
    plain = dict(security_headers.security_headers("/api/2.0/mlflow/runs/get", https=False))
    assert plain["Cache-Control"] == "no-store" and "Strict-Transport-Security" not in plain
    assert "frame-ancestors 'none'" in plain["Content-Security-Policy"]
    secure = dict(security_headers.security_headers("/static-files/static/js/main.js", https=True))
    assert "Cache-Control" not in secure and secure["Strict-Transport-Security"].startswith("max-age=")
    renderer = dict(security_headers.security_headers("/static-files/lib/notebook-trace-renderer/index.html", False))
    assert "frame-ancestors" not in renderer["Content-Security-Policy"]


def test_compressed_bodies_inflate_within_the_cap():
    import gzip
    import zlib

    payload = b"span" * 1000
    assert request_limits.inflate(gzip.compress(payload), "gzip", 10_000) == payload
    assert request_limits.inflate(zlib.compress(payload), "deflate", 10_000) == payload
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert request_limits.inflate(raw.compress(payload) + raw.flush(), "deflate", 10_000) == payload
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 KiB that inflates to 50 MiB
    assert status_of(lambda: request_limits.inflate(bomb, "gzip", 8 * 1024 * 1024)) == "413"
    assert status_of(lambda: request_limits.inflate(b"not gzip", "gzip", 100)) == "400"
    assert status_of(lambda: request_limits.inflate(payload, "br", 100_000)) == "415"


def nested(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


def alternating(levels: int) -> bytes:
    """Lists and objects in turn, ``levels`` deep, around one number."""
    body = b"1"
    for level in range(levels):
        body = b"[" + body + b"]" if level % 2 else b'{"k": ' + body + b"}"
    return body


def test_plainly_within_limits_only_when_nothing_could_hide():
    plain = request_limits.plainly_within_limits
    assert plain(b'{"run_id": "abc", "key": "m", "value": 1.5, "step": 3}')
    batch = {"run_id": "r", "metrics": [{"key": "x", "value": float(i), "timestamp": 0, "step": i} for i in range(1000)],
             "params": [{"key": "p", "value": "[{ ]] }"}], "tags": []}
    assert plain(json.dumps(batch).encode())  # a log_batch of 1000 metrics, brackets inside a string
    batch["params"] = batch["tags"] = [{"key": "k", "value": "v"}] * 100
    assert plain(json.dumps(batch).encode())  # at MLflow's limits for a log_batch
    assert not plain(b'{"a": [' + b"[]," * 5000 + b"[]]}")  # more structure than any such body: parsed
    assert plain(b'{"a": ' + nested(62) + b"}")  # values at depth 64
    assert plain(b'{"a": ' + alternating(62) + b"}")
    assert plain(b'{"a": "' + b"]" * 70 + b'", "b": ' + nested(62) + b"}")
    for body in (b'{"filter": "x"}', b'{"OrderBy": ["a"]}', b'{"page_token": "t"}',
                 b'{"\\u0066ilter": "x"}', b'{"k": "a\\u0000b"}', b'{"k": "a\x00b"}',
                 b"[" * 65 + b"]" * 65, b"[" + b"0," * 60000 + b"0]",
                 b'{"a": ' + nested(63) + b"}",  # a value at depth 65
                 b'{"a": ' + alternating(63) + b"}",
                 b'{"a": "' + b"]" * 70 + b'", "b": ' + nested(63) + b"}",  # a string's brackets hide nothing
                 b'{"a": ' + nested(40) + b', "b": ' + nested(70) + b"}",
                 b'"' + nested(100, b"") + b'"', b" " + nested(3), b"5"):  # not an object
        assert not plain(body), body[:40]


def test_a_plain_body_passes_the_full_check():
    """Whatever plainly_within_limits lets through without parsing, the parse and walk accept too
    (or the body is not JSON at all, which MLflow's parser refuses)."""
    import random

    rng = random.Random(26)
    texts = ["x", "]", "[[", "{", "}", "a,b", ":", "filter", "ordering", " ", "\u00e9", "\"", "\u0000"]

    def build(depth):
        kind = rng.random()
        if depth > 68 or kind < 0.3:
            return rng.choice([1, 2.5, None, True, rng.choice(texts)])
        if kind < 0.65:
            return [build(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "key", "v]", "{x"]): build(depth + 1) for _ in range(rng.randint(0, 3))}

    let_through = 0
    for _ in range(4000):
        body = json.dumps({"d": build(rng.choice([1, 1, 40, 58, 61, 62]))}, ensure_ascii=rng.random() < 0.5).encode()
        if rng.random() < 0.2:  # a damaged body
            cut = rng.randrange(len(body))
            body = body[:cut] + rng.choice([b"[", b"]", b"{", b"}", b'"', b""]) + body[cut + 1:]
        if not request_limits.plainly_within_limits(body):
            continue
        let_through += 1
        try:
            document = json.loads(body)
        except ValueError:
            continue
        request_limits.check_json(document)  # raises if the shortcut let through what the walk refuses
        assert isinstance(document, dict)
    assert let_through > 1000


def test_failures_noted_for_the_fleet_wait_out_a_database_outage():
    from server.gate.failures import SharedCounters
    from server.gate.fleet_failures import FleetFailures

    def unreachable():
        raise ConnectionError("the database is down")

    counters = SharedCounters(slots=64)
    fleet = FleetFailures(unreachable, counters, window=60)
    fleet._thread_pid = os.getpid()  # flushed by hand here, not by its thread
    fleet.note("pair\0198.51.100.7\0alice")
    fleet.note("pair\0198.51.100.7\0alice")
    with pytest.raises(ConnectionError):
        fleet.flush()
    assert fleet._pending == {counters.digest("pair\0198.51.100.7\0alice"): 2}  # kept for the next flush
