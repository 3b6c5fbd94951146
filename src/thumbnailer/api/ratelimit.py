"""Rate limits in Redis (the `limits` library, sliding-window counters), failing open.

Each limit costs one Redis round trip (a Lua script) per request; the window statistics for the
429 headers are read only when a limit is hit. When Redis cannot be reached the request is
served unlimited: a warning is logged when that starts (and when it ends), and
`thumbnailer_rate_limit_unavailable` counts every request served so. After a failure Redis is
not asked again for `BREAKER_SECONDS`, so a black-holed Redis costs one timeout per second, not
one per request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from thumbnailer import metrics
from thumbnailer.config import Settings
from thumbnailer.logging import get_logger

log = get_logger(__name__)

REDIS_TIMEOUT = 0.5  # seconds; a request never waits longer on the limiter
BREAKER_SECONDS = 1.0


@dataclass(frozen=True)
class Exceeded:
    """A limit that was hit, with what the 429 headers say about it."""

    name: str
    limit: int
    window: int
    retry_after: int


@dataclass(frozen=True)
class Limit:
    name: str
    items: tuple[RateLimitItem, ...]

    def policy(self) -> str:
        """RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers): one item per window."""
        return ", ".join(
            f'"{self._label(i)}";q={item.amount};w={item.get_expiry()}'
            for i, item in enumerate(self.items)
        )

    def _label(self, index: int) -> str:
        return self.name if len(self.items) == 1 else f"{self.name}-{index}"


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.uploads = Limit("uploads", tuple(parse_many(settings.rate_limit_uploads)))
        self.requests = Limit("requests", tuple(parse_many(settings.rate_limit_requests)))
        self.storage = RedisStorage(
            "async+" + settings.redis_url,
            implementation="redispy",
            key_prefix=settings.redis_key_prefix,
            wrap_exceptions=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.available = True
        self._skip_until = 0.0

    async def hit(self, limit: Limit, identity: str) -> Exceeded | None:
        """Count one request of `identity` against `limit`; the limit it exceeds, if any."""
        if time.monotonic() < self._skip_until:
            metrics.RATE_LIMIT_UNAVAILABLE.inc()
            return None
        try:
            for index, item in enumerate(limit.items):
                if not await self.limiter.hit(item, limit.name, identity):
                    return await self._exceeded(limit, index, item, identity)
        except Exception as exc:  # any storage failure: serve, say so, count it
            self._failed(exc)
            return None
        if not self.available:
            self.available = True
            log.info("rate_limit_restored")
        return None

    async def _exceeded(
        self, limit: Limit, index: int, item: RateLimitItem, identity: str
    ) -> Exceeded:
        stats = await self.limiter.get_window_stats(item, limit.name, identity)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        return Exceeded(limit._label(index), item.amount, item.get_expiry(), retry_after)

    def _failed(self, exc: Exception) -> None:
        metrics.RATE_LIMIT_UNAVAILABLE.inc()
        self._skip_until = time.monotonic() + BREAKER_SECONDS
        if self.available:
            self.available = False
            log.warning("rate_limit_unavailable", error=str(exc) or type(exc).__name__)

    async def healthy(self) -> bool:
        try:
            return bool(await self.storage.check())
        except Exception:
            return False

    async def close(self) -> None:
        bridge = getattr(self.storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
