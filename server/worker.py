"""gunicorn's gthread worker, answering an unsupported Transfer-Encoding with 400, not 501.

gunicorn refuses a request whose ``Transfer-Encoding`` it does not implement (``xchunked``,
``gzip``, ...) with ``501 Not Implemented``. That is the client's malformed framing, a classic
request-smuggling probe, and it is answered like every other framing error: ``400``. No
request from a client gets a 5xx that the server did not earn.
"""

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker


class ThreadWorker(GThreadWorker):
    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding")
        return super().handle_error(req, client, addr, exc)
