"""The Store protocol: bytes by opaque key. Callers never learn where or how they are kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from starlette.types import ASGIApp


class StoreError(OSError):
    """Storage I/O failed; callers treat it as transient."""


class ObjectMissing(StoreError):
    """The key has no object: a caller that knows it should exist may treat this as final."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime  # timezone-aware, UTC


def check_folder(prefix: str) -> None:
    """Prefixes name folders ('thumbnails/ab/<id>/'): object stores list by whole segments."""
    if not prefix.endswith("/") or prefix.startswith("/") or ".." in prefix.split("/"):
        raise ValueError(f"a prefix must be a relative folder ending in '/': {prefix!r}")


class Store(Protocol):
    async def open(self) -> None:
        """Acquire what the store holds for the life of the process (clients, refresh tasks)."""

    async def close(self) -> None:
        """Release what `open` acquired; the store is not used afterwards."""

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        """Write `data` under `key` atomically: readers see the old object or the whole new one."""

    async def put_file(self, key: str, path: Path, media_type: str) -> None:
        """Store a finished local file under `key`; the file is consumed (moved or removed)."""

    async def read(self, key: str) -> bytes:
        """The object's bytes; ObjectMissing (a StoreError) if there is none, StoreError if it
        is unreadable."""

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder `prefix` (ends with '/'); returns how many."""

    def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under the folder `prefix` (ends with '/'), in no particular order."""

    def url(self, key: str, base: str) -> str:
        """Where a client fetches the object; `base` is the API's own public URL.

        In AUTH_MODE=jwt the URL must be private: it opens this one object only and expires
        (SIGNED_URL_TTL, rounded up to a window so it repeats): signed, or presigned.
        """

    async def healthy(self) -> bool:
        """True when objects can be written now."""

    async def free_bytes(self) -> int | None:
        """Room left for new objects; None when the store has no practical limit (a bucket)."""

    def file_server(self) -> ASGIApp:
        """The ASGI app mounted at /files that serves (or redirects to) stored objects."""
