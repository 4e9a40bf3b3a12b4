"""gunicorn's gthread worker, with the answers below changed for clients and operators.

* A request's head is read by the event loop, not by a thread. gunicorn hands a new
  connection to a thread, which waits up to 5 s for a first byte and then blocks until the head
  is complete: 20 clients sending half a header and then nothing held every thread, and 40
  silent ones queued real requests behind their 5 s waits. Here the loop reads what a
  connection has sent, without blocking, until the head is complete (or the HTTP/2 preface has
  come); only then does a thread take it, with those bytes. A head must be complete within
  ``HEAD_TIMEOUT`` seconds of the connection (or of a kept-alive connection's next first byte),
  else the connection is closed. Silent and slow connections cost a socket, never a thread.
* An idle HTTP/2 connection waits in the event loop too. gunicorn keeps a thread on an HTTP/2
  connection for as long as it is open; with no stream open and nothing to read, the
  connection is handed back to the loop (as a deferred connection) and its next bytes bring it
  back to a thread.

* An unsupported ``Transfer-Encoding`` gets 400, not 501. gunicorn refuses a request whose
  ``Transfer-Encoding`` it does not implement (``xchunked``, ``gzip``, ...) with
  ``501 Not Implemented``. That is the client's malformed framing, a classic request-smuggling
  probe, and it is answered like every other framing error: ``400``. No request from a client
  gets a 5xx that the server did not earn.
* On shutdown, new connections are refused at once. gunicorn's worker stops accepting when
  SIGTERM comes but keeps its copy of the listening socket open until its last request has
  finished (up to ``graceful_timeout``). Meanwhile the kernel still completes new connections
  into the backlog, where they hang unanswered and are then reset. Closing the worker's copy
  when the drain starts makes a client's connect fail straight away, so its retry goes
  elsewhere without waiting; requests already in flight are not touched.
* A request the application refuses without reading its body (401, 413, 429) closes the
  connection: the application sets ``environ["server.close_connection"]`` and the worker marks
  gunicorn's response ``must_close`` (gunicorn 27.0.1's ``Response``, reached as the
  ``start_response`` bound method's object). Otherwise gunicorn would drain the unread body to
  keep the connection, and a malformed one then drew a second, unsolicited 400.
* A stop signal that reaches a worker while it boots is not lost. Until the worker installs
  its own handlers, a forked process still has the master's, which only queue the signal in
  the process's copy of the master's queue. The worker then served on, and the master waited
  out ``graceful_timeout`` and killed it: a SIGTERM soon after start took 8 s, not 1 s
  (measured: 1 start in 12 on a loaded machine). ``post_fork`` hands the worker that copy
  (``inherited_signals``); the stop signals found in it are raised again once the worker's
  handlers are in place.
"""

import contextlib
import errno
import os
import queue
import selectors
import signal
import ssl
import time
from functools import partial

from gunicorn import http
from gunicorn.http.errors import InvalidH2CPreface, InvalidHeader, UnsupportedTransferCoding
from gunicorn.http2 import negotiation
from gunicorn.http2.errors import HTTP2ConnectionError, HTTP2ProtocolError
from gunicorn.workers.gthread import _DEFER, TConn
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

from server.serving.h2_streams import ConcurrentH2Connection

# what the master sends a worker to stop it: gracefully (TERM) or at once (INT, QUIT)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

HEAD_TIMEOUT = 10.0  # seconds a client has to send a whole request head
HEAD_LIMIT = 64 * 1024  # a longer head goes to the parser, which refuses it (431/414)
READ_SIZE = 16384
WAIT, READY = "wait", "ready"


def head_state(received: bytes, h2c_allowed: bool) -> str:
    """Whether ``received`` holds a whole request head (or the HTTP/2 preface) yet."""
    preface = negotiation.H2C_PREFACE
    if h2c_allowed and received.startswith(preface):
        return READY
    if h2c_allowed and len(received) < len(preface) and preface.startswith(received):
        return WAIT
    if b"\r\n\r\n" in received or b"\n\n" in received or len(received) >= HEAD_LIMIT:
        return READY
    return WAIT


def _readable(sock, timeout: float) -> bool:
    selector = selectors.DefaultSelector()
    try:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout=timeout))
    except (OSError, ValueError):
        return False
    finally:
        selector.close()


