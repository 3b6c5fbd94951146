"""HTTPS through the guard: the connection goes to the vetted address, yet TLS is the name's.

A throw-away CA (trustme) issues a certificate for `localhost` only; the server listens on
127.0.0.1. The guard resolves `localhost`, connects to the address it checked, and still sends
the name as SNI and verifies the certificate against it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.source_server import CountingServer, body_route, serving
from tests.support import jpeg_bytes
from thumbnailer import fetch

PHOTO = jpeg_bytes(64, 48)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_names() -> list[str | None]:
    return []


@pytest.fixture(scope="module")
def https_source(ca: trustme.CA, server_names: list[str | None]) -> Iterator[CountingServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)

    def record_sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        server_names.append(name)

    context.sni_callback = record_sni
    with serving({"/photo.jpg": body_route(PHOTO)}, tls=context) as server:
        yield server


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_by_name_verifies_the_name_and_sends_it_as_sni(
    https_source: CountingServer,
    trusting: ssl.SSLContext,
    server_names: list[str | None],
    tmp_path: Path,
) -> None:
    policy = fetch.Policy.of([f"localhost:{https_source.port}"])
    url = f"https://localhost:{https_source.port}/photo.jpg"
    got = await fetch.download(url, tmp_path, 10**6, policy, 5.0, tls=trusting)
    assert got.path.read_bytes() == PHOTO
    assert server_names[-1] == "localhost"
    assert https_source.requests[-1][2]["Host"] == f"localhost:{https_source.port}"


async def test_https_to_the_address_fails_a_certificate_made_for_the_name(
    https_source: CountingServer, trusting: ssl.SSLContext, tmp_path: Path
) -> None:
    policy = fetch.Policy.of([f"127.0.0.1:{https_source.port}"])
    url = f"https://127.0.0.1:{https_source.port}/photo.jpg"
    with pytest.raises(fetch.SourceUnavailable):
        await fetch.download(url, tmp_path, 10**6, policy, 5.0, tls=trusting)
    assert list(tmp_path.iterdir()) == []


async def test_https_with_an_untrusted_certificate_fails(
    https_source: CountingServer, tmp_path: Path
) -> None:
    policy = fetch.Policy.of([f"localhost:{https_source.port}"])
    url = f"https://localhost:{https_source.port}/photo.jpg"
    with pytest.raises(fetch.SourceUnavailable):
        await fetch.download(url, tmp_path, 10**6, policy, 5.0)
