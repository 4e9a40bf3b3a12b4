"""Bound what one request may cost before MLflow parses it.

MLflow reads a whole JSON body into memory, builds Python objects and then protobuf messages
from it, and only then checks its own limits (at most 100 params in a ``log-batch``): a 50 MiB
body cost a worker 16-22 times its size. Its search parsers are quadratic in the length of a
filter or ``order_by`` clause. This layer refuses, cheaply and before MLflow sees the request:

* a body over its route's cap (413), read from ``Content-Length`` or, for a chunked body,
  counted while it is read; artifact uploads are streamed to the store and exempt;
* a JSON body that is not JSON, nests deeper than ``MAX_DEPTH`` or has more than
  ``MAX_NODES`` values (400);
* a search string (filter, order_by, page_token, in any spelling MLflow's parser accepts) over
  its bound, or a filter of more than ``MAX_FILTER_CLAUSES`` comparisons, a query string over ``MAX_QUERY_STRING`` (414), a NUL character in the path, the
  query or a JSON string (400): PostgreSQL refuses NUL in text, which MLflow answers with 500;
* a GraphQL request that is not one query object sent with POST (400);
* a compressed trace batch (``Content-Encoding: gzip`` or ``deflate``) that inflates past the
  route's cap (413): MLflow inflates it whole, so 8 MiB of gzip could become gigabytes. The
  body is inflated here, within the cap, and handed on uncompressed;
* a trace batch of more than ``MAX_SPANS`` spans (413): MLflow builds objects for every span
  first (100,000 tiny spans in 5 MiB: +383 MiB, 30 s of CPU). OpenTelemetry's batch exporter
  sends at most 512 spans a request, MLflow's client one trace's spans.

A chunked body within its cap is handed on with its ``Content-Length``: MLflow's Flask handlers
read exactly that many bytes, so a chunked request used to arrive empty.
"""

from __future__ import annotations

import io
import json
import re
import urllib.parse
import zlib
from collections.abc import Callable, Iterable

KIB, MIB = 1024, 1024 * 1024
# JSON API bodies: MLflow's own log-batch limit is 1 MB of entities; 2 MiB leaves room for
# JSON's overhead while a worker's peak for the largest body stays well under 64 MiB.
DEFAULT_BODY_CAP = 2 * MIB
# Routes whose documented payloads are larger: MLflow's own 10 MiB for a UI upload, and trace
# batches (OTLP, protobuf) from clients that log large inputs and outputs.
ROUTE_BODY_CAPS = (
    (re.compile(r"^/ajax-api/2\.0/mlflow/upload-artifact$"), 10 * MIB),
    (re.compile(r"^/v1/traces$"), 8 * MIB),
)
# Streamed to the artifact store chunk by chunk (server/borrowed/artifact_streaming.py): no cap here.
STREAMED = re.compile(r"^/(ajax-)?api/2\.0/mlflow-artifacts/")
# Bodies that are a file's bytes, not JSON (MLflow reads the UI upload's as request.data): capped,
# never parsed, whatever bytes the file holds.
RAW_BODIES = re.compile(r"^/ajax-api/2\.0/mlflow/upload-artifact$")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_QUERY_STRING = 16 * KIB
# search strings, by their name with case and underscores folded (orderBy, order_by, ...)
SEARCH_STRING_LIMITS = {"filter": 16 * KIB, "filterstring": 16 * KIB, "orderby": 1 * KIB,
                        "pagetoken": 8 * KIB}
SEARCH_STRING_NAMES = {"filter": "filter", "filterstring": "filter_string", "orderby": "order_by",
                       "pagetoken": "page_token"}
MAX_ORDER_BY_ITEMS = 32
# MLflow turns each comparison of a search filter into a join: 200 comparisons (4 KiB) kept
# PostgreSQL busy for 26 s, 700 ended in a 500. Comparisons are joined by AND.
MAX_FILTER_CLAUSES = 30
_AND = re.compile(r"\band\b", re.IGNORECASE)

GRAPHQL = re.compile(r"^/(ajax-api/)?graphql$")
MAX_SPANS = 2000


