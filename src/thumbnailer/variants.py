"""Asking for a variant: the checks, the row, the job. Shared by POST /images/{id}/variants
and by an upload whose form carries `transformations` (no HTTP here).

The row is committed before the job is published; a publish that fails leaves the row NEW and
the relay publishes it later, as for images. Asking again for a spec the image already has
finds its row and publishes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from thumbnailer.broker import Broker, BrokerUnavailable, Job
from thumbnailer.config import Settings
from thumbnailer.logging import get_logger
from thumbnailer.records import Status, VariantRecord
from thumbnailer.repo import Repo, RepoUnavailable
from thumbnailer.repo.variants import TooManyVariants
from thumbnailer.variant_spec import VariantSpec, check_limits, variant_id

log = get_logger(__name__)


@dataclass(frozen=True)
class VariantLimits:
    max_side: int
    max_per_image: int

    @classmethod
    def from_settings(cls, settings: Settings) -> VariantLimits:
        return cls(settings.max_variant_size, settings.max_variants_per_image)


class VariantRequests:
    def __init__(self, repo: Repo, broker: Broker, limits: VariantLimits) -> None:
        self.repo, self.broker, self.limits = repo, broker, limits

    def check(self, spec: VariantSpec) -> None:
        """SpecError for what no image could have (a side over MAX_VARIANT_SIZE), and
        TooManyVariants when no image may have any."""
        check_limits(spec, self.limits.max_side)
        if self.limits.max_per_image < 1:
            raise TooManyVariants(self.limits.max_per_image)

    async def request(
        self, image_id: uuid.UUID, spec: VariantSpec, request_id: str | None
    ) -> tuple[VariantRecord, bool]:
        """The variant, and whether it is new. Raises SpecError, repo.variants.UnknownImage,
        TooManyVariants, RepoUnavailable."""
        self.check(spec)
        found, created = await self.repo.variants.create(
            variant_id(image_id, spec), image_id, spec.to_json(), request_id,
            self.limits.max_per_image,
        )  # fmt: skip
        if not created:
            return found, False
        status = await self._enqueue(Job.variant(image_id, found.id, request_id))
        return replace(found, status=status), True

    async def _enqueue(self, job: Job) -> Status:
        variant = uuid.UUID(str(job.args["variant_id"]))
        try:
            await self.broker.publish(job)
        except BrokerUnavailable as exc:
            log.warning("variant_publish_deferred", variant_id=str(variant), error=str(exc))
            return Status.NEW
        try:
            await self.repo.variants.mark_processing(variant)
        except RepoUnavailable as exc:
            log.warning("variant_mark_processing_failed", variant_id=str(variant), error=str(exc))
            return Status.NEW
        return Status.PROCESSING
