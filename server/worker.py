"""gunicorn's gthread worker, with two answers changed for clients.

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
"""

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker


class ThreadWorker(GThreadWorker):
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
