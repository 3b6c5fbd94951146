"""What the lifecycle tests share: the real thumbnail worker in-process, over a store whose
reads and writes the test can hold at a barrier, and small polling helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from thumbnailer.broker import Broker, Topology
from thumbnailer.config import Settings
from thumbnailer.decode_budget import MemoryBudget
from thumbnailer.imaging_subprocess import DecodeRunner
from thumbnailer.repo import Repo
from thumbnailer.store import LocalStore
from thumbnailer.worker import Worker
from thumbnailer.worker.handlers import Context, build_handlers


class Barrier:
    """Holds whoever reaches it until the test opens it, and tells the test it was reached."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def pass_through(self) -> None:
        self.reached.set()
        await self.opened.wait()


class GatedStore(LocalStore):
    """The real LocalStore; a read of an original or a write of a thumbnail may be held."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.before_read: Barrier | None = None
        self.before_put: Barrier | None = None
        self.before_put_file: Barrier | None = None
        self.puts: list[str] = []

    async def read(self, key: str) -> bytes:
        if self.before_read is not None and key.startswith("originals/"):
            await self.before_read.pass_through()
        return await super().read(key)

    async def put_file(self, key: str, path: Path, media_type: str) -> None:
        if self.before_put_file is not None:
            await self.before_put_file.pass_through()
        await super().put_file(key, path, media_type)

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        if self.before_put is not None:
            await self.before_put.pass_through()
        self.puts.append(key)
        await super().put(key, data, media_type)


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[tuple[Worker, GatedStore]]:
    """The worker process's parts (thumbnail handler, decoder children), in this event loop."""
    tuned = settings.model_copy(update={"worker_http_port": 0})
    repo = Repo.connect(tuned.database_url, 2)
    broker = Broker(tuned.rabbitmq_url, Topology.from_settings(tuned))
    store = GatedStore(tuned.storage_path)
    pool = ThreadPoolExecutor(max_workers=tuned.worker_concurrency)
    decoder = DecodeRunner(processes=1, memory_limit=tuned.max_decode_memory, timeout=30)
    ctx = Context(tuned, repo, store, broker, pool, decoder, MemoryBudget(2**30))
    worker = Worker(tuned, broker, build_handlers(ctx), install_signal_handlers=False)
    task = asyncio.create_task(worker.run())
    try:
        yield worker, store
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await broker.close()
        pool.shutdown()
        decoder.close()
        await repo.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def wait_for_status(
    client: httpx.AsyncClient, image_id: str, status: str = "DONE", **kwargs: object
) -> dict[str, object]:
    found: dict[str, object] = {}

    async def reached() -> bool:
        found.update((await client.get(f"/images/{image_id}", **kwargs)).json())  # type: ignore[arg-type]
        return found.get("status") == status

    await eventually(reached)
    return found