class HeadConn(TConn):
    """A connection whose first bytes the event loop has already read (``head``).

    ``init`` is gunicorn 27.0.1's ``TConn.init`` for cleartext sockets, starting from those
    bytes instead of reading the socket: the HTTP/2 preface check, then either the HTTP/2
    connection (fed the bytes; a request they already complete is kept for the first
    ``receive_data``) or the HTTP/1 parser (the bytes unread into it).
    """

    def __init__(self, cfg, sock, client, server):
        super().__init__(cfg, sock, client, server)
        self.head = b""
        self.head_deadline = None
        self.head_started = False

    def init(self):
        if self.initialized or not self.head:
            return super().init()
        self.initialized = True
        self.sock.setblocking(True)
        received, self.head = self.head, b""
        if negotiation.prior_knowledge_allowed(self.cfg, self.client):
            if received.startswith(negotiation.H2C_PREFACE):
                self.is_http2 = True
                self.parser = ConcurrentH2Connection(self.cfg, self.sock, self.client)
                self.parser.initiate_connection()
                self.parser.pending_requests.extend(self.parser.receive_data(received))
                return
            if negotiation.mismatch_is_error(self.cfg):
                raise InvalidH2CPreface(received)
        self.parser = http.get_parser(self.cfg, self.sock, self.client)
        self.parser.unreader.unread(received)


def closing_when_asked(app):
    """``app``, with the connection closed after any answer that set server.close_connection."""

    def wsgi(environ, start_response):
        result = app(environ, start_response)
        if environ.get("server.close_connection"):
            response = getattr(start_response, "__self__", None)
            if response is not None and hasattr(response, "must_close"):
                response.must_close = True
        return result

    return wsgi


