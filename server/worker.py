"""gunicorn's gthread worker, with three answers changed for clients and operators.

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

import os
import queue
import signal

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

# what the master sends a worker to stop it: gracefully (TERM) or at once (INT, QUIT)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


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
