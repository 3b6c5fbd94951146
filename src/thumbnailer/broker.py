"""RabbitMQ: the topology both processes declare, publishing with confirms, job messages.

Topology (all on the default exchange, so routing key == queue name):
- `<queue>`: the work queue, a quorum queue (replicated across a RabbitMQ cluster) with a
  delivery limit: a message whose processing keeps killing workers comes back with a growing
  `x-delivery-count`, the worker gives it up at `MAX_DELIVERIES`, and the broker's own limit
  dead-letters it should even that fail. A rejected message dead-letters to `<queue>.dead`.
- `<queue>.retry.<ms>`: one queue per back-off step; a message waits there for its TTL and then
  dead-letters back to `<queue>`. One queue per delay, because per-message TTLs only expire at
  the head of a queue and a long delay would hold up a short one behind it.
- `<queue>.<lane>` (`webhooks`, `fetches`): a work queue of its own for a job kind that waits
  on others (a webhook receiver, a URL's source), consumed with its own prefetch so it never
  takes the slots of image jobs; its retry queues are `<queue>.<lane>.retry.<ms>`, its dead
  letters go to `<queue>.dead` like every other.
- `<queue>.dead`: where poison messages and exhausted retries rest for an operator
  (`thumbnailer dlq`), capped in length and age so it cannot fill the broker's disk.
A deployment that still has the classic queues of earlier versions keeps working on them (a
warning says so) until `thumbnailer queues upgrade` moves their messages to quorum queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from thumbnailer.config import Settings
from thumbnailer.logging import get_logger

log = get_logger(__name__)

ATTEMPT_HEADER = "x-attempt"
DELIVERY_COUNT_HEADER = "x-delivery-count"
PUBLISH_TIMEOUT = 5.0
# What a publish raises when the link is down, closing, or the broker refuses the message.
PUBLISH_FAILURES = (
    TimeoutError,
    OSError,
    RuntimeError,
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
)


class BrokerUnavailable(Exception):
    """The broker could not take the message (down, unroutable or unconfirmed)."""


class PoisonMessage(ValueError):
    """A message no retry can fix: malformed body or arguments, unknown kind."""


@dataclass(frozen=True)
class Topology:
    queue: str
    max_retries: int
    retry_base_delay: float
    max_deliveries: int = 5
    dead_letter_max_length: int = 100_000
    dead_letter_ttl: float = 14 * 86400.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            settings.queue_name,
            settings.max_retries,
            settings.retry_base_delay,
            settings.max_deliveries,
            settings.dead_letter_max_length,
            settings.dead_letter_ttl,
        )

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dead"

    def retry_delay_ms(self, attempt: int) -> int:
        """Delay before retry number `attempt` (1-based): base, 2*base, 4*base, ..."""
        return int(self.retry_base_delay * 1000 * 2 ** (attempt - 1))

    def retry_queue(self, attempt: int, kind: str | None = None) -> str:
        return f"{self.queue_for(kind)}.retry.{self.retry_delay_ms(attempt)}ms"

    def queue_for(self, kind: str | None) -> str:
        """The work queue of a job kind: its lane's, or the shared one."""
        lane = LANES.get(kind or "")
        return f"{self.queue}.{lane}" if lane else self.queue

    @property
    def lane_queues(self) -> dict[str, str]:
        """lane name -> its work queue."""
        return {lane: f"{self.queue}.{lane}" for lane in sorted(set(LANES.values()))}

    def queues(self) -> dict[str, dict[str, Any]]:
        """Every queue with its arguments, dead-letter queue first (the others point at it)."""
        queues: dict[str, dict[str, Any]] = {
            self.dead_letter_queue: {
                "x-queue-type": "quorum",
                "x-max-length": self.dead_letter_max_length,
                "x-overflow": "drop-head",
                "x-message-ttl": int(self.dead_letter_ttl * 1000),
            },
        }
        for work in [self.queue, *self.lane_queues.values()]:
            queues[work] = {
                "x-queue-type": "quorum",
                "x-delivery-limit": self.max_deliveries,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_letter_queue,
            }
            for attempt in range(1, self.max_retries + 1):
                delay = self.retry_delay_ms(attempt)
                queues[f"{work}.retry.{delay}ms"] = {
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": work,
                }
        return queues

    async def declare(self, connection: AbstractConnection) -> list[str]:
        """Declare every queue idempotently; returns the names that exist with other arguments.

        Each declaration gets its own short channel: a queue that exists with different
        arguments (a classic queue of an earlier version) closes the channel it was declared on.
        """
        legacy = []
        for name, arguments in self.queues().items():
            try:
                async with connection.channel(publisher_confirms=False) as channel:
                    await channel.declare_queue(name, durable=True, arguments=arguments)
            except aio_pika.exceptions.ChannelPreconditionFailed:
                legacy.append(name)
        if legacy:
            log.warning(
                "legacy_queues",
                queues=legacy,
                hint="run `thumbnailer queues upgrade` to move them to quorum queues",
            )
        return legacy

    async def work_queue(self, channel: AbstractChannel) -> AbstractQueue:
        """The declared work queue on `channel`, whatever arguments it was declared with."""
        return await channel.declare_queue(self.queue, passive=True)


THUMBNAILS = "thumbnails"
VARIANT = "variant"
FETCH = "fetch"  # download a URL's bytes, then ingest them like an upload
WEBHOOK = "webhook"  # POST an image's final status to a receiver
# Job kinds with a work queue of their own (kind -> lane), consumed apart from image work.
LANES = {WEBHOOK: "webhooks", FETCH: "fetches"}
JOB_VERSION = 1


