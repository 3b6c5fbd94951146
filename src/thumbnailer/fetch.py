"""The SSRF-guarded HTTP client: the one way this service reaches a URL a client gave it.

Used by URL ingest (download an image) and webhooks (POST a status). The guard:
- http and https only, no credentials in the URL;
- the name is resolved once per connection and every address checked; the TCP connection goes
  to a checked address (no second lookup an attacker's DNS could answer differently), while the
  Host header, TLS SNI and certificate verification keep the name;
- loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved, unspecified and
  documentation ranges are refused, in any spelling: numeric IPv4 forms (2130706433, 0x7f.1)
  are resolved by the same resolver as names, so what is checked is the address they mean, and
  IPv6 forms that embed an IPv4 address (mapped, 6to4, NAT64) are judged by that address;
- each redirect is a new request through the same guard, at most MAX_REDIRECTS of them;
- one deadline for the whole fetch, redirects and body included (a source that drips bytes
  cannot hold a worker), and the body is counted while it streams;
- no proxy from the environment: a proxy would connect where the guard never looked.
`URL_FETCH_ALLOWED_HOSTS` exempts named sources (host, or host:port) from the address check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import httpcore
import httpx
from httpx._config import create_ssl_context

MAX_REDIRECTS = 5
SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "thumbnailer/0.1 (+url-fetch)"
MB = 1024 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges the `ipaddress` flags do not all catch (CGNAT is not "private"; multicast is "global").
EXTRA_FORBIDDEN = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # carrier-grade NAT
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/3",  # multicast and the reserved 240/4 above it
        "::/96",  # IPv4-compatible IPv6 (deprecated) and ::, ::1
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo included)
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchFailed(Exception):
    """The URL could not be fetched; `reason` is fit for a person (no internals)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UrlNotAllowed(FetchFailed):
    """The guard refuses the URL: scheme, form, or an address it may not reach."""


class SourceUnavailable(FetchFailed):
    """The far end could not be reached or did not accept the call; another try may work."""


@dataclass(frozen=True)
class Downloaded:
    """A fetched body in a local file, which the caller now owns."""

    path: Path
    size: int
    filename: str | None


