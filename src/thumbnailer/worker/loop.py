"""The worker: consume jobs, hand each to the handler of its kind, settle the message.

Read top to bottom: `Worker.run` consumes until asked to stop, then drains; `handle` settles one
message the way the retry policy decides:
- done or failed for good (undecodable image) -> the handler committed DONE/ERROR, then ack;
- transient failure (database, storage, broker) or a bug -> republished to a retry queue with
  back-off, or, once retries are spent, the handler gives up (row ERROR) and the message is
  dead-lettered;
- poison (malformed body, unknown kind) -> dead-lettered at once; a job whose image was
  deleted is the handler's to skip.
A crash before the ack leaves the message unacknowledged, so RabbitMQ delivers it again; the
handlers are idempotent, so a second run changes nothing.

The worker takes its parts from outside (see `thumbnailer.worker.run_worker`), and installs
signal handlers only when asked, so tests can run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping

import structlog
import uvicorn
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from thumbnailer import metrics, worker_http
from thumbnailer.broker import Broker, BrokerUnavailable, Job, PoisonMessage
from thumbnailer.config import Settings
from thumbnailer.logging import get_logger
from thumbnailer.worker import outcomes, policy
from thumbnailer.worker.handlers import Handler

log = get_logger("thumbnailer.worker")


class Worker:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        handlers: Mapping[str, Handler],
        *,
        install_signal_handlers: bool = True,
    ) -> None:
        self.settings = settings
        self.topology = broker.topology
        self.broker = broker
        self.handlers = handlers
        self.install_signal_handlers = install_signal_handlers
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.consuming = False
        self.http: uvicorn.Server | None = None
        self.http_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Consume until stopped (SIGTERM/SIGINT or `stop()`), then drain within the grace."""
        if self.install_signal_handlers:
            self._install_signal_handlers()
        self._start_http()
        metrics.POOL_SIZE.set(self.concurrency)
        self.broker.start()
        try:
            await self._consume_until_stopped()
        finally:
            await self._stop_http()

    async def _consume_until_stopped(self) -> None:
        await self._wait_for_broker()
        if self.stopping.is_set():
            return
        channel = await self.broker.channel()
        await channel.set_qos(prefetch_count=self.settings.worker_concurrency)
        queue = await self.topology.work_queue(channel)
        consumers = [(queue, await queue.consume(self._on_message))]
        consumers += await self._consume_lanes()
        self.consuming = True
        log.info("worker_started", queue=self.topology.queue, concurrency=self.concurrency)
        await self.stopping.wait()
        self.consuming = False
        for consumed, consumer_tag in consumers:
            with contextlib.suppress(Exception):
                await consumed.cancel(consumer_tag)
        await self._drain()

    async def _consume_lanes(self) -> list[tuple[AbstractQueue, str]]:
        """Each lane on a channel of its own: its prefetch never takes an image job's slot."""
        prefetch = {
            "webhooks": self.settings.webhook_concurrency,
            "fetches": self.settings.url_fetch_concurrency,
        }
        consumers = []
        for lane, name in self.topology.lane_queues.items():
            channel = await self.broker.channel()
            await channel.set_qos(prefetch_count=prefetch.get(lane, self.concurrency))
            queue = await channel.declare_queue(name, passive=True)
            consumers.append((queue, await queue.consume(self._on_message)))
        return consumers

    @property
    def concurrency(self) -> int:
        return self.settings.worker_concurrency

    def is_ready(self) -> bool:
        """Ready means taking work: consuming on a live connection, not shutting down."""
        return self.consuming and self.broker.is_connected and not self.stopping.is_set()

    def _start_http(self) -> None:
        if self.settings.worker_http_port:
            self.http, self.http_task = worker_http.start(
                self.settings.worker_http_port, self.is_ready
            )

    async def _stop_http(self) -> None:
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            await self.http_task

    async def _wait_for_broker(self) -> None:
        connected = asyncio.create_task(self.broker.wait_connected())
        stopping = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({connected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        stopping.cancel()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("worker_stopping", in_flight=len(self.in_flight))
            self.stopping.set()

    async def _drain(self) -> None:
        if not self.in_flight:
            return
        _, unfinished = await asyncio.wait(
            self.in_flight, timeout=self.settings.shutdown_grace_period
        )
        # Unacked messages of unfinished jobs go back to the queue when the channel closes.
        for task in unfinished:
            task.cancel()
        log.info("worker_drained", unfinished=len(unfinished))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        metrics.JOBS_IN_FLIGHT.inc()
        try:
            with metrics.JOB_SECONDS.time():
                await self.handle(message)
        finally:
            metrics.JOBS_IN_FLIGHT.dec()
            self.in_flight.discard(task)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Run the job's handler, then settle the message as the retry policy decides."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=message.correlation_id, message_id=message.message_id
        )
        job: Job | None = None
        handler: Handler | None = None
        error: Exception | None = None
        try:
            job = Job.from_message(message)
            structlog.contextvars.bind_contextvars(image_id=str(job.image_id), kind=job.kind)
            handler = self._handler_for(job)
            if stop := policy.interrupted_too_often(job.delivery, self.topology.max_deliveries):
                await self._dead_letter(message, job, handler, stop)
                return
            log.info(
                "job_started",
                attempt=job.attempt,
                delivery=job.delivery,
                redelivered=message.redelivered,
            )
            result = await handler.run(job)
            outcomes.record(result.outcome, **result.fields)
        except Exception as exc:
            if policy.is_bug(exc):
                log.exception("job_crashed")
            error = exc
        await self._settle(message, job, handler, error)

    def _handler_for(self, job: Job) -> Handler:
        handler = self.handlers.get(job.kind)
        if handler is None:
            raise PoisonMessage(f"no handler for job kind {job.kind!r}")
        return handler

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        job: Job | None,
        handler: Handler | None,
        error: Exception | None,
    ) -> None:
        attempt = job.attempt if job is not None else 0
        decision = policy.decide(attempt, error, self.topology.max_retries)
        if isinstance(decision, policy.Ack):
            await message.ack()
        elif isinstance(decision, policy.Retry):
            assert job is not None  # only a parsed job is retried; poison is dead-lettered
            await self._retry(message, job, decision)
        else:
            await self._dead_letter(message, job, handler, decision)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        job: Job | None,
        handler: Handler | None,
        decision: policy.DeadLetter,
    ) -> None:
        if decision.give_up and job is not None and handler is not None:
            with contextlib.suppress(*policy.TRANSIENT):
                await handler.give_up(job, decision.for_client)
        outcomes.record(
            "dead_lettered",
            reason=decision.reason,
            attempts=job.attempt if job is not None else 0,
            body=message.body[:200].decode("latin-1"),
        )
        await message.reject(requeue=False)

    async def _retry(
        self, message: AbstractIncomingMessage, job: Job, decision: policy.Retry
    ) -> None:
        try:
            await self.broker.publish_retry(job)
        except BrokerUnavailable:
            log.warning("retry_publish_failed", reason=decision.reason)
            await message.nack(requeue=True)
            return
        outcomes.record("retried", attempt=decision.attempt, reason=decision.reason)
        await message.ack()
