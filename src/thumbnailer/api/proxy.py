"""Forwarded headers, believed only from the proxies in FORWARDED_ALLOW_IPS.

From a trusted peer, X-Forwarded-For gives the client address (the rightmost hop that is not a
trusted proxy itself), X-Forwarded-Proto the scheme and X-Forwarded-Host the host. From anyone
else these headers are ignored, and in AUTH_MODE=jwt so is the Host header when URLs are built
(see deps._url_base): a client cannot choose where the URLs we hand out point.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.types import ASGIApp, Receive, Scope, Send

FORWARDED_HOST = "thumbnailer.forwarded_host"  # scope key: the host came from a trusted proxy
_HOST_SHAPE = re.compile(
    r"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, entries: list[str]) -> None:
        self.everyone = "*" in entries
        self.networks: list[Network] = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        ]

    def trusts(self, host: str | None) -> bool:
        if host is None:
            return False
        if self.everyone:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _last(value: str) -> str:
    return value.split(",")[-1].strip()


class ForwardedHeadersMiddleware:
    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app, self.trusted = app, trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if client and self.trusted.trusts(client[0]):
                self._apply(scope)
        await self.app(scope, receive, send)

    def _apply(self, scope: Scope) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]},{text}" if key in headers else text
        if "x-forwarded-for" in headers:
            hops = [hop.strip() for hop in headers["x-forwarded-for"].split(",") if hop.strip()]
            client = next((hop for hop in reversed(hops) if not self.trusted.trusts(hop)), None)
            client = client or (hops[0] if hops else None)
            if client:
                scope["client"] = (client, 0)
        proto = _last(headers.get("x-forwarded-proto", "")).lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        host = _last(headers.get("x-forwarded-host", ""))
        if host and _HOST_SHAPE.match(host):
            scope["headers"] = [(n, v) for n, v in scope["headers"] if n != b"host"] + [
                (b"host", host.encode("latin-1"))
            ]
            scope[FORWARDED_HOST] = True