class RequestRefusedError(Exception):
    """A request refused before MLflow: status line and message."""

    def __init__(self, status: str, message: str, error_code: str = "INVALID_PARAMETER_VALUE"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code


def body_cap(path: str) -> int | None:
    """Bytes a request body to ``path`` may have; None: streamed, no cap."""
    if STREAMED.match(path):
        return None
    for pattern, cap in ROUTE_BODY_CAPS:
        if pattern.match(path):
            return cap
    return DEFAULT_BODY_CAP


def _folded(key: str) -> str:
    return key.replace("_", "").lower()


def _check_search_value(name: str, value) -> None:
    limit = SEARCH_STRING_LIMITS[name]
    shown = SEARCH_STRING_NAMES[name]
    items = value if isinstance(value, list) else [value]
    if name == "orderby" and len(items) > MAX_ORDER_BY_ITEMS:
        raise RequestRefusedError("400 Bad Request", f"order_by has more than {MAX_ORDER_BY_ITEMS} clauses")
    for item in items:
        if not isinstance(item, str):
            continue
        if len(item) > limit:
            raise RequestRefusedError("400 Bad Request", f"{shown} is longer than {limit} characters")
        if name in ("filter", "filterstring") and len(_AND.findall(item)) >= MAX_FILTER_CLAUSES:
            raise RequestRefusedError("400 Bad Request", f"{shown} has more than {MAX_FILTER_CLAUSES} clauses")


_SEARCH_KEYS = (b"filter", b"order", b"page")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
# A container's depth does not depend on its kind: objects' braces count as brackets.
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
# Brackets enough for any body MLflow's API takes (a log_batch at its limits of 1000 metrics,
# 100 params and 100 tags has ~2,400): a body with more goes through the parse, so the passes
# below cost at most MAX_DEPTH scans of this many bytes (~2 ms), whatever the body.
_MAX_STRUCTURE = 8 * KIB


def _nests_at_most(brackets: bytes, levels: int) -> bool:
    """Whether a balanced bracket sequence nests at most ``levels`` deep: each pass removes every
    ``[]`` of the sequence as it stands (one level: ``replace`` does not look again at a pair its
    own removals made), so a sequence that empties within ``levels`` passes is no deeper. One that
    does not (too deep, or unbalanced, which the parser then refuses) is False."""
    for _ in range(levels):
        if not brackets:
            return True
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False
        brackets = shorter
    return not brackets


def plainly_within_limits(body: bytes) -> bool:
    """Whether a JSON body is within every bound without parsing it: a cheap test for the common
    bodies (a ``log_metric``, a ``log_batch`` of 1000 metrics), which would otherwise be parsed
    twice. True only when no escape can hide a key or a NUL (no backslash), it cannot hold more
    values than it has bytes, it names no search string, and it is an object whose brackets
    outside its strings nest less deep than MAX_DEPTH (a value inside the deepest container
    stays within it). An object, not a string: MLflow decodes a double-encoded body again."""
    if len(body) > MAX_NODES or b"\\" in body or b"\x00" in body:
        return False
    lowered = body.lower()
    if any(key in lowered for key in _SEARCH_KEYS):
        return False
    if body.lstrip()[:1] != b"{":
        return False
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH - 1:  # a log_metric: too few brackets to nest deeper
        return True
    # with no backslash, a JSON string runs from a quote to the next: every other piece between
    # quotes is inside a string, and the rest is the body's structure
    structure = b"".join(body.translate(None, _NOT_BRACKETS_OR_QUOTES).split(b'"')[::2])
    if len(structure) > _MAX_STRUCTURE:
        return False
    return _nests_at_most(structure.translate(_BRACES_AS_BRACKETS), MAX_DEPTH - 1)


def check_json(document) -> None:
    """Depth, size, NUL characters and search strings of a parsed JSON document (iterative).

    Containers go on a stack and scalars are checked where they are met; each distinct key is
    checked once per document (a ``log_batch`` of 1000 metrics repeats four keys 1000 times)."""
    nodes = 1
    folded_keys: dict[str, str] = {}
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestRefusedError("400 Bad Request", f"the JSON body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                folded = folded_keys.get(key)
                if folded is None:
                    if "\x00" in key:
                        raise RequestRefusedError("400 Bad Request", "a NUL character is not allowed")
                    folded = folded_keys[key] = _folded(key)
                if folded in SEARCH_STRING_LIMITS:
                    _check_search_value(folded, item)
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            if isinstance(value, str) and "\x00" in value:
                raise RequestRefusedError("400 Bad Request", "a NUL character is not allowed")
            continue
        nodes += len(children)
        if nodes > MAX_NODES:
            raise RequestRefusedError("413 Content Too Large", f"the JSON body has more than {MAX_NODES} values",
                                      "RESOURCE_LIMIT_EXCEEDED")
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif depth >= MAX_DEPTH:
                raise RequestRefusedError("400 Bad Request", f"the JSON body nests deeper than {MAX_DEPTH} levels")
            elif isinstance(child, str) and "\x00" in child:
                raise RequestRefusedError("400 Bad Request", "a NUL character is not allowed")


def parse_json_body(body: bytes):
    """The parsed body, or a RequestRefusedError. A document nested deeper than the parser's recursion
    allows (MLflow answered 100,000 nested brackets with a 500) is refused like invalid JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestRefusedError("400 Bad Request", "the request body is not valid JSON, or nests too deep") from exc


def check_query(query_string: str) -> None:
    if len(query_string) > MAX_QUERY_STRING:
        raise RequestRefusedError("414 URI Too Long", f"the query string is longer than {MAX_QUERY_STRING} characters")
    if not query_string:
        return
    for key, value in urllib.parse.parse_qsl(query_string, keep_blank_values=True):
        if "\x00" in key or "\x00" in value:
            raise RequestRefusedError("400 Bad Request", "a NUL character is not allowed")
        folded = _folded(key)
        if folded in SEARCH_STRING_LIMITS:
            _check_search_value(folded, value)


def _is_json(environ: dict) -> bool:
    content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    # MLflow's handlers parse any body of theirs as JSON (get_json(force=True))
    return content_type in ("", "application/json") or content_type.endswith("+json")


class RequestLimits:
    """Args:
    app: the WSGI application.
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            self._check(environ)
        except RequestRefusedError as refusal:
            return refuse(environ, start_response, refusal)
        return self.app(environ, start_response)

    def _check(self, environ: dict) -> None:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if "\x00" in path:
            raise RequestRefusedError("400 Bad Request", "a NUL character is not allowed")
        check_query(environ.get("QUERY_STRING", ""))
        graphql = GRAPHQL.match(path) is not None
        if graphql and method != "POST":
            raise RequestRefusedError("400 Bad Request", "GraphQL takes one query object in a POST body")
        if method not in BODY_METHODS:
            return
        cap = body_cap(path)
        if cap is None:
            return
        body = read_body(environ, cap)
        if body is None or RAW_BODIES.match(path):
            return
        if path == "/v1/traces":
            body = inflate_body(environ, body, cap)
            if count_spans(body, environ.get("CONTENT_TYPE", "")) > MAX_SPANS:
                raise RequestRefusedError("413 Content Too Large", f"a trace batch may hold at most {MAX_SPANS} spans",
                                          "RESOURCE_LIMIT_EXCEEDED")
            return
        if graphql or (body and _is_json(environ)):
            if not graphql and plainly_within_limits(body):
                return
            document = parse_json_body(body) if body.strip() else None
            if isinstance(document, str):  # MLflow decodes a double-encoded body (older clients) again
                document = parse_json_body(document)
            check_json(document)
            if graphql and not (isinstance(document, dict) and isinstance(document.get("query"), str)):
                raise RequestRefusedError("400 Bad Request", "GraphQL takes one query object in a POST body")


def read_body(environ: dict, cap: int) -> bytes | None:
    """Read a body of at most ``cap`` bytes and put it back as a sized body; None: no body."""
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError as exc:
            raise RequestRefusedError("400 Bad Request", "Content-Length is not a number") from exc
        if size > cap:
            raise RequestRefusedError("413 Content Too Large", f"the request body is larger than {cap} bytes",
                          "RESOURCE_LIMIT_EXCEEDED")
        body = environ["wsgi.input"].read(size) if size else b""
    elif environ.get("wsgi.input_terminated"):  # chunked (HTTP/1.1), or HTTP/2 without a length
        body = environ["wsgi.input"].read(cap + 1)
        if len(body) > cap:
            raise RequestRefusedError("413 Content Too Large", f"the request body is larger than {cap} bytes",
                          "RESOURCE_LIMIT_EXCEEDED")
    else:
        return None
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return body


def inflate(body: bytes, encoding: str, cap: int) -> bytes:
    """``body`` decompressed, at most ``cap`` bytes; a RequestRefusedError past that or if it is not
    what it says."""
    if encoding == "gzip":
        wbits_tries = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":
        wbits_tries = (zlib.MAX_WBITS, -zlib.MAX_WBITS)  # zlib-wrapped, or raw as some clients send
    else:
        raise RequestRefusedError("415 Unsupported Media Type", f"unsupported Content-Encoding {encoding!r}")
    for wbits in wbits_tries:
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, cap + 1)
        except zlib.error:
            continue
        if len(data) > cap or inflater.unconsumed_tail:
            raise RequestRefusedError("413 Content Too Large", f"the request body inflates past {cap} bytes",
                                      "RESOURCE_LIMIT_EXCEEDED")
        return data
    raise RequestRefusedError("400 Bad Request", f"the request body is not valid {encoding}")


def inflate_body(environ: dict, body: bytes, cap: int) -> bytes:
    """The body as the application will read it: inflated here when it is compressed."""
    encoding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if not encoding or encoding == "identity":
        return body
    data = inflate(body, encoding, cap)
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_CONTENT_ENCODING", None)
    return data


def count_spans(body: bytes, content_type: str) -> int:
    """Spans in an OTLP trace export (protobuf or JSON); 0 when it does not parse (MLflow then
    answers it)."""
    if "json" in content_type.lower():
        try:
            document = json.loads(body)
            return sum(len(scope.get("spans") or ()) for resource in document.get("resourceSpans") or ()
                       for scope in resource.get("scopeSpans") or ())
        except (ValueError, RecursionError, AttributeError, TypeError):
            return 0
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError:
        return 0
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def refuse(environ: dict, start_response: Callable, refusal: RequestRefusedError) -> list[bytes]:
    body = json.dumps({"error_code": refusal.error_code, "message": refusal.message}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    # the rest of an unread body is not worth reading: the connection closes after this answer
    environ["server.close_connection"] = True
    start_response(refusal.status, headers)
    return [body]
