"""Expiry of signed URLs, rounded up to a window so URLs signed within one window are the same.

A client (or a CDN) that fetched an image keeps its URL cached; handing out a different URL for
the same object on every status poll would defeat that. Rounding the expiry up to a window makes
every URL signed within one window identical, valid for between `ttl` and `ttl + window` seconds.
"""

from __future__ import annotations

import math


def signing_window(ttl: int) -> int:
    """A quarter of the TTL: for the default hour, one URL per object per 15 minutes."""
    return max(1, ttl // 4)


def expires_at(now: float, ttl: int) -> int:
    """Unix time a URL signed at `now` expires: now + ttl, rounded up to the window."""
    window = signing_window(ttl)
    return math.ceil((now + ttl) / window) * window
