"""The fetch job: download an image given by URL through the SSRF guard, then ingest it.

The bytes take the upload's path (probe -> store -> thumbnails job), so what the source sent is
judged by its content, never by the Content-Type it claimed. Whatever the source does wrong
(an error status, too many bytes, an HTML page, too slow, a redirect loop, a forbidden address)
ends the image ERROR with the reason in words; another try would meet the same source, so it
is not retried. Our own outages (storage, database, broker) are retried like any job's.

Idempotent: a row that already has its original only gets its thumbnail job published again.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import aiofiles

from thumbnailer import fetch, imaging
from thumbnailer.broker import FETCH, Job, PoisonMessage
from thumbnailer.formats import ACCEPTED
from thumbnailer.ingest import Ingest, Limits, Spooled, discard_spool
from thumbnailer.records import ImageRecord
from thumbnailer.worker.handlers.base import Context, Result
from thumbnailer.worker.webhooks import Webhooks

SNIFF_BYTES = 512
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--")


class FetchHandler:
    kind: ClassVar[str] = FETCH

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ingest = Ingest(ctx.repo, ctx.store, ctx.broker, Limits.from_settings(ctx.settings))
        self.policy = fetch.Policy.of(ctx.settings.url_fetch_allowed_hosts)
        self.webhooks = Webhooks(ctx)
        ctx.settings.spool_path.mkdir(parents=True, exist_ok=True)

    async def run(self, job: Job) -> Result:
        row = await self.ctx.repo.get(job.image_id)
        if row is None:
            raise PoisonMessage(f"no image with id {job.image_id}")
        if row.finished:
            await self.webhooks.announce(row)
            return Result("skipped", {"status": row.status})
        if row.source_url is None:
            raise PoisonMessage(f"image {job.image_id} has no source URL")
        if row.original_key is not None:
            # Fetched and stored by an earlier run whose thumbnail job did not get out.
            await self.ingest.publish_thumbnails(row.id, job.request_id)
            return Result("done", {"fetched_before": True})
        settings = self.ctx.settings
        try:
            downloaded = await fetch.download(
                row.source_url,
                settings.spool_path,
                settings.max_file_size,
                self.policy,
                settings.url_fetch_timeout,
            )
        except fetch.FetchFailed as exc:
            return await self._fail(row, exc.reason)
        spooled = Spooled(downloaded.path, downloaded.size, downloaded.filename)
        if await looks_like_html(spooled.path):
            await discard_spool(spooled.path)
            return await self._fail(row, "the source is an HTML page, not an image")
        try:
            await self.ingest.adopt(row.id, spooled, job.request_id)
        except imaging.ImagingError as exc:
            return await self._fail(row, f"the source is not a supported image ({ACCEPTED}): {exc}")
        return Result("done", {"bytes": spooled.size})

    async def give_up(self, job: Job, reason: str) -> None:
        if await self.ctx.repo.mark_error(job.image_id, reason):
            await self.webhooks.announce_by_id(job.image_id)

    async def _fail(self, row: ImageRecord, reason: str) -> Result:
        if await self.ctx.repo.mark_error(row.id, reason):
            await self.webhooks.announce(row)
        return Result("error", {"reason": reason})


async def looks_like_html(path: Path) -> bool:
    """Markup rather than an image, by the first bytes (a page served as image/jpeg included)."""
    async with aiofiles.open(path, "rb") as source:
        head = await source.read(SNIFF_BYTES)
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith(HTML_STARTS)
