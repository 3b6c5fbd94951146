"""Handler dispatch and settlement in-process, against the real RabbitMQ: a worker built from
parts, with test handlers registered beside (or instead of) the thumbnail handler."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aio_pika
import pytest

from thumbnailer.broker import Broker, Job, Topology
from thumbnailer.config import Settings
from thumbnailer.worker import Worker
from thumbnailer.worker.handlers import Result


@dataclass
class Recorder:
    """A handler that records what it ran and fails its first `failures` runs."""

    kind: str
    failures: int = 0
    seen: list[Job] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    ran: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, job: Job) -> Result:
        self.seen.append(job)
        if len(self.seen) <= self.failures:
            raise OSError("flaky disk")
        self.ran.set()
        return Result("done")

    async def give_up(self, job: Job, reason: str) -> None:
        self.given_up.append(reason)
        self.ran.set()


WorkerFactory = Callable[..., Broker]


@pytest.fixture
async def worker_with(settings: Settings) -> AsyncIterator[WorkerFactory]:
    """Start an in-process worker with the given handlers; returns its broker for publishing."""
    started: list[tuple[Worker, asyncio.Task[None], Broker]] = []

    def start(*handlers: Recorder, max_retries: int = 2) -> Broker:
        tuned = settings.model_copy(update={"worker_http_port": 0, "max_retries": max_retries})
        topology = Topology.from_settings(tuned)
        broker = Broker(tuned.rabbitmq_url, topology)
        worker = Worker(tuned, broker, {h.kind: h for h in handlers}, install_signal_handlers=False)
        started.append((worker, asyncio.create_task(worker.run()), broker))
        return broker

    yield start
    for worker, task, broker in started:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await broker.close()


async def ready(broker: Broker) -> None:
    await asyncio.wait_for(broker.wait_connected(), 10)


async def dead_letters(settings: Settings) -> list[dict[str, object]]:
    connection = await aio_pika.connect(settings.rabbitmq_url)
    bodies = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{settings.queue_name}.dead", passive=True)
        while (message := await queue.get(fail=False)) is not None:
            bodies.append(json.loads(message.body))
            await message.ack()
    return bodies


async def first_dead_letters(settings: Settings, timeout: float = 10.0) -> list[dict[str, object]]:
    """Poll the dead-letter queue until something arrives (or `timeout` passes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (letters := await dead_letters(settings)):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    return letters


async def test_a_job_goes_to_the_handler_of_its_kind(
    worker_with: WorkerFactory, settings: Settings
) -> None:
    echo, other = Recorder("echo"), Recorder("other")
    broker = worker_with(echo, other)
    await ready(broker)
    job = Job("echo", uuid.uuid4(), "req-1", args={"n": 1})
    await broker.publish(job)
    await asyncio.wait_for(echo.ran.wait(), 10)
    assert [(j.kind, j.image_id, j.request_id, dict(j.args)) for j in echo.seen] == [
        ("echo", job.image_id, "req-1", {"n": 1})
    ]
    assert other.seen == []


async def test_a_body_without_kind_is_a_thumbnail_job(
    worker_with: WorkerFactory, settings: Settings
) -> None:
    thumbnails = Recorder("thumbnails")
    broker = worker_with(thumbnails)
    await ready(broker)
    image_id = uuid.uuid4()
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        body = json.dumps({"image_id": str(image_id)}).encode()
        await channel.default_exchange.publish(
            aio_pika.Message(body), routing_key=settings.queue_name
        )
    await asyncio.wait_for(thumbnails.ran.wait(), 10)
    assert thumbnails.seen[0].image_id == image_id


async def test_an_unknown_kind_is_dead_lettered(
    worker_with: WorkerFactory, settings: Settings
) -> None:
    echo = Recorder("echo")
    broker = worker_with(echo)
    await ready(broker)
    image_id = uuid.uuid4()
    await broker.publish(Job("no-such-kind", image_id))
    letters = await first_dead_letters(settings)
    assert letters == [{"v": 1, "kind": "no-such-kind", "image_id": str(image_id)}]
    assert echo.seen == []


async def test_a_transient_failure_is_retried_then_done(
    worker_with: WorkerFactory, settings: Settings
) -> None:
    flaky = Recorder("echo", failures=1)
    broker = worker_with(flaky, max_retries=2)
    await ready(broker)
    await broker.publish(Job("echo", uuid.uuid4()))
    await asyncio.wait_for(flaky.ran.wait(), 10)
    assert [job.attempt for job in flaky.seen] == [0, 1]
    assert flaky.given_up == []


async def test_spent_retries_give_up_and_dead_letter(
    worker_with: WorkerFactory, settings: Settings
) -> None:
    broken = Recorder("echo", failures=10)
    broker = worker_with(broken, max_retries=1)
    await ready(broker)
    image_id = uuid.uuid4()
    await broker.publish(Job("echo", image_id))
    await asyncio.wait_for(broken.ran.wait(), 10)
    assert [job.attempt for job in broken.seen] == [0, 1]
    assert broken.given_up == [
        "processing failed 2 times (a file or network operation failed); gave up"
    ]
    letters = await first_dead_letters(settings)
    assert [letter["image_id"] for letter in letters] == [str(image_id)]
