"""An HTTP/2 connection whose streams can be served by several threads at once.

gunicorn 27.0.1's ``HTTP2ServerConnection`` is driven by one thread: that thread reads the
socket, and serves the connection's requests one after another, pulling a request body off
the socket as the application reads it. An upload whose body stalls on one stream therefore
delays every later stream of the connection (20 s and more, measured), and Cloud Run's front
end carries several clients' requests on one connection.

Here one thread, the connection's reader, is the only one that reads the socket; each request
is served by a thread of its own. A thread that needs more of its request body, or send
credit for its response, waits on a condition until the reader has processed the frames it
needs (or the stream times out, ``cfg.timeout`` without progress, as in gunicorn). Every use
of the h2 state machine and every write to the socket holds one lock.

Written for gunicorn 27.0.1 (``gunicorn.http2.connection``): it overrides ``pump``,
``_wait_for_flow_control_window`` and the public send/close methods, and relies on
``_read_and_process(data)`` taking bytes already read. ``tests/test_internals.py`` pins the
source of those methods.
"""

from __future__ import annotations

import functools
import threading
import time

from gunicorn.http2.connection import HTTP2ServerConnection
from gunicorn.http2.errors import HTTP2ErrorCode
from gunicorn.http2.stream import StreamState

READ_SIZE = 65536
# the methods stream threads call that touch the h2 state machine or write to the socket
LOCKED = ("send_informational", "send_response_headers", "end_stream", "send_response", "send_data",
          "send_trailers", "send_error", "reset_stream", "abort_stream", "close", "cleanup_stream",
          "acknowledge_data", "initiate_connection")


def _locked(name: str):
    method = getattr(HTTP2ServerConnection, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return call


class ConcurrentH2Connection(HTTP2ServerConnection):
    """Args: as ``HTTP2ServerConnection`` (cfg, sock, client address)."""

    def __init__(self, cfg, sock, client_addr):
        super().__init__(cfg, sock, client_addr)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # the reader processed frames
        self.in_flight = 0  # requests being served by their threads
        self.served: list[int] = []  # stream ids handed to a thread (the GOAWAY names the last)

    # ---------------------------------------------------------------- the reader's side

    def read_available(self) -> list:
        """Read what the socket holds (it is readable) and return the new requests."""
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        with self.lock:
            try:
                return self._read_and_process(data)
            finally:
                self.changed.notify_all()

    def has_work(self) -> bool:
        with self.lock:
            return bool(self.streams or self.pending_requests or self.in_flight)

    def started(self) -> None:
        with self.lock:
            self.in_flight += 1

    def finished(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Until no request is being served (or ``timeout``); whether that was reached."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
            return True

    # ---------------------------------------------------------------- the stream threads' side

    def pump(self, stream_id=None):
        """Wait for the reader to bring more of this stream's body (instead of reading)."""
        deadline = time.monotonic() + self.stream_timeout if self.stream_timeout else None
        with self.lock:
            stream = self.streams.get(stream_id)
            while (stream is not None and not stream._body_chunks and not stream.body_complete
                   and stream.state is not StreamState.CLOSED and not self._closed):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.abort_stream(stream_id, HTTP2ErrorCode.CANCEL)  # stalled: as gunicorn does
                    return
                self.changed.wait(min(remaining, 1.0) if remaining is not None else 1.0)

    def _wait_for_flow_control_window(self, stream_id, deadline=None):
        """Wait for send credit, which the reader's processing of WINDOW_UPDATE brings."""
        from gunicorn.http2.connection import _h2_exceptions

        with self.lock:
            while True:
                if self._closed:
                    return -1
                stream = self.streams.get(stream_id)
                if stream is not None and stream.state is StreamState.CLOSED:
                    return -1
                try:
                    available = self.h2_conn.local_flow_control_window(stream_id)
                except _h2_exceptions.ProtocolError:
                    return -1
                if available > 0:
                    return available
                wait = 1.0
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return 0
                    wait = min(wait, remaining)
                self.changed.wait(wait)


for _name in LOCKED:
    setattr(ConcurrentH2Connection, _name, _locked(_name))
