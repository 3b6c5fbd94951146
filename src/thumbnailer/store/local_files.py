"""Serving a LocalStore's objects: typed by what we wrote, never sniffed, sandboxed.

Public (AUTH_MODE=none): immutable, cached for a year. Private (a signer is given): every request
must carry a valid, unexpired signature (403 otherwise), and caches may keep the response only
until the signature expires.
"""

from __future__ import annotations

import math
import os

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from thumbnailer.formats import MEDIA_TYPE_BY_EXTENSION
from thumbnailer.store.keys import SERVED_PREFIXES
from thumbnailer.store.signing import SignatureRefused, UrlSigner

# Keys are written once under a fresh id and never change, so caches may keep them for good.
IMMUTABLE = "public, max-age=31536000, immutable"
# An uploaded file opened directly must not run as a page of ours (SVG, HTML in disguise...).
SANDBOX = "sandbox"


class ImmutableFiles(StaticFiles):
    """StaticFiles (ETag, 304, ranges, traversal checks) limited to our keys, with cache headers."""

    def __init__(self, *args: object, signer: UrlSigner | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.signer = signer

    async def get_response(self, path: str, scope: Scope) -> Response:
        extension = os.path.splitext(path)[1].lower()
        if not path.startswith(SERVED_PREFIXES) or extension not in MEDIA_TYPE_BY_EXTENSION:
            raise HTTPException(404, "no such file")
        cache_control = IMMUTABLE
        if self.signer is not None:
            try:
                expires = self.signer.verify(path, scope.get("query_string", b"").decode("latin-1"))
            except SignatureRefused as exc:
                raise HTTPException(403, str(exc)) from exc
            remaining = max(0, math.floor(expires - self.signer.clock()))
            cache_control = f"private, max-age={remaining}"
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = cache_control
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = SANDBOX
        if response.status_code == 200:
            response.headers["Content-Type"] = MEDIA_TYPE_BY_EXTENSION[extension]
        return response
