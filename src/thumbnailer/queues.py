"""Operator commands on the broker: upgrade legacy queues, inspect and requeue dead letters.

`thumbnailer queues upgrade` moves the messages of a classic queue (earlier versions) into a
quorum queue of the same name: into a temporary quorum queue, delete the classic one, declare
it anew, move them back. Stop the workers first (it refuses while the queue has consumers).
While the work queue is being replaced, uploads still answer 202: their publish is refused as
unroutable, the row stays NEW and the relay publishes it once the queue is back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from thumbnailer.broker import DELIVERY_COUNT_HEADER, WEBHOOK, Job, PoisonMessage, Topology
from thumbnailer.config import Settings
from thumbnailer.repo import Repo


class QueueBusy(Exception):
    """The queue still has consumers: stop the workers before upgrading it."""


@asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(settings.rabbitmq_url, timeout=10)
    async with connection:
        yield connection


def copy_of(message: AbstractIncomingMessage, **headers: Any) -> aio_pika.Message:
    kept = {k: v for k, v in message.headers.items() if k != DELIVERY_COUNT_HEADER}
    return aio_pika.Message(
        body=message.body,
        headers={**kept, **headers},
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
    )


async def move_all(channel: AbstractChannel, source: str, target: str) -> int:
    """Move every message from `source` to `target`, each acked only once confirmed."""
    queue = await channel.declare_queue(source, passive=True)
    moved = 0
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        await channel.default_exchange.publish(copy_of(message), routing_key=target)
        await message.ack()
        moved += 1
    return moved


async def upgrade(settings: Settings) -> dict[str, int]:
    """Replace each queue declared with other arguments; returns messages moved per queue."""
    topology = Topology.from_settings(settings)
    moved: dict[str, int] = {}
    async with connected(settings) as connection:
        legacy = await topology.declare(connection)
        wanted = topology.queues()
        for name in legacy:
            moved[name] = await _replace(connection, name, wanted[name])
    return moved


async def _replace(connection: AbstractConnection, name: str, arguments: dict[str, Any]) -> int:
    temporary = f"{name}.upgrading"
    async with connection.channel(publisher_confirms=True) as channel:
        old = await channel.declare_queue(name, passive=True)
        if old.declaration_result.consumer_count:
            raise QueueBusy(f"{name} has consumers: stop the workers, then upgrade")
        await channel.declare_queue(temporary, durable=True, arguments=arguments)
        count = await move_all(channel, name, temporary)
        await channel.queue_delete(name)
    # A fresh channel: RabbitMQ 3.10 crashes a channel that published to the classic queue
    # and then publishes to the quorum queue that replaced it under the same name.
    async with connection.channel(publisher_confirms=True) as channel:
        await channel.declare_queue(name, durable=True, arguments=arguments)
        await move_all(channel, temporary, name)
        await channel.queue_delete(temporary)
    return count


def describe(message: AbstractIncomingMessage) -> dict[str, Any]:
    """One dead letter as an operator reads it."""
    deaths: Any = message.headers.get("x-death") or []
    first = deaths[0] if isinstance(deaths, list) and deaths else {}
    try:
        body: Any = json.loads(message.body)
    except ValueError:
        body = message.body[:200].decode("latin-1")
    return {
        "message_id": message.message_id,
        "request_id": message.correlation_id,
        "reason": _text(first.get("reason")) if isinstance(first, dict) else None,
        "from_queue": _text(first.get("queue")) if isinstance(first, dict) else None,
        "attempt": message.headers.get("x-attempt", 0),
        "body": body,
    }


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


async def dead_letters(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """Look without taking: the messages go back to the queue when the channel closes."""
    topology = Topology.from_settings(settings)
    found: list[dict[str, Any]] = []
    async with connected(settings) as connection, connection.channel() as channel:
        queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        while len(found) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            found.append(describe(message))
    return found


async def requeue(settings: Settings, repo: Repo, only: uuid.UUID | None = None) -> int:
    """Send dead-lettered jobs round again, from attempt 0; their rows go back to PROCESSING.

    Poison (a body no worker can read) stays where it is.
    """
    topology = Topology.from_settings(settings)
    sent = 0
    async with (
        connected(settings) as connection,
        connection.channel(publisher_confirms=True) as channel,
    ):
        queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        pending = queue.declaration_result.message_count or 0
        for _ in range(pending):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                job = Job.from_message(message)
            except PoisonMessage:
                continue  # left unacked: back in the queue when the channel closes
            if only is not None and job.image_id != only:
                continue
            if job.kind != WEBHOOK:  # a webhook call never changes its image's status
                await repo.reopen(job.image_id)
            fresh = Job(job.kind, job.image_id, job.request_id, 0, job.args)
            await channel.default_exchange.publish(
                fresh.to_message(), routing_key=topology.queue_for(job.kind)
            )
            await message.ack()
            sent += 1
    return sent


async def purge(settings: Settings) -> int:
    topology = Topology.from_settings(settings)
    async with connected(settings) as connection, connection.channel() as channel:
        queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        result = await queue.purge()
        return int(result.message_count or 0)
