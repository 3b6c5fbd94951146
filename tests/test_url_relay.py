"""The relay and rows made from a URL: an unfetched row goes back out as a fetch job."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika

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
        jobs = await _drain_jobs(settings.rabbitmq_url, topology.queue)
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
