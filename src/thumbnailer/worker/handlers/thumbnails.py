"""The thumbnail job: read the original, make every configured size in the pool, store, DONE.

Idempotent: the same keys are overwritten with the same bytes and the status write is
conditional, so a job delivered twice changes nothing the second time.

A reprocess job carries a generation: its thumbnails go under a folder of that name and replace
the row's set in one statement, and a DONE image keeps serving its old set until then.

An image may be deleted while its job runs: the handler looks for the row again before writing,
and when the status write finds no row it removes what it wrote, so no file outlives its row.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from thumbnailer import imaging, metrics, placeholder
from thumbnailer.broker import THUMBNAILS, Job, PoisonMessage
from thumbnailer.decode_budget import OverBudget
from thumbnailer.lifecycle import erase_files, generation_of
from thumbnailer.logging import get_logger
from thumbnailer.records import ImageRecord, Placeholder, Status, ThumbnailEntry
from thumbnailer.store import ObjectMissing, thumbnail_key
from thumbnailer.store.keys import thumbnail_generation_key
from thumbnailer.worker.handlers.base import Context, Result
from thumbnailer.worker.outcomes import observe_stages
from thumbnailer.worker.webhooks import Webhooks

log = get_logger("thumbnailer.worker")
T = TypeVar("T")


class ImageDeleted(Exception):
    """The row went while the thumbnails were being made: nothing is to be written."""


class ThumbnailHandler:
    kind: ClassVar[str] = THUMBNAILS

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.webhooks = Webhooks(ctx)

    async def run(self, job: Job) -> Result:
        row = await self.ctx.repo.get(job.image_id)
        if row is None:
            # Deleted (or never there): nothing to make, and nothing a retry could fix.
            return Result("skipped", {"reason": "image deleted"})
        generation = generation_of(job)
        if row.status == Status.ERROR or (row.finished and generation is None):
            # Delivered again after it finished: its webhook calls may not have gone out.
            await self.webhooks.announce(row)
            return Result("skipped", {"status": row.status})
        if row.original_key is None:
            # Its fetch job has not stored the bytes yet; the relay republishes it as a fetch.
            raise PoisonMessage(f"image {job.image_id} has no original yet")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            entries, preview = await self._make(row, generation, timings)
        except (imaging.ImagingError, OverBudget) as exc:
            if await self.ctx.repo.mark_error(row.id, str(exc)):
                await self.webhooks.announce(row)
            return Result("error", {"reason": str(exc)})
        except ImageDeleted:
            return Result("skipped", {"reason": "image deleted"})
        finally:
            observe_stages(timings)
        if generation is not None:
            await self._replace(row, entries)
        elif await self.ctx.repo.mark_done(row.id, entries, preview):
            await self.webhooks.announce(row)
        else:
            await self._clean_up_if_deleted(row, entries)
        return Result("done", {"duration_ms": round((time.perf_counter() - started) * 1000, 1)})

    async def give_up(self, job: Job, reason: str) -> None:
        if await self.ctx.repo.mark_error(job.image_id, reason):
            await self.webhooks.announce_by_id(job.image_id)

    async def _clean_up_if_deleted(
        self, row: ImageRecord, entries: dict[str, ThumbnailEntry]
    ) -> None:
        """The status write found no open row: finished by another delivery, or deleted.

        Deleted while we wrote: what we wrote has no row any more, so it goes now.
        """
        if await self.ctx.repo.exists(row.id):
            return
        removed = await erase_files(self.ctx.store, row.id, [e.key for e in entries.values()])
        log.info("job_lost_to_delete", removed=removed)

    async def _replace(self, row: ImageRecord, entries: dict[str, ThumbnailEntry]) -> None:
        """Made again: the new set replaces the old in the row, then the old files go (the
        new ones live under a folder of their own, so no URL handed out changes content)."""
        previous = await self.ctx.repo.replace_thumbnails(row.id, entries)
        if previous is None:  # deleted, or failed meanwhile: nothing points at what we wrote
            await asyncio.gather(*(self.ctx.store.delete(e.key) for e in entries.values()))
            await self._clean_up_if_deleted(row, entries)
            return
        current = {entry.key for entry in entries.values()}
        stale = [entry.key for entry in previous.values() if entry.key not in current]
        await asyncio.gather(*(self.ctx.store.delete(key) for key in stale))

    async def _make(
        self, row: ImageRecord, generation: str | None, timings: dict[str, float]
    ) -> tuple[dict[str, ThumbnailEntry], Placeholder | None]:
        started = time.perf_counter()
        assert row.original_key is not None  # checked in run()
        try:
            source = await self.ctx.store.read(row.original_key)
        except ObjectMissing:
            # Deleted while queued: nothing to make. A row that outlived its original: no retry
            # brings the bytes back, so it ends ERROR at once.
            if not await self.ctx.repo.exists(row.id):
                raise ImageDeleted(row.id) from None
            raise imaging.ImagingError("the original is no longer stored") from None
        timings["read"] = time.perf_counter() - started
        need = await self._in_pool(self._estimate, source)
        async with self.ctx.memory.reserve(need):
            thumbnails = await self._in_pool(self._imaging, source, timings)
        if not await self.ctx.repo.exists(row.id):
            raise ImageDeleted(row.id)
        preview = await self._in_pool(self._placeholder, thumbnails, timings)
        started = time.perf_counter()
        image_id = str(row.id)
        entries = {
            thumb.label: ThumbnailEntry(
                (
                    thumbnail_key(image_id, thumb.label, thumb.format)
                    if generation is None
                    else thumbnail_generation_key(image_id, generation, thumb.label, thumb.format)
                ),
                thumb.width,
                thumb.height,
                thumb.media_type,
                len(thumb.data),
            )
            for thumb in thumbnails
        }
        await asyncio.gather(
            *(
                self.ctx.store.put(entries[thumb.label].key, thumb.data, thumb.media_type)
                for thumb in thumbnails
            )
        )
        timings["write"] = time.perf_counter() - started
        return entries, preview

    def _placeholder(
        self, thumbnails: list[imaging.Thumbnail], timings: dict[str, float]
    ) -> Placeholder | None:
        """From the smallest thumbnail; the largest gives the aspect ratio with least rounding.

        A placeholder is a nicety: if it cannot be made the image is DONE without one.
        """
        started = time.perf_counter()
        smallest = min(thumbnails, key=lambda thumb: thumb.width * thumb.height)
        largest = max(thumbnails, key=lambda thumb: thumb.width * thumb.height)
        try:
            return placeholder.make_placeholder(smallest.data, largest.width / largest.height)
        except (OSError, ValueError) as exc:
            log.warning("placeholder_failed", error=str(exc))
            return None
        finally:
            timings["placeholder"] = time.perf_counter() - started

    async def _in_pool(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        # run_in_executor drops context variables; carry them so pool lines keep the job's ids.
        call = functools.partial(contextvars.copy_context().run, work, *args)
        return await loop.run_in_executor(self.ctx.pool, call)

    def _estimate(self, source: bytes) -> int:
        """Decode memory this image needs, from its header (raises for what probe refuses)."""
        settings = self.ctx.settings
        return imaging.estimate_decode_bytes(
            source,
            settings.thumbnail_boxes,
            max_pixels=settings.max_image_pixels,
            max_scans=settings.max_jpeg_scans,
        )

    def _imaging(self, source: bytes, timings: dict[str, float]) -> list[imaging.Thumbnail]:
        """Runs in the pool, the work itself in a decoder process; no event-loop work here."""
        settings = self.ctx.settings
        metrics.POOL_BUSY.inc()
        try:
            return self.ctx.decoder.run(
                source,
                settings.thumbnail_boxes,
                max_pixels=settings.max_image_pixels,
                jpeg_quality=settings.jpeg_quality,
                max_scans=settings.max_jpeg_scans,
                max_decode_bytes=settings.max_decode_memory,
                timings=timings,
                output_format=settings.thumbnail_format,
            )
        finally:
            metrics.POOL_BUSY.dec()
            log.info("thumbnail_stages", ms={k: round(v * 1000, 1) for k, v in timings.items()})
