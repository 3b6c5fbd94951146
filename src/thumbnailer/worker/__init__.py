"""The worker process: its composition root. `Worker` (loop.py) does the consuming."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from thumbnailer.broker import Broker, Topology
from thumbnailer.config import Settings
from thumbnailer.decode_budget import MemoryBudget
from thumbnailer.fetch import FetchFailed, Policy, check_url
from thumbnailer.imaging_subprocess import DecodeRunner
from thumbnailer.logging import get_logger
from thumbnailer.repo import Repo
from thumbnailer.store import open_store
from thumbnailer.worker.handlers import Context, build_handlers
from thumbnailer.worker.loop import Worker

log = get_logger("thumbnailer.worker")


async def check_webhook_url(settings: Settings) -> None:
    """Say at start, not at the first DONE, that the guard will refuse WEBHOOK_URL."""
    if not settings.webhook_url:
        return
    try:
        await check_url(settings.webhook_url, Policy.of(settings.url_fetch_allowed_hosts), 5.0)
    except FetchFailed as exc:
        log.error("webhook_url_not_allowed", reason=exc.reason)


async def run_worker(settings: Settings) -> None:
    await check_webhook_url(settings)
    topology = Topology.from_settings(settings)
    repo = Repo.connect(settings.database_url, settings.database_pool_size)
    broker = Broker(settings.rabbitmq_url, topology)
    pool = ThreadPoolExecutor(max_workers=settings.worker_concurrency, thread_name_prefix="imaging")
    decoder = DecodeRunner(
        processes=settings.worker_concurrency,
        memory_limit=settings.max_decode_memory,
        timeout=settings.job_timeout,
    )
    memory = MemoryBudget(settings.worker_memory_budget)
    store = open_store(settings)
    await store.open()
    ctx = Context(settings, repo, store, broker, pool, decoder, memory)
    worker = Worker(settings, broker, build_handlers(ctx))
    try:
        await worker.run()
    finally:
        await broker.close()
        pool.shutdown(wait=False, cancel_futures=True)
        decoder.close()
        await repo.close()
        await store.close()
        log.info("worker_stopped")


__all__ = ["Worker", "run_worker"]
