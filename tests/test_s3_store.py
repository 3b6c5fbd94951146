"""What the S3 store alone promises beyond the contract: what it signs, headers, addressing.

Against moto's S3 server; moto does not check signatures, so `verify_presigned` recomputes them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.s3_server import MotoServer, verify_presigned
from tests.support import free_port, jpeg_bytes
from thumbnailer.config import Settings
from thumbnailer.store import open_store, original_key, thumbnail_key
from thumbnailer.store.s3 import S3Store, normalized_prefix, uses_virtual_host
from thumbnailer.store.signing import expiry as expires_at
from thumbnailer.store.signing import signing_window

IMAGE_ID = "9f3e0000-0000-4000-8000-00000000abcd"
NOW = 1_800_000_123.0
TTL = 3600


class Clock:
    """The real time plus an offset the test moves (obstore dates its signatures by the real
    time; the store computes the expiry from this clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(s3_server: MotoServer, s3_bucket: str, clock: Clock) -> AsyncIterator[S3Store]:
    opened = S3Store(
        s3_bucket,
        endpoint_url=s3_server.endpoint,
        prefix=f"unit-{uuid.uuid4().hex[:8]}/",
        signed_url_ttl=TTL,
        clock=clock,
    )
    await opened.open()
    yield opened
    await opened.close()


def test_expiry_is_rounded_up_to_the_window() -> None:
    window = signing_window(TTL)
    assert window == 900
    at = expires_at(NOW, TTL)
    assert at % window == 0
    assert NOW + TTL <= at < NOW + TTL + window
    assert expires_at(at - TTL - 1, TTL) == at  # later in the same window: the same expiry


async def test_presigned_url_signs_a_get_of_that_key_until_the_window_end(
    store: S3Store, s3_bucket: str, clock: Clock
) -> None:
    key = thumbnail_key(IMAGE_ID, "300x300", "JPEG")
    now = clock()
    url = store.url(key, "http://api.example")
    signed = verify_presigned(url, "GET")
    assert signed.method_ok
    assert signed.path == f"/{s3_bucket}/{store.prefix}{key}"
    assert signed.signed_headers == "host"
    # Whole seconds in the URL: within a second of the window's end, never short of the TTL.
    assert abs(signed.expires_at - expires_at(now, TTL)) <= 1
    assert signed.expires_at >= now + TTL - 1
    assert abs(signed.signed_at.timestamp() - now) < 2
    # The same signature does not authorise another method, nor another key.
    assert not verify_presigned(url, "PUT").method_ok
    assert not verify_presigned(url.replace("300x300", "1200x1200"), "GET").method_ok


async def test_the_same_url_within_a_window_and_a_new_one_after(
    store: S3Store, clock: Clock
) -> None:
    key = original_key(IMAGE_ID, "PNG")
    first = store.url(key, "")
    window_end = expires_at(clock(), TTL)
    clock.offset = (window_end - TTL - 1) - time.time()  # the last second of this window
    assert store.url(key, "") == first
    clock.offset += 2  # the next window
    later = store.url(key, "")
    assert later != first
    assert verify_presigned(later).method_ok


async def test_objects_carry_their_type_and_an_immutable_cache_control(store: S3Store) -> None:
    key = original_key(IMAGE_ID, "JPEG")
    data = jpeg_bytes(30, 20)
    await store.put(key, data, "image/jpeg")
    response = httpx.get(store.url(key, ""))
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert await store.stat(key) == (len(data), response.headers["etag"])


async def test_files_route_redirects_307_to_the_signed_url(store: S3Store) -> None:
    key = thumbnail_key(IMAGE_ID, "100x100", "WEBP")
    app = Starlette(routes=[Mount("/files", app=store.file_server())])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(f"/files/{key}")
        traversal = await client.get("/files/originals//x.jpg")
    assert response.status_code == 307
    assert response.headers["location"] == store.url(key, "")
    assert traversal.status_code == 404


async def test_public_base_url_gives_plain_urls(s3_server: MotoServer, s3_bucket: str) -> None:
    store = S3Store(
        s3_bucket,
        endpoint_url=s3_server.endpoint,
        prefix="imgs",
        public_base_url="https://cdn.example.com/",
    )
    key = original_key(IMAGE_ID, "GIF")
    assert store.url(key, "http://api") == f"https://cdn.example.com/imgs/{key}"


def test_addressing_style_and_prefix() -> None:
    assert uses_virtual_host("auto", "") is True  # AWS
    assert uses_virtual_host("auto", "http://minio:9000") is False
    assert uses_virtual_host("virtual", "https://r2.example") is True
    assert uses_virtual_host("path", "") is False
    assert normalized_prefix("/a/b/") == "a/b/"
    assert normalized_prefix("") == ""


def test_virtual_hosted_urls_put_the_bucket_in_the_host() -> None:
    store = S3Store("pics", endpoint_url="https://storage.example.com", addressing_style="virtual")
    url = store.url(original_key(IMAGE_ID, "JPEG"), "")
    assert url.startswith("https://pics.storage.example.com/originals/")
    assert verify_presigned(url).method_ok


def test_open_store_follows_the_backend_setting(s3_server: MotoServer) -> None:
    s3 = open_store(
        Settings(storage_backend="s3", s3_bucket="b", s3_endpoint_url=s3_server.endpoint)
    )
    assert isinstance(s3, S3Store)
    with pytest.raises(ValueError, match="S3_BUCKET"):
        Settings(storage_backend="s3")


async def test_a_bucket_out_of_reach_is_unhealthy_and_puts_fail(s3_bucket: str) -> None:
    from thumbnailer.store import StoreError

    down = S3Store(s3_bucket, endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert await down.healthy() is False
    with pytest.raises(StoreError):
        await down.put(original_key(IMAGE_ID, "JPEG"), b"x", "image/jpeg")
    with pytest.raises(StoreError):
        await down.read(original_key(IMAGE_ID, "JPEG"))


async def test_a_missing_bucket_is_unhealthy(s3_server: MotoServer) -> None:
    missing = S3Store(f"missing-{uuid.uuid4().hex[:8]}", endpoint_url=s3_server.endpoint)
    assert await missing.healthy() is False
