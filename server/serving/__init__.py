"""The HTTP side: gunicorn's worker and HTTP/2 streams, JSON logs, proxy headers, security headers, server-error bodies."""
