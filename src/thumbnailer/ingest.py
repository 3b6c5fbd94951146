"""Ingest: a spooled file becomes a stored original, a NEW row and a published job.

probe -> store -> record NEW -> publish -> PROCESSING, with a compensation for each step that
can fail after something was written:
- the row cannot be recorded -> the stored original is deleted again (nothing refers to it);
- the job cannot be published, or PROCESSING not recorded -> the row stays NEW and the relay
  publishes it later, so the upload is still accepted: it is stored and committed.
No HTTP here: the API, a URL fetch or a CLI feed the same path.
"""

from __future__ import annotations

import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import aiofiles.os
import anyio.to_thread

from thumbnailer import imaging, metrics
from thumbnailer.broker import FETCH, Broker, BrokerUnavailable, Job
from thumbnailer.config import Settings
from thumbnailer.leftovers import remove_files_older_than
from thumbnailer.logging import get_logger
from thumbnailer.records import NewImage, NewSource, Original, Status, VariantRecord
from thumbnailer.repo import Repo, RepoUnavailable
from thumbnailer.repo.variants import TooManyVariants
from thumbnailer.store import Store, StoreError, original_key
from thumbnailer.variant_spec import VariantSpec
from thumbnailer.variants import VariantRequests

log = get_logger(__name__)
FREE_SPACE_TTL = 1.0


@dataclass(frozen=True)
class Spooled:
    """A finished upload on local scratch disk; ingest consumes (moves or removes) the file."""

    path: Path
    size: int
    filename: str | None
    # SHA-256 of the request's parts (names, filenames, types, bytes), when it was asked for:
    # what an Idempotency-Key is checked against.
    fingerprint: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: uuid.UUID
    status: Status
    info: imaging.ImageInfo
    variant: VariantRecord | None = None  # the one the upload asked for, once its row exists


class StorageFull(Exception):
    def __init__(self, free: int) -> None:
        super().__init__(f"only {free} bytes free")
        self.free = free


@dataclass(frozen=True)
class Limits:
    """What an accepted image may cost; checked from the header, before any decode."""

    max_pixels: int
    max_scans: int
    max_decode_memory: int
    boxes: tuple[tuple[int, int], ...]
    min_free_space: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_image_pixels,
            settings.max_jpeg_scans,
            settings.max_decode_memory,
            tuple(settings.thumbnail_boxes),
            settings.min_free_space,
        )


