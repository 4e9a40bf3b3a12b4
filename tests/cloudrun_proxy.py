"""A stand-in for Cloud Run's front end, between the stock MLflow client and our server.

Clients speak HTTP/1.1 to it. It forwards each request to the container the way Cloud Run does:

* ``mode="http1"``: HTTP/1.1, and a request body over 32 MiB is refused with 413 before it
  reaches the container (Cloud Run's limit for HTTP/1 requests);
* ``mode="h2c"``: HTTP/2 cleartext with prior knowledge (``httpx`` with ``http1=False,
  http2=True``), with no size limit (Cloud Run's "HTTP/2 end-to-end" option, ``--use-http2``).

Bodies stream through in both directions; ``X-Forwarded-For``/``-Proto`` are added as Cloud Run
adds them.

Each request in flight has an upstream connection of its own; connections are kept alive and
reused one request at a time. Not multiplexed, because httpcore's HTTP/2 client cannot be: it
holds its connection's read lock across a blocking ``recv``. gunicorn serves a connection's
streams one after another, so a thread waiting there for a later stream's headers kept the
stream being served from reading (and acknowledging) its data; gunicorn waited for that window
credit, and both stood still until gunicorn's stream timeout (seen under CPU load: CI, and
here with busy loops).
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

LIMIT = 32 * 1024 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer",
              "host", "content-length"}


class CloudRunFront:
    def __init__(self, upstream: str, mode: str):
        assert mode in ("http1", "h2c")
        self.upstream = upstream
        self.mode = mode
        self.forwarded: list[tuple[str, str, int]] = []  # (method, path, status) seen upstream
        self.refused: list[tuple[str, str, int]] = []  # refused here (413)
        self._idle: queue.SimpleQueue[httpx.Client] = queue.SimpleQueue()  # one connection each
        self._clients: list[httpx.Client] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self, length: int | None):
                remaining = length
                if remaining is None:  # chunked
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return
                        yield self.rfile.read(size)
                        self.rfile.readline()
                while remaining:
                    data = self.rfile.read(min(remaining, 1024 * 1024))
                    if not data:
                        return
                    remaining -= len(data)
                    yield data

            def _proxy(self):
                length = self.headers.get("Content-Length")
                length = int(length) if length is not None else None
                chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
                if front.mode == "http1" and ((length or 0) > LIMIT or (chunked and length is None)):
                    front.refused.append((self.command, self.path, 413))
                    for _ in self._body(length if not chunked else None):
                        pass  # drain, then answer as Cloud Run does
                    body = b"<html><body><h1>413 Request Entity Too Large</h1></body></html>"
                    self.send_response(413)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["X-Forwarded-For"] = self.client_address[0]
                headers["X-Forwarded-Proto"] = "https"
                has_body = length is not None or chunked
                content = self._body(None if chunked else length) if has_body else None
                if length is not None:
                    headers["Content-Length"] = str(length)
                with front.connection() as upstream:
                    self._forward(upstream, headers, content)

            def _forward(self, upstream: httpx.Client, headers: dict, content):
                request = upstream.build_request(self.command, front.upstream + self.path,
                                                 headers=headers, content=content)
                response = upstream.send(request, stream=True)
                try:
                    front.forwarded.append((self.command, self.path, response.status_code))
                    self.send_response(response.status_code)
                    for key, value in response.headers.items():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.end_headers()
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in response.iter_raw(1024 * 1024):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                finally:
                    response.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _proxy  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CloudRunFront:
        self.thread.start()
        return self

    @contextmanager
    def connection(self):
        """An upstream client holding at most one connection, for one request at a time."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = httpx.Client(http1=self.mode == "http1", http2=self.mode == "h2c", timeout=600,
                                  limits=httpx.Limits(max_connections=1))
            self._clients.append(client)
        try:
            yield client
        finally:
            self._idle.put(client)

    def stop(self) -> None:
        self.httpd.shutdown()
        for client in self._clients:
            client.close()
