"""URL ingest and callbacks in-process (no worker): the relay, and refusals that need no fetch."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import httpx

from thumbnailer.broker import FETCH, Broker, Job, Topology
from thumbnailer.config import Settings
from thumbnailer.records import NewSource
from thumbnailer.relay import Relay
from thumbnailer.repo import Repo


async def test_the_relay_republishes_an_unfetched_row_as_a_fetch_job(settings: Settings) -> None:
    """A URL row whose fetch job never reached the broker must not become a thumbnail job."""
    repo = Repo.connect(settings.database_url)
    topology = Topology.from_settings(settings)
    broker = Broker(settings.rabbitmq_url, topology)
    await broker.connect()
    image_id = uuid.uuid4()
    try:
        await repo.add_source(NewSource(image_id, "http://example.com/a.jpg", "req-1"))
        await asyncio.sleep(0.3)
        relay = Relay(repo, broker, interval=0.2, processing_timeout=600)
        assert await relay.sweep() >= 1
        jobs = await _drain_jobs(settings.rabbitmq_url, topology.queue_for(FETCH))
        mine = [job for job in jobs if job.image_id == image_id]
        assert [job.kind for job in mine] == [FETCH]
        row = await repo.get(image_id)
        assert row is not None
        assert row.awaiting_fetch
    finally:
        await broker.close()
        await repo.close()


async def _drain_jobs(url: str, queue_name: str) -> list[Job]:
    jobs = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            jobs.append(Job.from_message(message))
            await message.ack()
    return jobs


async def test_a_callback_url_is_refused_while_no_webhook_secret_is_set(
    client: httpx.AsyncClient,
) -> None:
    body = {"url": "http://example.com/a.jpg", "callback_url": "http://example.com/hook"}
    response = await client.post("/images", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "webhooks_disabled"
    files = {"file": ("a.jpg", b"\xff\xd8 not even an image")}
    response = await client.post(
        "/images", files=files, data={"callback_url": body["callback_url"]}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "webhooks_disabled"


async def test_a_url_of_another_scheme_is_refused_in_process(client: httpx.AsyncClient) -> None:
    for url in ("file:///etc/passwd", "gopher://example.com/", "http://[::1]/a.jpg"):
        response = await client.post("/images", json={"url": url})
        assert response.status_code == 422, url
        assert response.json()["code"] == "url_not_allowed"
