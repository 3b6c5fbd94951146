"""Bytes by key on local disk: atomic puts (temp file + rename), reads, paths for serving.

Keys are built by the service from ids it generated (never from client input), and are checked
against the storage root anyway so that a bad key can never escape it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiofiles
import aiofiles.os


class StoreError(OSError):
    """Storage I/O failed; callers treat it as transient."""


class LocalStore:
    """A directory tree; writes are atomic so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def ensure_root(self) -> None:
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def temp_path(self) -> Path:
        return self.root / ".tmp" / secrets.token_hex(16)

    async def put(self, key: str, data: bytes) -> None:
        tmp = self.temp_path()
        try:
            async with aiofiles.open(tmp, "wb") as f:
                await f.write(data)
            await self.commit(tmp, key)
        except OSError as exc:
            await self.discard(tmp)
            raise StoreError(f"could not write {key}: {exc.strerror or exc}") from exc

    def put_sync(self, key: str, data: bytes) -> None:
        tmp = self.temp_path()
        try:
            tmp.write_bytes(data)
            self._rename(tmp, key)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"could not write {key}: {exc.strerror or exc}") from exc

    async def commit(self, tmp: Path, key: str) -> None:
        """Move a finished temp file into place under `key`."""
        try:
            self._rename(tmp, key)
        except OSError as exc:
            await self.discard(tmp)
            raise StoreError(f"could not store {key}: {exc.strerror or exc}") from exc

    def _rename(self, tmp: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    async def discard(self, tmp: Path) -> None:
        with suppress(FileNotFoundError):
            await aiofiles.os.remove(tmp)

    async def read(self, key: str) -> bytes:
        try:
            async with aiofiles.open(self.path(key), "rb") as f:
                return await f.read()
        except OSError as exc:
            raise StoreError(f"could not read {key}: {exc.strerror or exc}") from exc

    async def delete(self, key: str) -> None:
        with suppress(FileNotFoundError):
            await aiofiles.os.remove(self.path(key))

    async def exists(self, key: str) -> bool:
        return await aiofiles.os.path.isfile(self.path(key))

    @asynccontextmanager
    async def writer(
        self,
    ) -> AsyncIterator[tuple[Path, aiofiles.threadpool.binary.AsyncBufferedIOBase]]:
        """A temp file to stream into; the caller commits or it is removed on exit."""
        tmp = self.temp_path()
        try:
            async with aiofiles.open(tmp, "wb") as f:
                yield tmp, f
        finally:
            if await aiofiles.os.path.exists(tmp):
                await self.discard(tmp)

    def is_writable(self) -> bool:
        return os.access(self.root, os.W_OK)


def original_key(image_id: str, extension: str) -> str:
    return f"originals/{image_id[:2]}/{image_id}.{extension}"


def thumbnail_key(image_id: str, label: str, extension: str) -> str:
    return f"thumbnails/{image_id[:2]}/{image_id}/{label}.{extension}"
