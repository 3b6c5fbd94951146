"""A directory tree as a Store: atomic puts (temp file + rename); paths never leave this module.

Keys are checked against the root anyway, so that a bad key can never escape it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import aiofiles
import aiofiles.os
from starlette.types import ASGIApp

from thumbnailer.leftovers import remove_files_older_than
from thumbnailer.store.base import ObjectMissing, StoredObject, StoreError, check_folder
from thumbnailer.store.local_files import ImmutableFiles
from thumbnailer.store.signing import UrlSigner

# No single write takes this long; a scratch file older than this lost its writer.
SCRATCH_MAX_AGE = 3600.0


class LocalStore:
    """Objects are files under `root`; writes go through `root/.tmp` so readers never see half."""

    def __init__(self, root: Path, signer: UrlSigner | None = None) -> None:
        self.root = root.resolve()
        self.signer = signer  # private files: signed, expiring URLs
        self._scratch = self.root / ".tmp"
        self._scratch.mkdir(parents=True, exist_ok=True)

    async def open(self) -> None:
        """Every call opens its own file; what a killed writer left half-written goes now."""
        await asyncio.to_thread(remove_files_older_than, self._scratch, SCRATCH_MAX_AGE)

    async def close(self) -> None:
        """Nothing to release."""

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def _temp_path(self) -> Path:
        # The writer's pid in the name tells whose write a leftover was.
        return self._scratch / f"{os.getpid()}-{secrets.token_hex(16)}"

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        # One thread hop for the whole write: per-call aiofiles hops cost twice the CPU of a
        # thumbnail's write (bench/results/imaging-decisions.md §12).
        try:
            await asyncio.to_thread(self._write_into_place, data, key)
        except OSError as exc:
            raise StoreError(f"could not write {key}: {exc.strerror or exc}") from exc

    def _write_into_place(self, data: bytes, key: str) -> None:
        tmp = self._temp_path()
        try:
            tmp.write_bytes(data)
            self._move_into_place(tmp, key)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def put_file(self, key: str, path: Path, media_type: str) -> None:
        try:
            await asyncio.to_thread(self._adopt, path, key)
        except OSError as exc:
            raise StoreError(f"could not store {key}: {exc.strerror or exc}") from exc
        finally:
            await _remove(path)

    def _adopt(self, path: Path, key: str) -> None:
        try:
            self._move_into_place(path, key)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The spool is on another filesystem: copy next to the target, then rename.
            tmp = self._temp_path()
            try:
                shutil.copyfile(path, tmp)
                self._move_into_place(tmp, key)
            finally:
                tmp.unlink(missing_ok=True)

    def _move_into_place(self, tmp: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    async def read(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise ObjectMissing(f"could not read {key}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise StoreError(f"could not read {key}: {exc.strerror or exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await _remove(self._path(key))
        except OSError as exc:
            raise StoreError(f"could not delete {key}: {exc.strerror or exc}") from exc

    async def delete_prefix(self, prefix: str) -> int:
        check_folder(prefix)
        try:
            return await asyncio.to_thread(self._remove_tree, self._path(prefix))
        except OSError as exc:
            raise StoreError(f"could not delete {prefix}: {exc.strerror or exc}") from exc

    def _remove_tree(self, folder: Path) -> int:
        removed = 0
        for path, _ in self._walk(folder):
            with suppress(FileNotFoundError):
                os.remove(path)
                removed += 1
        # Folders go too, deepest first; one a writer has just refilled stays (not empty).
        for directory, _, _ in sorted(os.walk(folder), key=lambda e: -len(e[0])):
            with suppress(FileNotFoundError, OSError):
                os.rmdir(directory)
        return removed

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        check_folder(prefix)
        folder = self._path(prefix)
        try:
            found = await asyncio.to_thread(lambda: list(self._walk(folder)))
        except OSError as exc:
            raise StoreError(f"could not list {prefix}: {exc.strerror or exc}") from exc
        for path, mtime in found:
            key = path.relative_to(self.root).as_posix()
            yield StoredObject(key, datetime.fromtimestamp(mtime, UTC))

    def _walk(self, folder: Path) -> list[tuple[Path, float]]:
        """Files under `folder` with their modification times; the scratch folder never."""
        files = []
        for directory, _, names in os.walk(folder):
            if Path(directory).is_relative_to(self._scratch):
                continue
            for name in names:
                path = Path(directory) / name
                with suppress(FileNotFoundError):
                    files.append((path, path.stat().st_mtime))
        return files

    def url(self, key: str, base: str) -> str:
        if self.signer is None:
            return f"{base}/files/{key}"
        return f"{base}/files/{key}?{self.signer.query(key)}"

    async def healthy(self) -> bool:
        return await asyncio.to_thread(os.access, self.root, os.W_OK)

    async def free_bytes(self) -> int | None:
        stats = await asyncio.to_thread(os.statvfs, self.root)
        return stats.f_bavail * stats.f_frsize

    def file_server(self) -> ASGIApp:
        return ImmutableFiles(directory=self.root, check_dir=False, signer=self.signer)


async def _remove(path: Path) -> None:
    with suppress(FileNotFoundError):
        await aiofiles.os.remove(path)
