"""Serving a LocalStore's objects: immutable, typed by what we wrote, never sniffed."""

from __future__ import annotations

import os

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from thumbnailer.formats import MEDIA_TYPE_BY_EXTENSION
from thumbnailer.store.keys import SERVED_PREFIXES

# Keys are written once under a fresh id and never change, so caches may keep them for good.
IMMUTABLE = "public, max-age=31536000, immutable"


class ImmutableFiles(StaticFiles):
    """StaticFiles (ETag, 304, ranges, traversal checks) limited to our keys, with cache headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        extension = os.path.splitext(path)[1].lower()
        if not path.startswith(SERVED_PREFIXES) or extension not in MEDIA_TYPE_BY_EXTENSION:
            raise HTTPException(404, "no such file")
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = IMMUTABLE
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.status_code == 200:
            response.headers["Content-Type"] = MEDIA_TYPE_BY_EXTENSION[extension]
        return response
