"""Variants through the API: in-process (the app over ASGI, a worker built from the real
parts) and end to end through the real API and worker processes."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from PIL import Image

from tests.auth_support import JWT_SETTINGS, SECRET, bearer, hs_token, running
from tests.conftest import Services, delete_queues, make_settings
from tests.support import jpeg_bytes, photo_jpeg
from thumbnailer.broker import Broker, Topology
from thumbnailer.config import Settings
from thumbnailer.decode_budget import MemoryBudget
from thumbnailer.imaging_subprocess import DecodeRunner
from thumbnailer.records import NewImage
from thumbnailer.relay import Relay
from thumbnailer.repo import Repo
from thumbnailer.store import open_store
from thumbnailer.worker import Worker
from thumbnailer.worker.handlers import Context, build_handlers

MB = 2**20


@asynccontextmanager
async def worker_for(settings: Settings) -> AsyncIterator[Worker]:
    """An in-process worker with the real handlers and parts, as run_worker wires them."""
    tuned = settings.model_copy(update={"worker_http_port": 0})
    repo = Repo.connect(tuned.database_url, 2)
    broker = Broker(tuned.rabbitmq_url, Topology.from_settings(tuned))
    pool = ThreadPoolExecutor(max_workers=2)
    decoder = DecodeRunner(processes=1, memory_limit=tuned.max_decode_memory, timeout=30)
    store = open_store(tuned)
    await store.open()
    ctx = Context(tuned, repo, store, broker, pool, decoder, MemoryBudget(640 * MB))
    worker = Worker(tuned, broker, build_handlers(ctx), install_signal_handlers=False)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await broker.close()
        pool.shutdown()
        decoder.close()
        await repo.close()
        await store.close()


async def upload(client: httpx.AsyncClient, data: bytes, **headers: str) -> str:
    response = await client.post("/images", files={"file": ("p.jpg", data)}, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def finished(client: httpx.AsyncClient, path: str, **headers: str) -> dict[str, Any]:
    for _ in range(40):
        response = await client.get(path, params={"wait": 5}, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in ("DONE", "ERROR"):
            return body
    raise AssertionError(f"{path} never finished")


async def queued(settings: Settings) -> list[dict[str, Any]]:
    """Every message waiting in the work queue (taken off it)."""
    connection = await aio_pika.connect(settings.rabbitmq_url)
    bodies = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(settings.queue_name, passive=True)
        while (message := await queue.get(fail=False, timeout=2)) is not None:
            bodies.append(json.loads(message.body))
            await message.ack()
    return bodies


async def test_the_same_spec_twice_is_one_variant_and_one_job(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    image_id = await upload(client, jpeg_bytes(640, 480))
    spec = {"width": 200, "height": 200, "fit": "cover", "format": "webp"}
    first = await client.post(f"/images/{image_id}/variants", json=spec)
    assert first.status_code == 202, first.text
    again = await client.post(f"/images/{image_id}/variants", json={**spec, "quality": 80})
    assert again.status_code == 202
    variant_id = first.json()["id"]
    assert again.json()["id"] == variant_id
    assert first.headers["location"] == f"/images/{image_id}/variants/{variant_id}"
    assert first.json()["spec"] == {
        "width": 200, "height": 200, "fit": "cover", "grayscale": False,
        "format": "webp", "quality": 80,
    }  # fmt: skip
    jobs = await queued(settings)
    kinds = sorted((job["kind"], job.get("args", {}).get("variant_id")) for job in jobs)
    assert kinds == [("thumbnails", None), ("variant", variant_id)]
    listed = (await client.get(f"/images/{image_id}")).json()["variants"]
    assert [v["id"] for v in listed] == [variant_id]
    assert listed[0]["status"] == "PROCESSING"
    assert listed[0]["url"] is None


async def test_a_variant_of_a_missing_image_is_404(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.post(f"/images/{missing}/variants", json={"width": 10})
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"
    image_id = await upload(client, jpeg_bytes(64, 64))
    response = await client.get(f"/images/{image_id}/variants/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["code"] == "variant_not_found"


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        ({"width": 5000}, "invalid_variant", "at most 4096 pixels on its longest side"),
        ({"width": 100, "fit": "cover"}, "invalid_variant", "needs both a width and a height"),
        ({}, "invalid_variant", "width, a height or both"),
        ({"width": 10, "format": "bmp"}, "invalid_request", "format"),
        ({"width": 10, "quality": 0}, "invalid_request", "quality"),
        ({"width": 10, "sharpen": 1}, "invalid_request", "sharpen"),
    ],
)
async def test_impossible_variants_are_422_with_the_reason(
    client: httpx.AsyncClient, body: dict[str, Any], code: str, says: str
) -> None:
    image_id = await upload(client, jpeg_bytes(64, 64))
    response = await client.post(f"/images/{image_id}/variants", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert says in response.json()["detail"]


async def test_variants_per_image_are_limited(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url, tmp_path / "storage", max_variants_per_image=2, max_variant_size=500
    )
    try:
        async with running(settings) as (_, client):
            image_id = await upload(client, jpeg_bytes(64, 64))
            for width in (10, 20):
                response = await client.post(f"/images/{image_id}/variants", json={"width": width})
                assert response.status_code == 202
            again = await client.post(f"/images/{image_id}/variants", json={"width": 10})
            assert again.status_code == 202  # the same one: not a new place taken
            third = await client.post(f"/images/{image_id}/variants", json={"width": 30})
            assert third.status_code == 422
            assert third.json() == {
                "detail": "this image already has the most variants allowed (2)",
                "code": "too_many_variants",
            }
            over = await client.post(f"/images/{image_id}/variants", json={"height": 501})
            assert over.status_code == 422
            assert "at most 500 pixels" in over.json()["detail"]
    finally:
        await delete_queues(settings)


async def test_another_owners_image_has_no_variants_for_you(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **JWT_SETTINGS)
    alice, bob = bearer(hs_token("alice")), bearer(hs_token("bob"))
    try:
        async with running(settings) as (_, client):
            image_id = await upload(client, jpeg_bytes(64, 64), **alice)
            made = await client.post(
                f"/images/{image_id}/variants", json={"width": 32}, headers=alice
            )
            assert made.status_code == 202
            variant_path = made.headers["location"]
            foreign = await client.post(
                f"/images/{image_id}/variants", json={"width": 16}, headers=bob
            )
            assert foreign.status_code == 404
            assert foreign.json()["code"] == "image_not_found"
            assert (await client.get(variant_path, headers=bob)).status_code == 404
            assert (await client.get(variant_path, headers=alice)).status_code == 200
            anonymous = await client.post(f"/images/{image_id}/variants", json={"width": 16})
            assert anonymous.status_code == 401
    finally:
        await delete_queues(settings)


async def test_a_failing_variant_ends_its_own_error_and_leaves_the_image_done(
    database_url: str, tmp_path: Path
) -> None:
    # Enlarging a small image to 3000x3000 needs more than the 64 MB a decode may use here,
    # while its thumbnails need a few MB.
    settings = make_settings(database_url, tmp_path / "storage", max_decode_memory=64 * MB)
    try:
        async with running(settings) as (_, client), worker_for(settings):
            image_id = await upload(client, photo_jpeg(300, 200))
            good = await client.post(
                f"/images/{image_id}/variants", json={"width": 150, "format": "avif"}
            )
            bad = await client.post(
                f"/images/{image_id}/variants",
                json={"width": 3000, "height": 3000, "fit": "fill"},
            )
            failed = await finished(client, bad.headers["location"])
            assert failed["status"] == "ERROR"
            assert "would need about" in failed["error"]
            assert "the limit is 64 MB" in failed["error"]
            assert failed["url"] is None
            made = await finished(client, good.headers["location"])
            assert made["status"] == "DONE", made
            image = await finished(client, f"/images/{image_id}")
            assert image["status"] == "DONE"
            assert image["error"] is None
            assert {v["status"] for v in image["variants"]} == {"DONE", "ERROR"}
            served = await client.get(made["url"])
            assert served.status_code == 200
            assert served.headers["content-type"] == "image/avif"
            assert Image.open(io.BytesIO(served.content)).size == (150, 100)
            # Asking again for a finished variant: 200, the same row, no new job.
            again = await client.post(
                f"/images/{image_id}/variants", json={"width": 150, "format": "avif"}
            )
            assert again.status_code == 200
            assert again.json()["id"] == made["id"]
    finally:
        await delete_queues(settings)


@pytest.mark.e2e
def test_variants_end_to_end(services: Services) -> None:
    with httpx.Client(base_url=services.base_url, timeout=30) as http:
        response = http.post("/images", files={"file": ("p.jpg", photo_jpeg(1600, 1200))})
        assert response.status_code == 202
        image_id = response.json()["id"]
        asked = http.post(
            f"/images/{image_id}/variants",
            json={"width": 320, "height": 320, "fit": "cover", "grayscale": True, "format": "webp"},
        )
        assert asked.status_code == 202, asked.text
        location = asked.headers["location"]
        for _ in range(30):
            variant = http.get(location, params={"wait": 5}).json()
            if variant["status"] in ("DONE", "ERROR"):
                break
        assert variant["status"] == "DONE", variant
        assert (variant["width"], variant["height"], variant["media_type"]) == (
            320, 320, "image/webp",
        )  # fmt: skip
        served = http.get(variant["url"])
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/webp"
        assert served.headers.get("etag")
        image = Image.open(io.BytesIO(served.content))
        assert image.format == "WEBP"
        assert image.size == (320, 320)
        red, green, blue = image.convert("RGB").getpixel((160, 160))  # type: ignore[misc]
        assert max(red, green, blue) - min(red, green, blue) <= 3
        listed = http.get(f"/images/{image_id}").json()
        assert [v["id"] for v in listed["variants"]] == [variant["id"]]
        assert listed["variants"][0]["url"] == variant["url"]
        again = http.post(
            f"/images/{image_id}/variants",
            json={"width": 320, "height": 320, "fit": "cover", "grayscale": True, "format": "webp"},
        )
        assert again.status_code == 200
        assert again.json()["id"] == variant["id"]


async def test_an_upload_with_transformations_makes_its_variant(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with worker_for(settings):
        response = await client.post(
            "/images",
            files={"file": ("p.jpg", photo_jpeg(800, 600))},
            data={"transformations": "resize:200x100,fit:cover,grayscale,format:png"},
        )
        assert response.status_code == 202, response.text
        body = response.json()
        variant = body["variant"]
        assert variant["location"] == f"/images/{body['id']}/variants/{variant['id']}"
        made = await finished(client, variant["location"])
        assert made["status"] == "DONE", made
        assert made["spec"] == {
            "width": 200, "height": 100, "fit": "cover", "grayscale": True,
            "format": "png", "quality": None,
        }  # fmt: skip
        image = Image.open(io.BytesIO((await client.get(made["url"])).content))
        assert (image.format, image.mode, image.size) == ("PNG", "L", (200, 100))
        # The same ask by its own route finds the same variant.
        again = await client.post(
            f"/images/{body['id']}/variants",
            json={"width": 200, "height": 100, "fit": "cover", "grayscale": True, "format": "png"},
        )
        assert again.status_code == 200
        assert again.json()["id"] == variant["id"]


async def test_upload_fields_width_height_preserve_ratio(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/images",
        files={"file": ("p.jpg", jpeg_bytes(400, 300))},
        data={"width": "120", "height": "120", "preserve_ratio": "false"},
    )
    assert response.status_code == 202, response.text
    variant = (await client.get(response.json()["variant"]["location"])).json()
    assert variant["spec"]["fit"] == "fill"
    assert (variant["spec"]["width"], variant["spec"]["height"]) == (120, 120)
    plain = await client.post("/images", files={"file": ("p.jpg", jpeg_bytes(40, 30))})
    assert "variant" not in plain.json()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"transformations": "resize:800x600,blur:3"}, "'blur:3': unknown"),
        ({"transformations": "resize:800by600"}, "'resize:800by600'"),
        ({"transformations": "quality:200,resize:10x10"}, "'quality:200'"),
        ({"transformations": "resize:9000x10"}, "at most 4096 pixels"),
        ({"width": "ten"}, "width must be a positive whole number"),
        ({"width": "10", "preserve_ratio": "maybe"}, "preserve_ratio must be true or false"),
        ({"transformations": "x" * 2000}, "longer than 1024 bytes"),
    ],
)
async def test_malformed_transformations_are_422_and_nothing_is_stored(
    client: httpx.AsyncClient, settings: Settings, fields: dict[str, str], says: str
) -> None:
    response = await client.post(
        "/images", files={"file": ("p.jpg", jpeg_bytes(64, 64))}, data=fields
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_transformations"
    assert says in response.json()["detail"]
    assert not list(settings.spool_path.iterdir())
    originals = settings.storage_path / "originals"
    assert not originals.exists() or not any(originals.rglob("*.*"))


async def test_a_variant_whose_original_is_gone_ends_error_at_once(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with worker_for(settings):
        image_id = await upload(client, jpeg_bytes(120, 80))
        image = await finished(client, f"/images/{image_id}")
        assert image["status"] == "DONE"
        for original in (settings.storage_path / "originals").rglob(f"{image_id}.*"):
            original.unlink()
        asked = await client.post(f"/images/{image_id}/variants", json={"width": 60})
        variant = await finished(client, asked.headers["location"])
        assert variant["status"] == "ERROR"
        assert variant["error"] == "the image's original is no longer stored"
        assert (await client.get(f"/images/{image_id}")).json()["status"] == "DONE"


async def test_the_relay_publishes_a_variant_whose_job_never_left(settings: Settings) -> None:
    """A variant row left NEW (its publish failed) is published by the relay, as images are."""
    repo = Repo.connect(settings.database_url, 2)
    broker = Broker(settings.rabbitmq_url, Topology.from_settings(settings))
    await broker.connect()
    try:
        image_id, variant_id = uuid.uuid4(), uuid.uuid4()
        await repo.add(NewImage(image_id, "originals/x.jpg", None, "image/jpeg", 10, 10, 100, None))
        await repo.mark_processing(image_id)  # the image's own job is not the point here
        await repo.mark_done(image_id, {})
        created, new = await repo.variants.create(variant_id, image_id, {"width": 5}, "req", 5)
        assert new
        assert created.status == "NEW"
        relay = Relay(repo, broker, interval=0.2, processing_timeout=600)
        await asyncio.sleep(0.5)
        assert await relay.sweep() == 1
        variant = await repo.variants.get(variant_id)
        assert variant is not None and variant.status == "PROCESSING"  # noqa: PT018
        jobs = await queued(settings)
        assert [(j["kind"], j["image_id"], j["args"]) for j in jobs] == [
            ("variant", str(image_id), {"variant_id": str(variant_id)})
        ]
        assert await relay.sweep() == 0  # leased: not again before the timeout
    finally:
        await broker.close()
        await repo.close()


async def test_the_image_etag_changes_with_its_variants(client: httpx.AsyncClient) -> None:
    image_id = await upload(client, jpeg_bytes(64, 64))
    before = await client.get(f"/images/{image_id}")
    tag = before.headers["etag"]
    assert (
        await client.get(f"/images/{image_id}", headers={"If-None-Match": tag})
    ).status_code == 304
    await client.post(f"/images/{image_id}/variants", json={"width": 10})
    after = await client.get(f"/images/{image_id}", headers={"If-None-Match": tag})
    assert after.status_code == 200
    assert after.headers["etag"] != tag
    assert len(after.json()["variants"]) == 1
