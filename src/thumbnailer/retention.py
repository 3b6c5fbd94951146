"""The retention sweep: images past RETENTION_DAYS (or ERROR past ERROR_RETENTION_DAYS), files
no row points at, and expired idempotency keys, removed in batches.

It runs in every API process beside the relay, but one at a time across all replicas: each
sweep first takes a PostgreSQL advisory lock and skips its turn when another process holds it.
Rows go before their files, as for DELETE, so a sweep cut short leaves orphans, which the next
sweep removes once they are a day old (younger files may belong to an upload still in flight:
the original is stored a moment before its row is inserted).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from thumbnailer import metrics
from thumbnailer.config import Settings
from thumbnailer.lifecycle import erase_files
from thumbnailer.logging import get_logger
from thumbnailer.records import ImageRecord
from thumbnailer.repo import IdempotencyKeys, Repo, RepoUnavailable
from thumbnailer.store import Store, StoreError
from thumbnailer.store.keys import IMAGE_ROOTS, image_id_of

log = get_logger(__name__)

# The advisory lock's key: any constant, the same in every process ("thumbnailer retention").
LOCK_ID = 0x7468756D62726574
FIRST_SWEEP_DELAY = 60.0
BATCH = 500
ORPHAN_AGE = timedelta(days=1)
# Files deleted at once: the store sees a bounded number of requests in flight.
FILE_CONCURRENCY = 16


@dataclass
class Swept:
    images: int = 0
    files: int = 0
    orphan_files: int = 0
    idempotency_keys: int = 0

    def count(self) -> None:
        for kind, value in vars(self).items():
            if value:
                metrics.RETENTION_REMOVED.labels(kind).inc(value)


class Sweeper:
    def __init__(
        self,
        repo: Repo,
        store: Store,
        *,
        retention_days: float,
        error_retention_days: float,
        interval: float,
        orphan_age: timedelta = ORPHAN_AGE,
        batch: int = BATCH,
    ) -> None:
        self.repo, self.store, self.keys = repo, store, IdempotencyKeys(repo)
        self.retention_days, self.error_retention_days = retention_days, error_retention_days
        self.interval, self.orphan_age, self.batch = interval, orphan_age, batch
        self._files = asyncio.Semaphore(FILE_CONCURRENCY)

    @classmethod
    def from_settings(cls, repo: Repo, store: Store, settings: Settings) -> Sweeper:
        return cls(
            repo,
            store,
            retention_days=settings.retention_days,
            error_retention_days=settings.error_retention_days,
            interval=settings.retention_interval,
        )

    async def sweep(self) -> Swept | None:
        """One whole sweep; None when another process is sweeping (its turn is skipped)."""
        async with self.repo.exclusive(LOCK_ID) as ours:
            if not ours:
                return None
            swept = Swept()
            try:
                await self._expired_images(swept)
                await self._orphans(swept)
                await self._expired_keys(swept)
            finally:
                swept.count()  # what went before a failure went
        if any(vars(swept).values()):
            log.info("retention_swept", **vars(swept))
        return swept

    async def run(self) -> None:
        # Not at once: a process that starts and stops within a minute (a test, a crash loop)
        # would only ever be interrupted mid-sweep; every replica sweeps within a minute anyway.
        await asyncio.sleep(min(self.interval, FIRST_SWEEP_DELAY))
        while True:
            try:
                await self.sweep()
            except (RepoUnavailable, StoreError) as exc:
                log.warning("retention_sweep_failed", error=str(exc))
            except Exception:  # a bug must not end the sweeps for the life of the process
                log.exception("retention_sweep_crashed")
            await asyncio.sleep(self.interval)

    async def _expired_images(self, swept: Swept) -> None:
        while True:
            rows = await self.repo.delete_expired(
                self.retention_days, self.error_retention_days, self.batch
            )
            swept.images += len(rows)
            swept.files += sum(await asyncio.gather(*(self._erase(row) for row in rows)))
            if len(rows) < self.batch:
                return

    async def _erase(self, row: ImageRecord) -> int:
        async with self._files:
            keys = [row.original_key] if row.original_key else []
            return await erase_files(self.store, row.id, keys)

    async def _orphans(self, swept: Swept) -> None:
        """Files a day old or more whose image has no row, a batch of images at a time."""
        cutoff = datetime.now(UTC) - self.orphan_age
        for root in IMAGE_ROOTS:
            pending: dict[uuid.UUID, list[str]] = defaultdict(list)
            async for found in self.store.list_objects(root):
                image_id = image_id_of(found.key)
                if image_id is None or found.modified >= cutoff:
                    continue
                pending[image_id].append(found.key)
                if len(pending) >= self.batch:
                    swept.orphan_files += await self._erase_orphans(pending)
                    pending = defaultdict(list)
            swept.orphan_files += await self._erase_orphans(pending)

    async def _erase_orphans(self, candidates: dict[uuid.UUID, list[str]]) -> int:
        orphaned = await self.repo.without_rows(candidates)

        async def erase(image_id: uuid.UUID) -> int:
            async with self._files:
                return await erase_files(self.store, image_id, candidates[image_id])

        return sum(await asyncio.gather(*(erase(image_id) for image_id in orphaned)))

    async def _expired_keys(self, swept: Swept) -> None:
        while True:
            purged = await self.keys.purge_expired(self.batch)
            swept.idempotency_keys += purged
            if purged < self.batch:
                return
