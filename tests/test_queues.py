"""Operator commands on the real RabbitMQ: legacy classic queues upgraded in place, and the
dead-letter queue listed, requeued and purged through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import aio_pika
import pytest

from tests.support import ROOT, service_env, settings_env
from thumbnailer import queues
from thumbnailer.broker import Job, Topology
from thumbnailer.config import Settings
from thumbnailer.records import NewImage, Status
from thumbnailer.repo import Repo


async def declare_classic(settings: Settings) -> None:
    """The queues exactly as the previous release declared them: classic, no limits."""
    topology = Topology.from_settings(settings)
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(topology.dead_letter_queue, durable=True)
        await channel.declare_queue(
            topology.queue,
            durable=True,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": topology.dead_letter_queue,
            },
        )


async def publish(settings: Settings, queue: str, *jobs: Job) -> None:
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for job in jobs:
            await channel.default_exchange.publish(job.to_message(), routing_key=queue)


async def drain(settings: Settings, queue: str) -> list[Job]:
    connection = await aio_pika.connect(settings.rabbitmq_url)
    found = []
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(fail=False)) is not None:
            found.append(Job.from_message(message))
            await message.ack()
    return found


async def test_classic_queues_are_kept_then_upgraded_with_their_messages(
    settings: Settings,
) -> None:
    await declare_classic(settings)
    topology = Topology.from_settings(settings)
    waiting = [Job.thumbnails(uuid.uuid4()) for _ in range(3)]
    await publish(settings, topology.queue, *waiting)
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        legacy = await topology.declare(connection)
    assert sorted(legacy) == sorted([topology.queue, topology.dead_letter_queue])

    moved = await queues.upgrade(settings)

    assert moved == {topology.dead_letter_queue: 0, topology.queue: 3}
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        assert await topology.declare(connection) == []  # quorum arguments now match
    assert [job.image_id for job in await drain(settings, topology.queue)] == [
        job.image_id for job in waiting
    ]


def cli(settings: Settings, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "thumbnailer", *args],
        env=service_env(settings_env(settings)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.fixture
async def failed_image(settings: Settings) -> uuid.UUID:
    """A row in ERROR whose job rests in the dead-letter queue, as after spent retries."""
    repo = Repo.connect(settings.database_url, 1)
    image_id = uuid.uuid4()
    try:
        await repo.add(NewImage(image_id, "originals/x.jpg", None, "image/jpeg", 1, 1, 1, None))
        await repo.mark_error(image_id, "gave up after 5 retries")
    finally:
        await repo.close()
    topology = Topology.from_settings(settings)
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        await topology.declare(connection)
    await publish(settings, topology.dead_letter_queue, Job.thumbnails(image_id, "req-9"))
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"not json"), routing_key=topology.dead_letter_queue
        )
    return image_id


async def test_dlq_list_requeue_and_purge(settings: Settings, failed_image: uuid.UUID) -> None:
    listed = [json.loads(line) for line in cli(settings, "dlq", "list").splitlines()]
    assert [letter["body"] for letter in listed] == [
        {"v": 1, "kind": "thumbnails", "image_id": str(failed_image)},
        "not json",
    ]
    assert listed[0]["request_id"] == "req-9"
    # Listing takes nothing away.
    assert len(cli(settings, "dlq", "list").splitlines()) == 2

    assert cli(settings, "dlq", "requeue").strip() == "requeued 1 jobs"

    repo = Repo.connect(settings.database_url, 1)
    try:
        row = await repo.get(failed_image)
    finally:
        await repo.close()
    assert row is not None
    assert (row.status, row.error) == (Status.PROCESSING, None)
    topology = Topology.from_settings(settings)
    requeued = await drain(settings, topology.queue)
    assert [(job.image_id, job.attempt) for job in requeued] == [(failed_image, 0)]
    # The poison body stays for the operator, then goes with purge.
    assert cli(settings, "dlq", "purge").strip() == "purged 1 messages"
    assert cli(settings, "dlq", "list") == ""