@dataclass(frozen=True)
class Job:
    """One unit of work about one image; `kind` picks the worker's handler.

    The body is `{"v": 1, "kind": ..., "image_id": ..., "args": {...}}`; a body without `kind`
    (written before kinds existed) is a thumbnail job.
    """

    kind: str
    image_id: uuid.UUID
    request_id: str | None = None
    attempt: int = 0
    args: Mapping[str, Any] = field(default_factory=dict)
    # Earlier deliveries of this very message that were never settled (the worker died or
    # stopped mid-job); counted by the quorum queue, 0 on a classic one.
    delivery: int = 0

    @classmethod
    def thumbnails(cls, image_id: uuid.UUID, request_id: str | None = None) -> Job:
        return cls(THUMBNAILS, image_id, request_id)

    @classmethod
    def variant(
        cls, image_id: uuid.UUID, variant_id: uuid.UUID, request_id: str | None = None
    ) -> Job:
        return cls(VARIANT, image_id, request_id, args={"variant_id": str(variant_id)})

    def next_attempt(self) -> Job:
        return replace(self, attempt=self.attempt + 1, delivery=0)

    @property
    def message_id(self) -> str:
        # Thumbnail jobs keep the bare image id they always had: one id per image's job.
        if self.kind == THUMBNAILS:
            return str(self.image_id)
        if self.kind == VARIANT and "variant_id" in self.args:
            return f"{self.kind}:{self.args['variant_id']}"  # one image, many variants
        return f"{self.kind}:{self.image_id}"

    def to_message(self) -> aio_pika.Message:
        body: dict[str, Any] = {"v": JOB_VERSION, "kind": self.kind, "image_id": str(self.image_id)}
        if self.args:
            body["args"] = dict(self.args)
        return aio_pika.Message(
            body=json.dumps(body).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=self.message_id,
            correlation_id=self.request_id,
            headers={ATTEMPT_HEADER: self.attempt},
        )

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> Job:
        try:
            payload: Any = json.loads(message.body)
            image_id = uuid.UUID(str(payload["image_id"]))
            kind = str(payload.get("kind", THUMBNAILS))
            args = payload.get("args", {})
            if not isinstance(args, dict):
                raise TypeError("args must be an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PoisonMessage(f"malformed job body: {exc}") from exc
        attempt = message.headers.get(ATTEMPT_HEADER, 0)
        delivery = message.headers.get(DELIVERY_COUNT_HEADER, 0)
        return cls(
            kind=kind,
            image_id=image_id,
            request_id=message.correlation_id,
            attempt=attempt if isinstance(attempt, int) else 0,
            args=args,
            delivery=delivery if isinstance(delivery, int) else 0,
        )


class Broker:
    """One robust connection, kept alive in the background; publishing never blocks for long."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.url = url
        self.topology = topology
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.first_connection = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self) -> None:
        """Connect once and declare the topology; raises if the broker is unreachable."""
        connection = await aio_pika.connect_robust(self.url, timeout=5, reconnect_interval=1)
        try:
            await self.topology.declare(connection)
            channel = await connection.channel(publisher_confirms=True)
        except BaseException:
            # Cancelled by close() or failed half-way: a robust connection left open would keep
            # reconnecting in the background for ever.
            await connection.close()
            raise
        self.connection, self._channel = connection, channel

    def start(self, retry_interval: float = 2.0) -> None:
        """Connect in the background until it works, so the process can start without a broker."""
        self._connector = asyncio.create_task(self._connect_until_up(retry_interval))

    async def _connect_until_up(self, retry_interval: float) -> None:
        while not self._closing.is_set():
            try:
                await self.connect()
                self.first_connection.set()
                log.info("broker_connected")
                return
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                log.warning("broker_unreachable", error=str(exc) or type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), retry_interval)

    async def wait_connected(self) -> None:
        """Return once the first connection is up (reconnections are aio-pika's job)."""
        await self.first_connection.wait()

    async def channel(self) -> AbstractChannel:
        if self.connection is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        return await self.connection.channel()

    async def publish(self, job: Job, routing_key: str | None = None) -> None:
        if not self.is_connected or self._channel is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        try:
            await self._channel.default_exchange.publish(
                job.to_message(),
                routing_key=routing_key or self.topology.queue_for(job.kind),
                mandatory=True,
                timeout=PUBLISH_TIMEOUT,
            )
        except PUBLISH_FAILURES as exc:
            raise BrokerUnavailable(f"publish failed: {exc!r}") from exc

    async def publish_retry(self, job: Job) -> None:
        retry = job.next_attempt()
        await self.publish(retry, self.topology.retry_queue(retry.attempt, job.kind))

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in the work and dead-letter queues (a passive declare each)."""
        if not self.is_connected or self.connection is None:
            return {}
        depths = {}
        # A passive declare of a missing queue closes its channel: keep that off the publisher's.
        async with self.connection.channel() as channel:
            for name in (self.topology.queue, self.topology.dead_letter_queue):
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count or 0
        return depths

    async def close(self) -> None:
        self._closing.set()
        if self._connector is not None and not self._connector.done():
            # Let an attempt in progress finish (it times out by itself): aio-pika leaves a
            # robust connection reconnecting in the background when connect_robust is cancelled.
            await asyncio.wait({self._connector})
        if self.connection is not None:
            await self.connection.close()
