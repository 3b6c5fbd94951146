"""Serving stored originals and thumbnails: immutable, typed by what we wrote, never sniffed."""

from __future__ import annotations

import os

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# Keys are written once under a fresh id and never change, so caches may keep them for good.
IMMUTABLE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
SERVED_ROOTS = ("originals/", "thumbnails/")


class ImmutableFiles(StaticFiles):
    """StaticFiles (ETag, 304, ranges, traversal checks) limited to our keys, with cache headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not path.startswith(SERVED_ROOTS) or _extension(path) not in MEDIA_TYPES:
            raise HTTPException(404, "no such file")
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = IMMUTABLE
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.status_code == 200:
            response.headers["Content-Type"] = MEDIA_TYPES[_extension(path)]
        return response


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()
