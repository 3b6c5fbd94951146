"""`thumbnailer migrate-store --from local --to s3`: copy a local tree into the bucket.

Resumable and idempotent: an object already in the bucket with the same size (and, for a
single-part upload, the same ETag: the MD5 of its bytes) is skipped, so a run that was stopped
is simply started again, and a second run copies nothing. Local files are left in place: switch
STORAGE_BACKEND once a run reports nothing left to copy, run it once more after the switch to
pick up what was written in between, then remove the volume.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from thumbnailer.formats import MEDIA_TYPE_BY_EXTENSION
from thumbnailer.logging import get_logger
from thumbnailer.store.base import StoreError
from thumbnailer.store.keys import SERVED_PREFIXES
from thumbnailer.store.s3 import S3Store

log = get_logger(__name__)


@dataclass
class Report:
    copied: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"copied {self.copied}, already there {self.skipped}, failed {len(self.failed)}"


def local_objects(root: Path) -> Iterator[tuple[str, Path]]:
    """(key, path) of every object under `root`: our key prefixes and file types only."""
    for prefix in SERVED_PREFIXES:
        top = root / prefix
        for directory, _, files in os.walk(top):
            for name in sorted(files):
                path = Path(directory) / name
                key = path.relative_to(root).as_posix()
                if path.suffix.lower() in MEDIA_TYPE_BY_EXTENSION:
                    yield key, path


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def already_there(target: S3Store, key: str, path: Path) -> bool:
    found = await target.stat(key)
    if found is None:
        return False
    size, etag = found
    if size != (await asyncio.to_thread(path.stat)).st_size:
        return False
    plain = (etag or "").strip('"')
    if not plain or "-" in plain:  # multipart ETags are not an MD5 of the object: size decides
        return True
    return plain == await asyncio.to_thread(_md5, path)


async def copy_tree(root: Path, target: S3Store, concurrency: int = 8) -> Report:
    report = Report()
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str, path: Path) -> None:
        async with gate:
            try:
                if await already_there(target, key, path):
                    report.skipped += 1
                    return
                media_type = MEDIA_TYPE_BY_EXTENSION[path.suffix.lower()]
                await target.upload(key, path, media_type)
                report.copied += 1
            except (StoreError, OSError) as exc:
                log.warning("migrate_failed", key=key, error=str(exc))
                report.failed.append(key)

    objects = await asyncio.to_thread(lambda: list(local_objects(root)))
    await asyncio.gather(*(one(key, path) for key, path in objects))
    return report
