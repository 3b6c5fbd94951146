"""The Store contract: every implementation (LocalStore, MemoryStore, object storage later)
must pass this suite unchanged."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.memory_store import MemoryStore
from tests.s3_server import MotoServer
from tests.support import jpeg_bytes
from thumbnailer.store import (
    LocalStore,
    ObjectMissing,
    Store,
    StoreError,
    image_prefixes,
    original_key,
    thumbnail_key,
)
from thumbnailer.store.keys import thumbnail_generation_key
from thumbnailer.store.s3 import S3Store

# (scratch directory, the test's request: for fixtures a backend needs) -> a store to test
StoreFactory = Callable[[Path, pytest.FixtureRequest], Store]


def s3_factory(_root: Path, request: pytest.FixtureRequest) -> Store:
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    # A small multipart threshold, so the contract's big file goes up in parts.
    return S3Store(
        bucket,
        endpoint_url=server.endpoint,
        prefix=f"contract-{uuid.uuid4().hex[:8]}",
        multipart_threshold=5 * 1024 * 1024,
    )


FACTORIES: dict[str, StoreFactory] = {
    "local": lambda root, _request: LocalStore(root / "objects"),
    "memory": lambda _root, _request: MemoryStore(),
    "s3": s3_factory,
}
IMAGE_ID = "0123abcd-0000-4000-8000-000000000000"
JPEG = jpeg_bytes(40, 30)


@pytest.fixture(params=sorted(FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = FACTORIES[request.param](tmp_path, request)
    await opened.open()
    yield opened
    await opened.close()


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


async def test_put_file_of_a_large_file_stores_every_byte(store: Store, tmp_path: Path) -> None:
    """Over the S3 store's multipart threshold: the object goes up in parts, whole."""
    spooled = tmp_path / "large-upload"
    data = JPEG + bytes(range(256)) * (11 * 1024 * 4)  # ~11 MiB
    spooled.write_bytes(data)
    key = original_key(IMAGE_ID, "JPEG")
    await store.put_file(key, spooled, "image/jpeg")
    assert await store.read(key) == data
    assert not spooled.exists()


async def test_put_file_of_a_missing_file_is_a_store_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await store.put_file(original_key(IMAGE_ID, "JPEG"), tmp_path / "nope", "image/jpeg")


async def test_reading_a_missing_key_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.read(original_key(IMAGE_ID, "PNG"))
    with pytest.raises(ObjectMissing):  # and says so, for callers that know it should exist
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
    # The app answers for testserver; a URL elsewhere (a bucket) is fetched over the network.
    mounts = {"http://testserver": httpx.ASGITransport(app=app)}
    async with httpx.AsyncClient(mounts=mounts, base_url="http://testserver") as client:
        response = await client.get(url, follow_redirects=True)
        # /files/{key} answers for every store, directly or through a redirect.
        served = await client.get(f"/files/{key}", follow_redirects=True)
        missing = await client.get(store.url(original_key(IMAGE_ID, "GIF"), "http://testserver"))
    for answer in (response, served):
        assert answer.status_code == 200
        assert answer.content == b"RIFF....WEBPVP8 "
        assert answer.headers["content-type"].startswith("image/webp")
    assert missing.status_code in (
        403,
        404,
    )  # S3 answers 403 to a GET of a missing key without List


async def test_file_server_answers_only_for_our_keys(store: Store) -> None:
    app = Starlette(routes=[Mount("/files", app=store.file_server())])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path in ("/files/secrets/x.jpg", "/files/originals/ab/x.exe", "/files/.tmp/abc"):
            response = await client.get(path, follow_redirects=True)
            assert response.status_code == 404, path


async def test_local_store_refuses_keys_that_escape_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    (tmp_path / "secret").write_bytes(b"secret")
    for key in ("../secret", "originals/../../secret", "/etc/passwd"):
        with pytest.raises((ValueError, StoreError)):
            await store.read(key)


async def test_delete_prefix_removes_the_folder_and_nothing_beside_it(store: Store) -> None:
    other = "0123abcd-0000-4000-8000-000000000001"  # same shard, another image
    mine = [thumbnail_key(IMAGE_ID, label, "JPEG") for label in ("100x100", "300x300")]
    mine.append(thumbnail_generation_key(IMAGE_ID, "g1", "100x100", "JPEG"))
    kept = [thumbnail_key(other, "100x100", "JPEG"), original_key(IMAGE_ID, "JPEG")]
    for key in mine + kept:
        await store.put(key, JPEG, "image/jpeg")
    folder = image_prefixes(IMAGE_ID)[1]
    assert await store.delete_prefix(folder) == len(mine)
    for key in mine:
        with pytest.raises(StoreError):
            await store.read(key)
    for key in kept:
        assert await store.read(key) == JPEG
    assert await store.delete_prefix(folder) == 0  # nothing left is no error


async def test_list_objects_names_every_key_under_the_folder_with_its_age(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    keys = {thumbnail_key(IMAGE_ID, "100x100", "JPEG"), thumbnail_key(IMAGE_ID, "1x1", "PNG")}
    for key in keys:
        await store.put(key, JPEG, "image/jpeg")
    await store.put(original_key(IMAGE_ID, "JPEG"), JPEG, "image/jpeg")
    listed = [found async for found in store.list_objects("thumbnails/")]
    assert {found.key for found in listed} == keys
    for found in listed:
        assert before < found.modified < datetime.now(UTC) + timedelta(minutes=5)
    assert [found async for found in store.list_objects("variants/")] == []


@pytest.mark.parametrize("prefix", ["thumbnails", "/thumbnails/", "thumbnails/../"])
async def test_prefixes_must_be_relative_folders(store: Store, prefix: str) -> None:
    with pytest.raises(ValueError, match="relative folder"):
        await store.delete_prefix(prefix)
    with pytest.raises(ValueError, match="relative folder"):
        [found async for found in store.list_objects(prefix)]


async def test_local_store_sweeps_scratch_files_a_killed_writer_left(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    scratch = tmp_path / ".tmp"
    stale, fresh = scratch / "4242-stale", scratch / "4242-fresh"
    stale.write_bytes(b"half a thumbnail")
    fresh.write_bytes(b"a write in progress elsewhere")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    await store.open()
    assert sorted(p.name for p in scratch.iterdir()) == ["4242-fresh"]
