"""Which requests the dashboard answers, and who made them.

* The Host header must name the dashboard (Starlette's ``TrustedHostMiddleware``):
  otherwise a page on another site could rebind its own name to the dashboard's
  address (DNS rebinding) and read pages, or act, as a local visitor would.
* ``X-Forwarded-For``, ``-Proto`` and ``-Host`` are anyone's to write: they are
  believed only from the reverse proxies named in ``dashboard_trusted_proxies``
  (:class:`ForwardedHeaders`), so that a client cannot choose the address the
  login throttle counts, nor the scheme and host the CSRF check compares.

This is done inside the dashboard rather than by the server (uvicorn's
``--proxy-headers``), because the dashboard is also mounted in applications
served by other servers, or by a uvicorn trusting proxies for other reasons.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

#: Host names every dashboard answers for: the names of this machine's loopback.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def default_hosts(bound: str | None = None) -> list[str]:
    """The loopback names, and the address the dashboard's server is bound to.

    Mounted in another application, the dashboard does not know the names it is
    reached by: it answers for the loopback names only, until the application's
    names are listed in ``dashboard_allowed_hosts`` (or ``allowed_hosts=``).
    """
    hosts = list(LOOPBACK_HOSTS)
    if bound:
        host = bound.strip().lower()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, as a Host header writes it
        if host not in hosts:
            hosts.append(host)
    return hosts


def _address(text: str) -> Address | None:
    """An address as proxies write it in X-Forwarded-For: bare, ``v4:port`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class ForwardedHeaders:
    """ASGI middleware: a request from a trusted proxy takes its client address,
    scheme and host from the proxy's ``X-Forwarded-*`` headers.

    Each proxy appends the address it received the request from, so the client is
    the rightmost address that is not itself a trusted proxy; anything left of it
    was written by the client and is ignored.
    """

    def __init__(self, app: ASGIApp, *, trusted: Sequence[str]) -> None:
        self.app = app
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in trusted]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] == "http" and peer and self._trusted(_address(peer[0])):
            self._apply(scope)
        await self.app(scope, receive, send)

    def _trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def _apply(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        client = self._client(headers.getlist("x-forwarded-for"))
        if client is not None:
            scope["client"] = (str(client), 0)
        proto = headers.get("x-forwarded-proto", "").strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
        host = headers.get("x-forwarded-host", "").strip()
        if host and "," not in host:
            # The host the browser asked for: the Host check and the CSRF check see it.
            kept = [(k, v) for k, v in scope["headers"] if k != b"host"]
            scope["headers"] = [*kept, (b"host", host.encode("latin-1"))]

    def _client(self, values: list[str]) -> Address | None:
        chain = [part for value in values for part in value.split(",") if part.strip()]
        for entry in reversed(chain):
            address = _address(entry)
            if not self._trusted(address):
                return address  # None when the nearest untrusted entry is garbage
        return None
