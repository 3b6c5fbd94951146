"""The worker: consume jobs, make thumbnails in a bounded thread pool, record, then ack.

Read top to bottom: `Worker.run` connects and consumes until asked to stop; `handle` settles one
message; `process` is the work itself. Every path ends the message exactly one way:
- done or permanently failed (undecodable image) -> row DONE/ERROR committed, then ack;
- transient failure (database, storage, broker) -> republished to a retry queue with back-off,
  or, once retries are spent, row ERROR and the message dead-lettered;
- poison (malformed body, unknown image) -> dead-lettered at once, with a log line.
A crash before the ack leaves the message unacknowledged, so RabbitMQ delivers it again; the
work is idempotent (same keys, conditional status writes), so a second run changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
import uvicorn
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.exc import SQLAlchemyError

from thumbnailer import imaging, metrics, worker_http
from thumbnailer.broker import Broker, BrokerUnavailable, Job, PoisonMessage, Topology
from thumbnailer.config import Settings
from thumbnailer.logging import get_logger
from thumbnailer.repo import TERMINAL, Image, Repo, create_engine
from thumbnailer.store import LocalStore, StoreError, thumbnail_key

log = get_logger(__name__)

TRANSIENT = (SQLAlchemyError, StoreError, OSError, BrokerUnavailable)


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(
            settings.queue_name, settings.max_retries, settings.retry_base_delay
        )
        self.repo = Repo(create_engine(settings.database_url, settings.database_pool_size))
        self.store = LocalStore(settings.storage_path)
        self.broker = Broker(settings.rabbitmq_url, self.topology)
        self.pool = ThreadPoolExecutor(
            max_workers=settings.worker_concurrency, thread_name_prefix="imaging"
        )
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.consuming = False
        self.http: uvicorn.Server | None = None
        self.http_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Consume until SIGTERM/SIGINT, then drain within the grace period."""
        self._install_signal_handlers()
        self.store.ensure_root()
        self._start_http()
        metrics.POOL_SIZE.set(self.concurrency)
        self.broker.start()
        await self._wait_for_broker()
        if self.stopping.is_set():
            await self._close()
            return
        channel = await self.broker.channel()
        await channel.set_qos(prefetch_count=self.settings.worker_concurrency)
        queue = await self.topology.declare(channel)
        consumer_tag = await queue.consume(self._on_message)
        self.consuming = True
        log.info("worker_started", queue=self.topology.queue, concurrency=self.concurrency)
        await self.stopping.wait()
        self.consuming = False
        with contextlib.suppress(Exception):
            await queue.cancel(consumer_tag)
        await self._drain()
        await self._close()

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

    async def _close(self) -> None:
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            await self.http_task
        await self.broker.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.repo.engine.dispose()
        log.info("worker_stopped")

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
        """Settle one message: ack, retry later, or dead-letter."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=message.correlation_id, message_id=message.message_id
        )
        try:
            job = Job.from_message(message)
            structlog.contextvars.bind_contextvars(image_id=str(job.image_id))
            log.info("job_started", attempt=job.attempt, redelivered=message.redelivered)
            await self.process(job)
        except PoisonMessage as exc:
            log.error(
                "job_dead_lettered", reason=str(exc), body=message.body[:200].decode("latin-1")
            )
            metrics.JOBS.labels("dead_lettered").inc()
            await message.reject(requeue=False)
        except TRANSIENT as exc:
            await self._retry_or_give_up(message, exc)
        except Exception as exc:
            # A bug must not leave the message unacked for ever: retry it like an outage,
            # so it ends dead-lettered with the row in ERROR if it keeps happening.
            log.exception("job_crashed")
            await self._retry_or_give_up(message, exc)
        else:
            await message.ack()

    async def process(self, job: Job) -> None:
        row = await self.repo.get(job.image_id)
        if row is None:
            raise PoisonMessage(f"no image with id {job.image_id}")
        if row.status in TERMINAL:
            log.info("job_already_finished", status=row.status)
            metrics.JOBS.labels("skipped").inc()
            return
        started = time.perf_counter()
        try:
            thumbnails = await self._make_thumbnails(row)
        except imaging.ImagingError as exc:
            await self.repo.mark_error(row.id, str(exc))
            log.warning("job_failed", reason=str(exc))
            metrics.JOBS.labels("error").inc()
            return
        await self.repo.mark_done(row.id, thumbnails)
        metrics.JOBS.labels("done").inc()
        log.info("job_done", duration_ms=round((time.perf_counter() - started) * 1000, 1))

    async def _make_thumbnails(self, row: Image) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        # run_in_executor drops context variables; carry them so pool lines keep the job's ids.
        in_context = functools.partial(contextvars.copy_context().run, self._thumbnails_sync, row)
        return await loop.run_in_executor(self.pool, in_context)

    def _thumbnails_sync(self, row: Image) -> dict[str, Any]:
        """Runs in the pool: read, decode, resize, encode, write; no event-loop work here."""
        metrics.POOL_BUSY.inc()
        timings: dict[str, float] = {}
        try:
            return self._thumbnails_timed(row, timings)
        finally:
            metrics.POOL_BUSY.dec()
            for stage, seconds in timings.items():
                metrics.STAGE_SECONDS.labels(stage).observe(seconds)
            log.info("thumbnail_stages", ms={k: round(v * 1000, 1) for k, v in timings.items()})

    def _thumbnails_timed(self, row: Image, timings: dict[str, float]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            source = self.store.path(row.original_key).read_bytes()
        except OSError as exc:
            raise StoreError(f"could not read the original: {exc.strerror or exc}") from exc
        timings["read"] = time.perf_counter() - started
        thumbnails = imaging.make_thumbnails(
            source,
            self.settings.thumbnail_boxes,
            max_pixels=self.settings.max_image_pixels,
            jpeg_quality=self.settings.jpeg_quality,
            timings=timings,
        )
        started = time.perf_counter()
        entries: dict[str, Any] = {}
        for thumb in thumbnails:
            key = thumbnail_key(str(row.id), thumb.label, thumb.extension)
            self.store.put_sync(key, thumb.data)
            entries[thumb.label] = {
                "key": key,
                "width": thumb.width,
                "height": thumb.height,
                "media_type": thumb.media_type,
            }
        timings["write"] = time.perf_counter() - started
        return entries

    async def _retry_or_give_up(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        job = Job.from_message(message)
        reason = f"{type(exc).__name__}: {exc}"
        if job.attempt < self.topology.max_retries:
            try:
                await self.broker.publish_retry(job)
            except BrokerUnavailable:
                log.warning("retry_publish_failed", reason=reason)
                await message.nack(requeue=True)
                return
            log.warning("job_retry_scheduled", attempt=job.attempt + 1, reason=reason)
            metrics.JOBS.labels("retried").inc()
            await message.ack()
            return
        with contextlib.suppress(*TRANSIENT):
            await self.repo.mark_error(
                job.image_id, f"gave up after {job.attempt} retries: {reason}"
            )
        log.error("job_dead_lettered", reason=reason, attempts=job.attempt)
        metrics.JOBS.labels("dead_lettered").inc()
        await message.reject(requeue=False)


async def run_worker(settings: Settings) -> None:
    await Worker(settings).run()
