"""Benchmark only: the server's app without the Basic-auth layer, to price that layer alone.

Never deployed (the product refuses to start without users); served by the same gunicorn
settings file as the real app: ``entry-point.sh bench.noauth_wsgi:application``.
"""

from server.app import create_app
from server.config import current_settings
from server.gate.auth import BasicAuthMiddleware

application = create_app(current_settings())
if not isinstance(application, BasicAuthMiddleware):
    raise RuntimeError("expected the auth layer outermost (set MLFLOW_TRUSTED_PROXY_HOPS=0 for benchmarks)")
application = application.app