def discard(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.unlink()


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 spelling stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why this address may not be reached, or None if it may (a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
        inner = embedded_ipv4(address)
        if inner is not None:
            return forbidden_reason(inner)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("special-purpose", any(address in net for net in EXTRA_FORBIDDEN)),
        ("not globally routable", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    return None


def parse_address(text: str) -> IPAddress:
    """An address as getaddrinfo prints it (an IPv6 one may carry a %scope)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


@dataclass(frozen=True)
class Target:
    """Where a URL points: scheme, host (lower-case, as in the URL) and port."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(url: str | httpx.URL) -> Target:
    """Scheme, host and port of a URL the guard may consider; raises UrlNotAllowed otherwise."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlNotAllowed(f"not a valid URL: {exc}") from exc
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise UrlNotAllowed(f"only http and https URLs are fetched, not {scheme or 'this'!r}")
    if not parsed.host:
        raise UrlNotAllowed("the URL has no host")
    if parsed.userinfo:
        raise UrlNotAllowed("URLs with a user name or password are not fetched")
    return Target(scheme, parsed.host.lower().rstrip("."), parsed.port or DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class Policy:
    """Which sources are exempt from the address check: `host` or `host:port` entries."""

    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, entries: Iterable[str]) -> Policy:
        return cls(frozenset(normalise_entry(entry) for entry in entries if entry.strip()))

    def exempt(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        named = f"[{host}]" if ":" in host else host
        return named in self.allowed_hosts or f"{named}:{port}" in self.allowed_hosts


def normalise_entry(entry: str) -> str:
    entry = entry.strip().lower()
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and (not host.count(":") or host.endswith("]")):
        return f"{host.rstrip('.')}:{port}"
    return entry.rstrip(".")


async def resolve(host: str, port: int, time_limit: float | None = None) -> list[IPAddress]:
    """Every address the system resolver gives for `host` (names and numeric forms alike)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(time_limit):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError as exc:
        raise SourceUnavailable(f"looking up {host} took too long") from exc
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceUnavailable(f"the host name {host} could not be resolved") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = parse_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def vet(host: str, addresses: Sequence[IPAddress]) -> list[IPAddress]:
    """The addresses that may be connected to; raises UrlNotAllowed when none may."""
    allowed = [address for address in addresses if forbidden_reason(address) is None]
    if not allowed:
        reasons = sorted({str(forbidden_reason(address)) for address in addresses})
        raise UrlNotAllowed(f"{host} resolves to {' and '.join(reasons)}, which is not fetched")
    return allowed


async def check_url(url: str, policy: Policy, time_limit: float | None = None) -> None:
    """Refuse at once what can be refused at once: scheme, form, a forbidden address.

    A name that does not resolve now is let through: DNS may be briefly down, and the fetch
    checks again at connect time anyway.
    """
    target = parse_target(url)
    if policy.exempt(target.host, target.port):
        return
    try:
        addresses = await resolve(target.host, target.port, time_limit)
    except SourceUnavailable:
        return
    vet(target.host, addresses)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the guard has checked."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, timeout)
        if not self.policy.exempt(host, port):
            addresses = vet(host, addresses)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlNotAllowed("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport(
    policy: Policy, tls: ssl.SSLContext | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (request mapping, errors) over a pool that uses the guard.

    httpx has no public way to hand its pool a network backend, so the pool is replaced; TLS
    is still verified for the URL's host name, since httpcore passes it as SNI.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=tls or create_ssl_context(trust_env=False),
        max_connections=10,
        network_backend=GuardedBackend(policy),
    )
    return transport


@asynccontextmanager
async def guarded_client(
    policy: Policy, time_limit: float, tls: ssl.SSLContext | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """`tls`: the context certificates are verified with (default: the system's CAs)."""
    async with httpx.AsyncClient(
        transport=guarded_transport(policy, tls),
        timeout=httpx.Timeout(time_limit),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    ) as client:
        yield client


@asynccontextmanager
async def open_response(
    client: httpx.AsyncClient, request: httpx.Request
) -> AsyncIterator[httpx.Response]:
    """Send `request`, following at most MAX_REDIRECTS redirects, each one re-checked."""
    seen: set[str] = {str(request.url)}
    for _ in range(MAX_REDIRECTS + 1):
        parse_target(request.url)
        response = await _send(client, request)
        if not response.is_redirect or response.next_request is None:
            try:
                yield response
            finally:
                await response.aclose()
            return
        await response.aclose()
        request = response.next_request
        if str(request.url) in seen:
            raise FetchFailed("the source redirects in a loop")
        seen.add(str(request.url))
    raise FetchFailed(f"the source redirected more than {MAX_REDIRECTS} times")


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    try:
        return await client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise SourceUnavailable("the source did not answer in time") from exc
    except httpx.TransportError as exc:
        raise SourceUnavailable("the source could not be reached") from exc


def describe_size(size: int) -> str:
    return f"{size / MB:.0f} MB" if size >= MB else f"{size} bytes"


async def download(
    url: str,
    spool: Path,
    max_bytes: int,
    policy: Policy,
    time_limit: float,
    tls: ssl.SSLContext | None = None,
) -> Downloaded:
    """The body of `url` in a new file under `spool`; raises FetchFailed with the reason."""
    tmp = spool / secrets.token_hex(16)
    try:
        async with asyncio.timeout(time_limit):
            async with guarded_client(policy, time_limit, tls) as client:
                request = client.build_request("GET", url, headers={"Accept": "image/*"})
                async with open_response(client, request) as response:
                    _check_answer(response, max_bytes)
                    size = await _stream_body(response, tmp, max_bytes)
                    filename = _filename(response.url)
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, TimeoutError):
            raise SourceUnavailable(
                f"the source took longer than {time_limit:g} s to send it"
            ) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise SourceUnavailable("the source stopped sending") from exc
        if isinstance(exc, httpx.HTTPError):
            raise SourceUnavailable("the connection to the source broke off") from exc
        raise
    return Downloaded(path=tmp, size=size, filename=filename)


def _check_answer(response: httpx.Response, max_bytes: int) -> None:
    if response.status_code != 200:
        raise FetchFailed(f"the source answered {response.status_code}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailed(
            f"the source sends {describe_size(int(declared))}, more than the limit of "
            f"{describe_size(max_bytes)}"
        )


async def _stream_body(response: httpx.Response, tmp: Path, max_bytes: int) -> int:
    """Write the (decoded) body to `tmp`, stopping the moment it passes `max_bytes`."""
    size = 0
    async with aiofiles.open(tmp, "wb") as sink:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchFailed(
                    f"the source sent more than the limit of {describe_size(max_bytes)}"
                )
            await sink.write(chunk)
    return size


def _filename(url: httpx.URL) -> str | None:
    last = url.path.rstrip("/").rsplit("/", 1)[-1]
    return last[:255] or None


async def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: Policy,
    time_limit: float,
) -> int:
    """POST `body` to `url` through the guard; returns the 2xx status, raises otherwise.

    Redirects are not followed: a receiver that moved says so with a non-2xx answer.
    """
    try:
        async with asyncio.timeout(time_limit):
            async with guarded_client(policy, time_limit) as client:
                request = client.build_request("POST", url, content=body, headers=headers)
                response = await _send(client, request)
                await response.aclose()
    except TimeoutError as exc:
        raise SourceUnavailable(f"the receiver did not answer within {time_limit:g} s") from exc
    if not response.is_success:
        raise SourceUnavailable(f"the receiver answered {response.status_code}")
    return response.status_code
