"""Signed, expiring file URLs: the capability a client gets instead of a public URL.

A URL carries `exp` (a Unix time) and `sig`, an HMAC-SHA256 over the object's key and `exp`, so
it opens exactly one object until `exp`; changing either breaks the signature. `exp` is rounded
up to a window (a quarter of the TTL), so the same URL is handed out for a while and browser
caches keep hitting; a URL thus stays valid at least `ttl` and at most `ttl + window` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode


class SignatureRefused(Exception):
    """Missing, malformed, tampered or expired: the reason is fit for the client."""


def signing_window(ttl: int) -> int:
    """A quarter of the TTL: for the default hour, one URL per object per 15 minutes."""
    return max(1, ttl // 4)


def expiry(now: float, ttl: int) -> int:
    """When a URL handed out at `now` expires: now + ttl, rounded up to the window.

    Local signed URLs and presigned bucket URLs both use it, so both repeat within a window.
    """
    window = signing_window(ttl)
    return math.ceil((now + ttl) / window) * window


class UrlSigner:
    def __init__(self, secret: str, ttl: int, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a URL signing key is required")
        self._secret = secret.encode()
        self.ttl, self.clock = ttl, clock

    def _signature(self, key: str, expires: int) -> str:
        message = f"files\n{key}\n{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def query(self, key: str) -> str:
        """The query string that makes /files/<key> open until the current window's end."""
        expires = expiry(self.clock(), self.ttl)
        return urlencode({"exp": expires, "sig": self._signature(key, expires)})

    def verify(self, key: str, query_string: str) -> int:
        """The URL's expiry, if its signature holds for `key` and it has not expired."""
        params = parse_qs(query_string, keep_blank_values=True)
        exp, sig = params.get("exp", []), params.get("sig", [])
        if not exp and not sig:
            raise SignatureRefused("this file needs a signed URL: get it from GET /images/{id}")
        if len(exp) != 1 or len(sig) != 1 or not exp[0].isdigit() or len(exp[0]) > 12:
            raise SignatureRefused("malformed URL signature")
        expires = int(exp[0])
        if not hmac.compare_digest(self._signature(key, expires), sig[0]):
            raise SignatureRefused("URL signature does not match")
        if expires <= self.clock():
            raise SignatureRefused("signed URL expired: fetch the image again for a fresh one")
        return expires