class ThreadWorker(GThreadWorker):
    inherited_signals = None  # the master's signal queue as this process inherited it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.awaiting_heads: set[HeadConn] = set()
        # HTTP/2 requests run in a pool of their own: connection readers sit in gunicorn's pool,
        # and requests queued behind busy readers there would wait for them forever.
        self.stream_pool = None

    def init_process(self):
        from concurrent.futures import ThreadPoolExecutor

        self.stream_pool = ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="h2-stream")
        super().init_process()

    # ------------------------------------------------------------ request heads in the loop

    def accept(self, listener):
        if self.cfg.is_ssl:
            return super().accept(listener)
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return None
        self.nr_conns += 1
        conn = HeadConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self._await_head(conn, time.monotonic() + HEAD_TIMEOUT)
        return None

    def _await_head(self, conn: HeadConn, deadline: float) -> None:
        conn.head_deadline = deadline
        conn.head_started = False
        conn.sock.setblocking(False)
        self.awaiting_heads.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._head_readable, conn))

    def _head_readable(self, conn: HeadConn, sock) -> None:
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed by the client
            self._drop_head(conn)
            return
        conn.head += data
        if not conn.head_started:  # a kept-alive connection's next request starts its clock now
            conn.head_started = True
            conn.head_deadline = min(conn.head_deadline, time.monotonic() + HEAD_TIMEOUT)
        h2c = not conn.initialized and negotiation.prior_knowledge_allowed(self.cfg, conn.client)
        if head_state(conn.head, h2c) is WAIT:
            return
        self.poller.unregister(sock)
        self.awaiting_heads.discard(conn)
        if conn.initialized:  # a kept-alive HTTP/1 connection: its parser takes the bytes
            conn.parser.unreader.unread(conn.head)
            conn.head = b""
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop_head(self, conn: HeadConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        self.awaiting_heads.discard(conn)
        self.nr_conns -= 1
        conn.close()

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request: its head is read by the loop as well."""
        if not isinstance(conn, HeadConn) or conn.is_http2:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn, time.monotonic() + self.cfg.keepalive)
        self._head_readable(conn, conn.sock)
        return None

    def murder_pending(self):
        now = time.monotonic()
        for conn in self.pending_conns:  # idle HTTP/2 connections about to close: GOAWAY first
            if conn.timeout <= now and conn.is_http2:
                try:
                    conn.sock.setblocking(True)
                    conn.parser.close()
                except (OSError, HTTP2ConnectionError):  # closed next either way
                    pass
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.awaiting_heads if c.head_deadline <= now or not self.alive]:
            self._drop_head(conn)  # too slow, or the worker is stopping: no request is in flight

    # ------------------------------------------------------------ idle HTTP/2 connections

    def handle_http2(self, conn):
        """Read the connection here and serve each request in a thread of its own
        (``server/serving/h2_streams.py``); an idle connection goes back to the loop."""
        h2_conn = conn.parser
        if not isinstance(h2_conn, ConcurrentH2Connection):  # an h2c Upgrade: gunicorn's parser
            return self._handle_http2_in_turn(conn)
        with self._http2_connection_errors():
            while not h2_conn.is_closed:
                if not self.alive:
                    # requests already taken finish, then GOAWAY names the last one
                    h2_conn.wait_idle(self.cfg.graceful_timeout)
                    h2_conn.close(last_stream_id=max(h2_conn.served, default=0))
                    break
                with h2_conn.lock:
                    queued = h2_conn.receive_data() if h2_conn.pending_requests else []
                for req in queued:
                    self._dispatch_stream(req, conn, h2_conn)
                if queued:
                    continue
                if not h2_conn.has_work() and not _readable(conn.sock, 0):
                    conn.data_ready = False
                    return _DEFER
                if _readable(conn.sock, 0.5):
                    for req in h2_conn.read_available():
                        self._dispatch_stream(req, conn, h2_conn)
        # the socket closes when this returns: not under a request still answering
        h2_conn.wait_idle(self.cfg.graceful_timeout)
        return False

    def _dispatch_stream(self, req, conn, h2_conn) -> None:
        h2_conn.started()
        h2_conn.served.append(req.stream.stream_id)

        def serve():
            try:
                self._serve_http2_stream(req, conn, h2_conn)
            finally:
                h2_conn.finished()

        self.stream_pool.submit(serve)

    def _handle_http2_in_turn(self, conn):
        """gunicorn 27.0.1's ``handle_http2``, handing an idle connection back to the loop."""
        h2_conn = conn.parser
        last_served = 0
        with self._http2_connection_errors():
            while not h2_conn.is_closed and self.alive:
                if self._h2_idle(conn, h2_conn):
                    conn.data_ready = False
                    return _DEFER
                requests = h2_conn.receive_data()
                for req in requests:
                    self._serve_http2_stream(req, conn, h2_conn)
                    last_served = req.stream.stream_id
                if not self.alive:
                    for req in h2_conn.receive_data(b""):
                        self._serve_http2_stream(req, conn, h2_conn)
                        last_served = req.stream.stream_id
                    h2_conn.close(last_stream_id=last_served)
                    break
        return False

    @contextlib.contextmanager
    def _http2_connection_errors(self):
        """How an HTTP/2 connection's end is logged (gunicorn 27.0.1's ``handle_http2``)."""
        try:
            yield
        except http.errors.NoMoreData:
            self.log.debug("HTTP/2 connection closed by client")
        except (HTTP2ConnectionError, HTTP2ProtocolError) as e:
            self.log.debug("HTTP/2 connection closed: %s", e)
        except ssl.SSLError as e:
            self.log.debug("HTTP/2 SSL error: %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("HTTP/2 socket error")
        except Exception:
            self.log.exception("HTTP/2 connection error")

    @staticmethod
    def _h2_idle(conn, h2_conn) -> bool:  # for _handle_http2_in_turn
        """No stream open, nothing queued, and nothing on the socket to read right now."""
        if h2_conn.streams or h2_conn.pending_requests or h2_conn._deferred_events:
            return False
        return not _readable(conn.sock, 0)

    # ------------------------------------------------------------ answers

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = closing_when_asked(self.wsgi)

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding")
        return super().handle_error(req, client, addr, exc)

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        # also called with False under load (worker_connections reached): close only on shutdown
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def init_signals(self):
        super().init_signals()
        for sig in self._stop_signals_caught_while_booting():
            os.kill(os.getpid(), sig)

    def _stop_signals_caught_while_booting(self) -> list[int]:
        caught = []
        if self.inherited_signals is None:  # not started through our post_fork
            return caught
        while True:
            try:
                sig = self.inherited_signals.get_nowait()
            except queue.Empty:
                return caught
            if sig in STOP_SIGNALS and sig not in caught:
                caught.append(sig)
