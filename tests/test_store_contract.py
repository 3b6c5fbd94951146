"""The Store contract: every implementation (LocalStore, MemoryStore, object storage later)
must pass this suite unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.memory_store import MemoryStore
from tests.support import jpeg_bytes
from thumbnailer.store import LocalStore, Store, StoreError, original_key, thumbnail_key

StoreFactory = Callable[[Path], Store]
FACTORIES: dict[str, StoreFactory] = {
    "local": lambda root: LocalStore(root / "objects"),
    "memory": lambda _root: MemoryStore(),
}
IMAGE_ID = "0123abcd-0000-4000-8000-000000000000"
JPEG = jpeg_bytes(40, 30)


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return FACTORIES[request.param](tmp_path)


async def test_put_then_read_gives_the_same_bytes(store: Store) -> None:
    key = original_key(IMAGE_ID, "JPEG")
    await store.put(key, JPEG, "image/jpeg")
    assert await store.read(key) == JPEG


async def test_put_replaces_what_was_there(store: Store) -> None:
    key = thumbnail_key(IMAGE_ID, "100x100", "JPEG")
    await store.put(key, b"old", "image/jpeg")
    await store.put(key, JPEG, "image/jpeg")
    assert await store.read(key) == JPEG


async def test_put_file_stores_and_consumes_the_file(store: Store, tmp_path: Path) -> None:
    spooled = tmp_path / "spooled-upload"
    spooled.write_bytes(JPEG)
    key = original_key(IMAGE_ID, "JPEG")
    await store.put_file(key, spooled, "image/jpeg")
    assert await store.read(key) == JPEG
    assert not spooled.exists()


async def test_put_file_of_a_missing_file_is_a_store_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await store.put_file(original_key(IMAGE_ID, "JPEG"), tmp_path / "nope", "image/jpeg")


async def test_reading_a_missing_key_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.read(original_key(IMAGE_ID, "PNG"))


async def test_delete_removes_and_a_missing_key_is_no_error(store: Store) -> None:
    key = original_key(IMAGE_ID, "JPEG")
    await store.put(key, JPEG, "image/jpeg")
    await store.delete(key)
    await store.delete(key)
    with pytest.raises(StoreError):
        await store.read(key)


async def test_concurrent_puts_of_one_key_leave_one_whole_object(store: Store) -> None:
    key = thumbnail_key(IMAGE_ID, "300x300", "JPEG")
    versions = [bytes([n]) * 200_000 for n in range(8)]
    await asyncio.gather(*(store.put(key, data, "image/jpeg") for data in versions))
    assert await store.read(key) in versions


async def test_healthy_when_writable(store: Store) -> None:
    assert await store.healthy() is True


async def test_url_and_file_server_serve_the_object_with_its_type(store: Store) -> None:
    key = thumbnail_key(IMAGE_ID, "100x100", "WEBP")
    await store.put(key, b"RIFF....WEBPVP8 ", "image/webp")
    app = Starlette(routes=[Mount("/files", app=store.file_server())])
    url = store.url(key, "http://testserver")
    assert key in url
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get(url, follow_redirects=True)
        missing = await client.get(store.url(original_key(IMAGE_ID, "GIF"), "http://testserver"))
    assert response.status_code == 200
    assert response.content == b"RIFF....WEBPVP8 "
    assert response.headers["content-type"].startswith("image/webp")
    assert missing.status_code == 404


async def test_local_store_refuses_keys_that_escape_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    (tmp_path / "secret").write_bytes(b"secret")
    for key in ("../secret", "originals/../../secret", "/etc/passwd"):
        with pytest.raises((ValueError, StoreError)):
            await store.read(key)
