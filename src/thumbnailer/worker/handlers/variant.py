"""The variant job: one image made to a spec from the stored original, stored, DONE.

Made the way thumbnails are (the decoder process, the memory budget, draft decoding,
orientation, sRGB, no metadata), but its outcome is its own: a variant that cannot be made
ends its own row in ERROR and never touches the image's status. Idempotent like thumbnails:
the key is derived from the ids, the status writes are conditional.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from thumbnailer import imaging, metrics
from thumbnailer.broker import VARIANT, Job, PoisonMessage
from thumbnailer.decode_budget import OverBudget
from thumbnailer.logging import get_logger
from thumbnailer.records import VariantRecord
from thumbnailer.store import ObjectMissing, variant_key
from thumbnailer.variant_spec import SpecError, VariantSpec
from thumbnailer.worker.handlers.base import Context, Result
from thumbnailer.worker.outcomes import observe_stages

log = get_logger("thumbnailer.worker")
T = TypeVar("T")


class OriginalNotYetStored(Exception):
    """A transient state: the variant's image is waiting for its URL fetch."""


class VariantHandler:
    kind: ClassVar[str] = VARIANT

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def run(self, job: Job) -> Result:
        variant = await self._variant(job)
        if variant.finished:
            return Result("skipped", {"status": variant.status})
        image = await self.ctx.repo.get(variant.image_id)
        if image is None:
            raise PoisonMessage(f"no image with id {variant.image_id}")
        if image.original_key is None:
            if image.finished:
                return await self._failed(variant, "the image has no original (its fetch failed)")
            # An image ingested by URL, not fetched yet: the retry policy asks again later.
            raise OriginalNotYetStored(f"image {image.id} is still being fetched")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            spec = VariantSpec.from_json(variant.spec)
            made = await self._make(image.original_key, spec, timings)
        except (imaging.ImagingError, OverBudget, SpecError) as exc:
            return await self._failed(variant, str(exc))
        except ObjectMissing:
            # The image's row outlived its original (deleted, or lost): no retry brings it back.
            return await self._failed(variant, "the image's original is no longer stored")
        finally:
            observe_stages(timings)
        key = variant_key(str(image.id), str(variant.id), made.format)
        started_write = time.perf_counter()
        await self.ctx.store.put(key, made.data, made.media_type)
        timings["write"] = time.perf_counter() - started_write
        await self.ctx.repo.variants.mark_done(
            variant.id, key, made.width, made.height, made.media_type
        )
        return Result(
            "done",
            {
                "variant_id": str(variant.id),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    async def _failed(self, variant: VariantRecord, reason: str) -> Result:
        await self.ctx.repo.variants.mark_error(variant.id, reason)
        return Result("error", {"reason": reason, "variant_id": str(variant.id)})

    async def give_up(self, job: Job, reason: str) -> None:
        variant_id = _variant_id(job)
        await self.ctx.repo.variants.mark_error(variant_id, reason)

    async def _variant(self, job: Job) -> VariantRecord:
        variant = await self.ctx.repo.variants.get(_variant_id(job))
        if variant is None:
            raise PoisonMessage(f"no variant with id {job.args.get('variant_id')}")
        return variant

    async def _make(
        self, original_key: str, spec: VariantSpec, timings: dict[str, float]
    ) -> imaging.Thumbnail:
        started = time.perf_counter()
        source = await self.ctx.store.read(original_key)
        timings["read"] = time.perf_counter() - started
        need = await self._in_pool(self._estimate, source, spec)
        async with self.ctx.memory.reserve(need):
            return await self._in_pool(self._imaging, source, spec, timings)

    async def _in_pool(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, work, *args)
        return await loop.run_in_executor(self.ctx.pool, call)

    def _estimate(self, source: bytes, spec: VariantSpec) -> int:
        settings = self.ctx.settings
        info = imaging.probe(source, settings.max_image_pixels, max_scans=settings.max_jpeg_scans)
        return imaging.estimate_variant_bytes(info, spec, settings.max_variant_size)[1]

    def _imaging(
        self, source: bytes, spec: VariantSpec, timings: dict[str, float]
    ) -> imaging.Thumbnail:
        settings = self.ctx.settings
        metrics.POOL_BUSY.inc()
        try:
            return self.ctx.decoder.run_variant(
                source,
                spec,
                max_pixels=settings.max_image_pixels,
                max_side=settings.max_variant_size,
                max_scans=settings.max_jpeg_scans,
                max_decode_bytes=settings.max_decode_memory,
                timings=timings,
            )
        finally:
            metrics.POOL_BUSY.dec()
            log.info("variant_stages", ms={k: round(v * 1000, 1) for k, v in timings.items()})


def _variant_id(job: Job) -> uuid.UUID:
    try:
        return uuid.UUID(str(job.args["variant_id"]))
    except (KeyError, ValueError) as exc:
        raise PoisonMessage(f"a variant job needs a variant_id: {exc}") from exc
