"""DELETE /images/{id}: the row and every file go, for the owner or an admin only, and a job
still running for the image ends without bringing any of it back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.auth_support import JWT_SETTINGS, SECRET, bearer, hs_token
from tests.conftest import make_settings
from tests.lifecycle_support import Barrier, eventually, running_worker, wait_for_status
from tests.support import jpeg_bytes, photo_jpeg
from thumbnailer.api.app import create_app
from thumbnailer.config import Settings
from thumbnailer.store import LocalStore, image_prefixes
from thumbnailer.worker import Worker

JPEG = jpeg_bytes(640, 480)


def upload(data: bytes = JPEG) -> dict[str, object]:
    return {"files": {"file": ("photo.jpg", data, "image/jpeg")}}


async def stored_keys(store: LocalStore, image_id: str) -> list[str]:
    """Every object of the image still in the store: its folders and its original."""
    keys = []
    for folder in image_prefixes(image_id):
        keys += [found.key async for found in store.list_objects(folder)]
    originals = [found.key async for found in store.list_objects(f"originals/{image_id[:2]}/")]
    return keys + [key for key in originals if image_id in key]


async def test_delete_removes_the_row_and_every_file(settings: Settings) -> None:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        running_worker(settings) as (_, store),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        image_id = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
        body = await wait_for_status(client, image_id)
        urls = [str(body["original_url"]), *dict(body["thumbnails"]).values()]  # type: ignore[call-overload]
        # Anything else filed under the image's folders (variants, renditions) goes too.
        extra = f"{image_prefixes(image_id)[1]}variants/small.webp"
        await store.put(extra, b"RIFF", "image/webp")
        assert len(await stored_keys(store, image_id)) == 5
        for url in urls:
            assert (await client.get(url)).status_code == 200

        deleted = await client.delete(f"/images/{image_id}")
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert await stored_keys(store, image_id) == []
        gone = await client.get(f"/images/{image_id}")
        assert (gone.status_code, gone.json()["code"]) == (404, "image_not_found")
        for url in urls:
            assert (await client.get(url)).status_code == 404, url
        again = await client.delete(f"/images/{image_id}")
        assert (again.status_code, again.json()["code"]) == (404, "image_not_found")
        listed = (await client.get("/images")).json()["items"]
        assert image_id not in [item["id"] for item in listed]


async def test_delete_of_an_unknown_or_malformed_id(client: httpx.AsyncClient) -> None:
    unknown = await client.delete(f"/images/{uuid.uuid4()}")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "image_not_found")
    malformed = await client.delete("/images/not-a-uuid")
    assert (malformed.status_code, malformed.json()["code"]) == (422, "invalid_request")


async def test_a_long_poll_wakes_to_the_delete(client: httpx.AsyncClient) -> None:
    """No worker here: the image stays PROCESSING, and the waiting GET ends with the delete."""
    image_id = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
    waiting = asyncio.create_task(client.get(f"/images/{image_id}?wait=5"))
    await asyncio.sleep(0.3)
    assert (await client.delete(f"/images/{image_id}")).status_code == 204
    answer = await asyncio.wait_for(waiting, 3)  # well before the 5 s wait
    assert answer.status_code == 404


@pytest.fixture
async def jwt_client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **JWT_SETTINGS)
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_only_the_owner_or_an_admin_may_delete(jwt_client: httpx.AsyncClient) -> None:
    alice, bob = bearer(hs_token("alice")), bearer(hs_token("bob"))
    admin = bearer(hs_token("ops", scope="images:admin"))
    first = (await jwt_client.post("/images", headers=alice, **upload())).json()["id"]  # type: ignore[arg-type]
    second = (await jwt_client.post("/images", headers=alice, **upload())).json()["id"]  # type: ignore[arg-type]

    refused = await jwt_client.delete(f"/images/{first}", headers=bob)
    assert (refused.status_code, refused.json()["code"]) == (404, "image_not_found")
    assert (await jwt_client.get(f"/images/{first}", headers=alice)).status_code == 200
    assert (await jwt_client.delete(f"/images/{first}")).status_code == 401

    assert (await jwt_client.delete(f"/images/{first}", headers=alice)).status_code == 204
    assert (await jwt_client.delete(f"/images/{second}", headers=admin)).status_code == 204
    for image_id in (first, second):
        assert (await jwt_client.get(f"/images/{image_id}", headers=alice)).status_code == 404


async def test_delete_while_the_job_reads_the_original(settings: Settings) -> None:
    """Held before any thumbnail exists: the handler sees the row gone and writes nothing."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        running_worker(settings) as (worker, store),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        store.before_read = barrier = Barrier()
        image_id = (await client.post("/images", **upload(photo_jpeg(2000, 1500)))).json()["id"]  # type: ignore[arg-type]
        await asyncio.wait_for(barrier.reached.wait(), 20)
        assert (await client.delete(f"/images/{image_id}")).status_code == 204
        barrier.opened.set()
        await eventually(lambda: _idle(worker))
        assert store.puts == []
        assert await stored_keys(store, image_id) == []
        assert (await client.get(f"/images/{image_id}")).status_code == 404


async def test_delete_while_the_job_writes_its_thumbnails(settings: Settings) -> None:
    """Held at the first write, after the handler last saw the row: it writes, its DONE finds
    no row, and it removes what it wrote."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        running_worker(settings) as (worker, store),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        store.before_put = barrier = Barrier()
        image_id = (await client.post("/images", **upload(photo_jpeg(2000, 1500)))).json()["id"]  # type: ignore[arg-type]
        await asyncio.wait_for(barrier.reached.wait(), 20)
        assert (await client.delete(f"/images/{image_id}")).status_code == 204
        assert await stored_keys(store, image_id) == []
        barrier.opened.set()
        await eventually(lambda: _idle(worker))
        assert len(store.puts) == len(settings.thumbnail_sizes)  # it did write...
        assert await stored_keys(store, image_id) == []  # ...and took it all back
        assert (await client.get(f"/images/{image_id}")).status_code == 404
        repo = app.state.services.repo
        assert await repo.get(uuid.UUID(image_id)) is None


async def _idle(worker: Worker) -> bool:
    return not worker.in_flight


async def test_delete_in_a_bucket_removes_every_object(s3_settings: Settings) -> None:
    app = create_app(s3_settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        store = app.state.services.store
        image_id = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
        folder = image_prefixes(image_id)[1]
        for name in ("100x100.jpg", "g1/300x300.jpg", "variants/small.webp"):
            await store.put(folder + name, JPEG, "image/jpeg")
        shard = f"originals/{image_id[:2]}/"
        assert [o async for o in store.list_objects(shard) if image_id in o.key]
        assert (await client.delete(f"/images/{image_id}")).status_code == 204
        assert [o async for o in store.list_objects(folder)] == []
        assert [o async for o in store.list_objects(shard) if image_id in o.key] == []
        assert (await client.get(f"/images/{image_id}")).status_code == 404
