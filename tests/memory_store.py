"""A Store kept in a dict: the second implementation the contract suite runs against.

It proves the protocol is not LocalStore in disguise, and gives in-process tests a store with
no disk underneath.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp

from thumbnailer.store import ObjectMissing, StoredObject, StoreError
from thumbnailer.store.base import check_folder


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.modified: dict[str, datetime] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        self.objects[key] = (bytes(data), media_type)
        self.modified[key] = datetime.now(UTC)

    async def put_file(self, key: str, path: Path, media_type: str) -> None:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise StoreError(f"could not store {key}: {exc}") from exc
        finally:
            path.unlink(missing_ok=True)
        self.objects[key] = (data, media_type)
        self.modified[key] = datetime.now(UTC)

    async def read(self, key: str) -> bytes:
        try:
            return self.objects[key][0]
        except KeyError:
            raise ObjectMissing(f"could not read {key}: no such object") from None

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)
        self.modified.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        check_folder(prefix)
        doomed = [key for key in self.objects if key.startswith(prefix)]
        for key in doomed:
            await self.delete(key)
        return len(doomed)

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        check_folder(prefix)
        for key in [key for key in self.objects if key.startswith(prefix)]:
            yield StoredObject(key, self.modified[key])

    def url(self, key: str, base: str) -> str:
        return f"{base}/files/{key}"

    async def healthy(self) -> bool:
        return True

    async def free_bytes(self) -> int | None:
        return None

    def file_server(self) -> ASGIApp:
        async def serve(request: Request) -> Response:
            found = self.objects.get(request.path_params["key"])
            if found is None:
                return Response(status_code=404)
            return Response(found[0], media_type=found[1])

        return Router([Route("/{key:path}", serve)])
