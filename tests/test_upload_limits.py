"""Upload limits on the real API process: every body byte counted, parts capped, slow and
concurrent uploads bounded, a full disk refused, and no spool file left behind by any of them."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Services, make_settings
from tests.support import ARTIFACTS, jpeg_bytes, multipart_body
from thumbnailer.api.app import create_app

pytestmark = pytest.mark.e2e
JPEG = jpeg_bytes(64, 48)
LIMIT = 100_000


@pytest.fixture(scope="module")
def limited(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("limits") / "storage",
        max_file_size=LIMIT,
        max_form_parts=4,
        upload_timeout=1.0,
        max_concurrent_uploads=2,
    )
    services = Services(settings, ARTIFACTS / "upload-limits")
    services.start()
    yield services
    services.stop()


def spool_files(services: Services) -> list[str]:
    return sorted(os.listdir(services.settings.spool_path))


def assert_spool_empty(services: Services) -> None:
    deadline = time.monotonic() + 2
    while spool_files(services) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spool_files(services) == []


def raw_upload(port: int, head: bytes, rest: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    if rest:
        sock.sendall(rest)
    return sock


def response_of(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def slow_upload(services: Services) -> socket.socket:
    """Headers and half the body, then nothing: the client has stalled."""
    body, content_type = multipart_body(JPEG, "s.jpg")
    head = (
        f"POST /images HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return raw_upload(services.api_port, head, body[: len(body) // 2])


def test_a_stalled_upload_gets_408_and_leaves_no_spool_file(limited: Services) -> None:
    sock = slow_upload(limited)
    started = time.monotonic()
    status, body = response_of(sock)
    assert status == 408
    assert body["code"] == "upload_timeout"
    assert time.monotonic() - started >= 0.9
    assert_spool_empty(limited)


def test_uploads_past_the_concurrency_cap_get_503_with_retry_after(limited: Services) -> None:
    stalled = [slow_upload(limited) for _ in range(2)]
    time.sleep(0.3)  # both are being received now
    with httpx.Client(base_url=limited.base_url, timeout=10) as client:
        refused = client.post("/images", files={"file": ("a.jpg", JPEG)})
        assert refused.status_code == 503
        assert refused.json()["code"] == "too_many_uploads"
        assert refused.headers["retry-after"]
        assert [response_of(sock)[0] for sock in stalled] == [408, 408]
        assert client.post("/images", files={"file": ("a.jpg", JPEG)}).status_code == 202
    assert_spool_empty(limited)


def test_too_many_parts_is_422(limited: Services) -> None:
    fields = {f"f{n}": "x" for n in range(5)}
    with httpx.Client(base_url=limited.base_url, timeout=10) as client:
        response = client.post("/images", data=fields, files={"file": ("a.jpg", JPEG)})
    assert response.status_code == 422
    assert response.json()["code"] == "too_many_parts"
    assert_spool_empty(limited)


def chunked(port: int, body: bytes, content_type: str) -> tuple[int, dict[str, object]]:
    head = (
        f"POST /images HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(body[i : i + 8192]):x}\r\n".encode() + body[i : i + 8192] + b"\r\n"
        for i in range(0, len(body), 8192)
    )
    return response_of(raw_upload(port, head, chunks + b"0\r\n\r\n"))


def test_bytes_outside_the_file_part_count_too(limited: Services) -> None:
    body, content_type = multipart_body(JPEG, "a.jpg", note="x" * 2 * LIMIT)
    status, answer = chunked(limited.api_port, body, content_type)
    assert (status, answer["code"]) == (413, "file_too_large")
    assert_spool_empty(limited)


def test_an_epilogue_after_the_last_part_counts_too(limited: Services) -> None:
    body, content_type = multipart_body(JPEG, "a.jpg")
    status, answer = chunked(limited.api_port, body + b"e" * 2 * LIMIT, content_type)
    assert (status, answer["code"]) == (413, "file_too_large")
    assert_spool_empty(limited)


async def test_a_store_below_its_reserve_answers_507(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "storage", min_free_space=2**62)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/images", files={"file": ("a.jpg", JPEG)})
    assert response.status_code == 507
    assert response.json()["code"] == "insufficient_storage"
    assert os.listdir(settings.spool_path) == []


async def test_start_sweeps_spool_files_older_than_any_upload(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "storage", upload_timeout=60.0)
    settings.spool_path.mkdir(parents=True)
    stale, fresh = settings.spool_path / "stale", settings.spool_path / "fresh"
    stale.write_bytes(b"left by a process that died")
    fresh.write_bytes(b"another process's upload in progress")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pass
    assert sorted(os.listdir(settings.spool_path)) == ["fresh"]
