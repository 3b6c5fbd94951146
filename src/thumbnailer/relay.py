"""The relay: publishes rows whose job never reached the broker, or seems lost.

An upload is committed before it is published, so a broker outage leaves rows NEW; and a job can
vanish with a broker that lost it. Sweeping both back onto the queue makes the 2xx a promise.
Workers are idempotent, so a job published twice costs a little work, never a wrong result.
"""

from __future__ import annotations

import asyncio

from thumbnailer import metrics
from thumbnailer.broker import FETCH, Broker, BrokerUnavailable, Job
from thumbnailer.logging import get_logger
from thumbnailer.repo import Repo, RepoUnavailable

log = get_logger(__name__)


class Relay:
    def __init__(
        self, repo: Repo, broker: Broker, interval: float, processing_timeout: float
    ) -> None:
        self.repo, self.broker = repo, broker
        self.interval, self.processing_timeout = interval, processing_timeout
        self.republished = 0

    async def sweep(self) -> int:
        """Publish one batch of stale rows; returns how many went out."""
        if not self.broker.is_connected:
            return 0
        claimed = await self.repo.claim_stale(self.interval, self.processing_timeout)
        sent = 0
        for image_id, request_id, needs_fetch in claimed:
            # A row made from a URL that was never fetched has no original to make thumbnails of.
            job = (
                Job(FETCH, image_id, request_id)
                if needs_fetch
                else Job.thumbnails(image_id, request_id)
            )
            try:
                await self.broker.publish(job)
            except BrokerUnavailable as exc:
                log.warning("relay_publish_failed", image_id=str(image_id), error=str(exc))
                break
            await self.repo.mark_processing(image_id)
            sent += 1
        if sent == len(claimed):
            sent += await self._sweep_variants()
        if sent:
            self.republished += sent
            metrics.RELAY_REPUBLISHED.inc(sent)
            log.info("relay_republished", count=sent)
        return sent

    async def _sweep_variants(self) -> int:
        """The same for variants: their rows and jobs are their own."""
        claimed = await self.repo.variants.claim_stale(self.interval, self.processing_timeout)
        sent = 0
        for variant_id, image_id, request_id in claimed:
            try:
                await self.broker.publish(Job.variant(image_id, variant_id, request_id))
            except BrokerUnavailable as exc:
                log.warning("relay_publish_failed", variant_id=str(variant_id), error=str(exc))
                break
            await self.repo.variants.mark_processing(variant_id)
            sent += 1
        return sent

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except RepoUnavailable as exc:
                log.warning("relay_sweep_failed", error=str(exc))
            await asyncio.sleep(self.interval)
