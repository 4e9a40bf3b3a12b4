"""Take the client address from ``X-Forwarded-For`` only when a trusted proxy sent the request.

Werkzeug's ``ProxyFix`` believes the header from any peer. With ``MLFLOW_TRUSTED_PROXY_HOPS``
set, a client reaching the server directly could then name a new address on every request and
never meet the failed-login limit. Here the header is used only when the connection comes from
a peer in ``FORWARDED_ALLOW_IPS`` (the list gunicorn already uses for ``X-Forwarded-Proto``:
addresses, networks, or ``*``); any other peer is counted under its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable


def parse_trusted(value: str) -> tuple[bool, tuple]:
    """(any peer, networks) from a FORWARDED_ALLOW_IPS value."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if "*" in items:
        return True, ()
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue  # gunicorn refuses such a value before we get here
    return False, tuple(networks)


def is_trusted(peer: str | None, any_peer: bool, networks: tuple) -> bool:
    if any_peer:
        return True
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class TrustedProxyFix:
    """Args:
    app: the WSGI application.
    hops: proxies in front that append to ``X-Forwarded-For`` (Werkzeug's ``x_for``).
    forwarded_allow_ips: the peers whose forwarding headers are believed.
    """

    def __init__(self, app: Callable, hops: int, forwarded_allow_ips: str):
        from werkzeug.middleware.proxy_fix import ProxyFix

        self.app = app
        self._fixed = ProxyFix(app, x_for=hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)
        self._any, self._networks = parse_trusted(forwarded_allow_ips)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if is_trusted(environ.get("REMOTE_ADDR"), self._any, self._networks):
            return self._fixed(environ, start_response)
        return self.app(environ, start_response)