class Ingest:
    def __init__(
        self,
        repo: Repo,
        store: Store,
        broker: Broker,
        limits: Limits,
        variants: VariantRequests | None = None,
    ) -> None:
        self.repo, self.store, self.broker = repo, store, broker
        self.limits = limits
        self.variants = variants
        self._free: tuple[float, int | None] = (0.0, None)

    async def check_room(self) -> None:
        """Raise StorageFull when the store is below its reserve (measured once a second)."""
        measured_at, free = self._free
        now = time.monotonic()
        if now - measured_at > FREE_SPACE_TTL:
            free = await self.store.free_bytes()
            self._free = (now, free)
        if free is not None and free < self.limits.min_free_space:
            raise StorageFull(free)

    async def __call__(
        self,
        spooled: Spooled,
        request_id: str | None,
        owner: str | None = None,
        callback_url: str | None = None,
        variant: VariantSpec | None = None,
    ) -> Accepted:
        """Raises imaging.ImagingError (not an image we take), StoreError, RepoUnavailable.

        `owner` is the uploader's subject (AUTH_MODE=jwt), None when there is no identity.
        `variant` (checked by the caller before the upload was received) is asked for once
        the image is committed.
        """
        try:
            info = await self._probe(spooled.path)
        except BaseException:
            await discard_spool(spooled.path)
            raise
        image_id = uuid.uuid4()
        key = original_key(str(image_id), info.format)
        await self.store.put_file(key, spooled.path, info.media_type)
        row = NewImage(
            image_id, key, spooled.filename, info.media_type, info.width, info.height,
            spooled.size, request_id, owner, callback_url,
        )  # fmt: skip
        await self._record(row)
        metrics.UPLOAD_BYTES.inc(spooled.size)
        metrics.UPLOAD_SIZE.observe(spooled.size)
        status = await self._enqueue(Job.thumbnails(image_id, request_id))
        log.info("image_accepted", image_id=str(image_id), bytes=spooled.size, format=info.format)
        made = await self._variant(image_id, variant, request_id) if variant else None
        return Accepted(image_id, status, info, made)

    async def _variant(
        self, image_id: uuid.UUID, spec: VariantSpec, request_id: str | None
    ) -> VariantRecord | None:
        """The upload is committed by now, so a failure here must not fail it: the client
        sees no variant in the answer and can ask for it again by its own route."""
        if self.variants is None:
            raise RuntimeError("this Ingest was built without variants")
        try:
            record, _ = await self.variants.request(image_id, spec, request_id)
        except (RepoUnavailable, TooManyVariants) as exc:
            log.warning("upload_variant_failed", image_id=str(image_id), error=str(exc))
            return None
        return record

    async def submit_url(
        self,
        url: str,
        request_id: str | None,
        owner: str | None = None,
        callback_url: str | None = None,
    ) -> tuple[uuid.UUID, Status]:
        """A row for an image at `url` and its fetch job; the worker fetches and `adopt`s it."""
        image_id = uuid.uuid4()
        await self.repo.add_source(NewSource(image_id, url, request_id, owner, callback_url))
        status = await self._enqueue(Job(FETCH, image_id, request_id))
        log.info("url_accepted", image_id=str(image_id))
        return image_id, status

    async def adopt(self, image_id: uuid.UUID, spooled: Spooled, request_id: str | None) -> None:
        """Fetched bytes join the upload path: probe -> store -> fill in the row -> thumbnails.

        Raises imaging.ImagingError for what we do not take; a failed publish raises
        BrokerUnavailable, so the fetch job is retried (and finds the original already stored).
        """
        try:
            info = await self._probe(spooled.path)
        except BaseException:
            await discard_spool(spooled.path)
            raise
        key = original_key(str(image_id), info.format)
        await self.store.put_file(key, spooled.path, info.media_type)
        original = Original(
            key, spooled.filename, info.media_type, info.width, info.height, spooled.size
        )
        await self.repo.attach_original(image_id, original)
        metrics.UPLOAD_BYTES.inc(spooled.size)
        metrics.UPLOAD_SIZE.observe(spooled.size)
        await self.publish_thumbnails(image_id, request_id)
        log.info("url_fetched", image_id=str(image_id), bytes=spooled.size, format=info.format)

    async def publish_thumbnails(self, image_id: uuid.UUID, request_id: str | None) -> None:
        await self.broker.publish(Job.thumbnails(image_id, request_id))

    async def _probe(self, path: Path) -> imaging.ImageInfo:
        try:
            return await anyio.to_thread.run_sync(self._judge, path)
        except imaging.ImagingError:
            raise
        except OSError as exc:
            # The file we just spooled cannot be read back: storage, not the image, is at fault.
            raise StoreError(f"could not read the upload back: {exc}") from exc

    def _judge(self, path: Path) -> imaging.ImageInfo:
        """Format, size and decode cost from the header; raises for what we do not take."""
        limits = self.limits
        info = imaging.probe(path, limits.max_pixels, max_scans=limits.max_scans)
        imaging.check_decode_budget(info, limits.boxes, limits.max_decode_memory)
        return info

    async def _record(self, row: NewImage) -> None:
        try:
            await self.repo.add(row)
        except RepoUnavailable as exc:
            log.error("record_failed", image_id=str(row.id), error=str(exc))
            await self._forget_original(row.original_key)
            raise

    async def _forget_original(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except StoreError as exc:
            log.warning("orphan_original", key=key, error=str(exc))

    async def _enqueue(self, job: Job) -> Status:
        """Publish and mark PROCESSING; on failure the row stays NEW for the relay to publish."""
        try:
            await self.broker.publish(job)
        except BrokerUnavailable as exc:
            log.warning("publish_deferred", image_id=str(job.image_id), error=str(exc))
            metrics.PUBLISH_FAILURES.inc()
            return Status.NEW
        try:
            await self.repo.mark_processing(job.image_id)
        except RepoUnavailable as exc:
            # The job is queued, so the worker will still finish it; the status lags for a moment.
            log.warning("mark_processing_failed", image_id=str(job.image_id), error=str(exc))
            return Status.NEW
        return Status.PROCESSING


async def discard_spool(path: Path) -> None:
    with suppress(FileNotFoundError):
        await aiofiles.os.remove(path)


def sweep_spool(spool: Path, older_than: float) -> int:
    """Remove spool files left by a process that died mid-upload; returns how many."""
    return remove_files_older_than(spool, older_than)
