"""The thumbnail job: read the original, make every configured size in the pool, store, DONE.

Idempotent: the same keys are overwritten with the same bytes and the status write is
conditional, so a job delivered twice changes nothing the second time.
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
from thumbnailer.logging import get_logger
from thumbnailer.records import ImageRecord, Placeholder, ThumbnailEntry
from thumbnailer.store import thumbnail_key
from thumbnailer.worker.handlers.base import Context, Result
from thumbnailer.worker.outcomes import observe_stages

log = get_logger("thumbnailer.worker")
T = TypeVar("T")


class ThumbnailHandler:
    kind: ClassVar[str] = THUMBNAILS

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def run(self, job: Job) -> Result:
        row = await self.ctx.repo.get(job.image_id)
        if row is None:
            raise PoisonMessage(f"no image with id {job.image_id}")
        if row.finished:
            return Result("skipped", {"status": row.status})
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            entries, preview = await self._make(row, timings)
        except (imaging.ImagingError, OverBudget) as exc:
            await self.ctx.repo.mark_error(row.id, str(exc))
            return Result("error", {"reason": str(exc)})
        finally:
            observe_stages(timings)
        await self.ctx.repo.mark_done(row.id, entries, preview)
        return Result("done", {"duration_ms": round((time.perf_counter() - started) * 1000, 1)})

    async def give_up(self, job: Job, reason: str) -> None:
        await self.ctx.repo.mark_error(job.image_id, reason)

    async def _make(
        self, row: ImageRecord, timings: dict[str, float]
    ) -> tuple[dict[str, ThumbnailEntry], Placeholder | None]:
        started = time.perf_counter()
        source = await self.ctx.store.read(row.original_key)
        timings["read"] = time.perf_counter() - started
        need = await self._in_pool(self._estimate, source)
        async with self.ctx.memory.reserve(need):
            thumbnails = await self._in_pool(self._imaging, source, timings)
        preview = await self._in_pool(self._placeholder, thumbnails, timings)
        started = time.perf_counter()
        entries = {
            thumb.label: ThumbnailEntry(
                thumbnail_key(str(row.id), thumb.label, thumb.format),
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
            )
        finally:
            metrics.POOL_BUSY.dec()
            log.info("thumbnail_stages", ms={k: round(v * 1000, 1) for k, v in timings.items()})
