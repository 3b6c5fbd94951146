"""The later life of an image, shared by the routes, the retention sweep, the CLI and the
worker: its end (files erased) and its thumbnails made again (reprocess).

The row always goes first and the files after it: a crash in between leaves files no row points
at (the sweep removes them), never a row pointing at files that are gone.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import Iterable

from thumbnailer.broker import THUMBNAILS, Broker, BrokerUnavailable, Job, PoisonMessage
from thumbnailer.logging import get_logger
from thumbnailer.records import ImageRecord, Status
from thumbnailer.repo import Repo, RepoUnavailable
from thumbnailer.store import Store, StoreError, image_prefixes

log = get_logger(__name__)


async def erase_files(store: Store, image_id: uuid.UUID, keys: Iterable[str] = ()) -> int:
    """Every file of the image: the named `keys` (its original) and its folders; how many went.

    Raises StoreError when the store fails; what is left then is the orphan sweep's.
    """
    folders = image_prefixes(str(image_id))
    singles = [key for key in keys if not any(key.startswith(f) for f in folders)]
    await asyncio.gather(*(store.delete(key) for key in singles))
    counts = await asyncio.gather(*(store.delete_prefix(folder) for folder in folders))
    return len(singles) + sum(counts)


async def erase_image_files(store: Store, row: ImageRecord) -> bool:
    """The files of a row already deleted; False (and a warning) when some were left behind."""
    try:
        await erase_files(store, row.id, [row.original_key] if row.original_key else [])
    except StoreError as exc:
        log.warning("orphan_files_left", image_id=str(row.id), error=str(exc))
        return False
    return True


GENERATION_ARG = "generation"
_GENERATION_SHAPE = re.compile(r"^[0-9a-f]{1,32}$")


class NotFinished(Exception):
    """The image is still being processed: its job will make the sizes now configured."""


def new_generation() -> str:
    """A name for one round of remaking, so its files never overwrite a URL handed out."""
    return secrets.token_hex(6)


def generation_of(job: Job) -> str | None:
    """The round a thumbnail job remakes; None for the first job after the upload."""
    value = job.args.get(GENERATION_ARG)
    if value is None:
        return None
    if not isinstance(value, str) or not _GENERATION_SHAPE.match(value):
        raise PoisonMessage(f"malformed generation {value!r}")
    return value


class Reprocessor:
    """Sends a finished image round again: its thumbnails are made anew with the sizes now
    configured. A DONE image stays DONE with its old thumbnails until the new set replaces
    them in one statement; an ERROR image starts again as an upload does (NEW, PROCESSING)."""

    def __init__(self, repo: Repo, broker: Broker) -> None:
        self.repo, self.broker = repo, broker

    async def __call__(self, row: ImageRecord, request_id: str | None = None) -> Status:
        """The status the image is in now. Raises NotFinished; for a DONE image also
        BrokerUnavailable (nothing changed, the caller may retry); RepoUnavailable."""
        if not row.finished:
            raise NotFinished(str(row.id))
        job = Job(THUMBNAILS, row.id, request_id, args={GENERATION_ARG: new_generation()})
        if row.status == Status.DONE:
            await self.broker.publish(job)
            return Status.DONE
        if not await self.repo.restart(row.id):
            raise NotFinished(str(row.id))  # sent round by another caller just now
        try:
            await self.broker.publish(job)
        except BrokerUnavailable as exc:
            # Committed NEW: the relay publishes it within RELAY_INTERVAL, as for an upload.
            log.warning("reprocess_publish_deferred", image_id=str(row.id), error=str(exc))
            return Status.NEW
        try:
            await self.repo.mark_processing(row.id)  # NEW only: a fast worker's DONE stays
        except RepoUnavailable:
            return Status.NEW  # the job is queued; the status lags for a moment
        return Status.PROCESSING
