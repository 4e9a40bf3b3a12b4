"""Response headers that tell browsers how to treat this server's pages and answers.

* ``Content-Security-Policy``: scripts, styles, images and connections from this origin only
  (the MLflow UI is one script bundle, no inline script; its CSS-in-JS needs inline styles, its
  charts ``eval``, its image previews ``data:``/``blob:`` URLs); no plugins, no framing by other sites, forms and ``<base>``
  to this origin. MLflow's notebook trace renderer, which Jupyter embeds, may be framed.
* ``Referrer-Policy: same-origin``: run and experiment URLs never leave in a Referer header.
* ``Cache-Control: no-store`` on every answer except the UI's content-hashed static files:
  answers behind the login must not stay in a shared or browser cache.
* ``Strict-Transport-Security`` only when the request came over HTTPS, which the server
  knows from ``X-Forwarded-Proto`` only when a trusted proxy (``FORWARDED_ALLOW_IPS``) sent it;
  over plain HTTP the header would pin a name that serves no HTTPS.

Headers the application set itself are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self' 'unsafe-eval'",  # the UI's charts (Plotly) compile functions at run time
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "frame-src 'self' blob: data:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
))
FRAMEABLE_PREFIX = "/static-files/lib/notebook-trace-renderer"  # MLflow's TRACE_RENDERER_ASSET_PATH
CACHEABLE_PREFIX = "/static-files/static/"  # file names carry a content hash
HSTS = "max-age=31536000"


def security_headers(path: str, https: bool) -> list[tuple[str, str]]:
    """The headers for an answer to ``path``."""
    frameable = path.startswith(FRAMEABLE_PREFIX)
    headers = [("Content-Security-Policy", CSP if frameable else CSP + "; frame-ancestors 'none'"),
               ("Referrer-Policy", "same-origin"),
               ("X-Content-Type-Options", "nosniff")]
    if not path.startswith(CACHEABLE_PREFIX):
        headers.append(("Cache-Control", "no-store"))
    if https:
        headers.append(("Strict-Transport-Security", HSTS))
    return headers


class SecurityHeaders:
    """Args:
    app: the WSGI application whose answers get the headers.
    """

    def __init__(self, app: Callable):
        self.app = app
        # the few combinations there are, made once: this runs on every request
        self._plain = security_headers("/", https=False)
        self._secure = security_headers("/", https=True)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        https = environ.get("wsgi.url_scheme") == "https"
        if path.startswith(("/static-files/", FRAMEABLE_PREFIX)):
            extra = security_headers(path, https)
        else:
            extra = self._secure if https else self._plain

        def with_headers(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers = list(headers) + [(n, v) for n, v in extra if n.lower() not in present]
            return start_response(status, headers, exc_info)

        return self.app(environ, with_headers)
