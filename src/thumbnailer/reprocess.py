"""`thumbnailer reprocess`: send many finished images round again, at a bounded rate.

The selection is read page by page, oldest first (a keyset on created_at, id, so rows changing
status behind the cursor are neither skipped nor repeated), and each image is enqueued through
the same `Reprocessor` as `POST /images/{id}/reprocess`. The rate bound is limits' moving
window: at most N enqueued in any window of its length, however the pages fall.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from thumbnailer.config import ThumbnailBox
from thumbnailer.lifecycle import NotFinished, Reprocessor
from thumbnailer.logging import get_logger
from thumbnailer.records import Status
from thumbnailer.repo import Repo

log = get_logger(__name__)

PAGE = 500
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_RATE_UNITS = {"s": "second", "m": "minute", "h": "hour"}


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s' or plain seconds, in seconds."""
    found = _DURATION.match(text.strip().lower())
    if found is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30d, 12h, 90m, 45s)")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def parse_rate(text: str) -> RateLimitItem:
    """'20/s', '100/m', '20/second', '20 per minute' (what limits reads)."""
    value = text.strip().lower()
    short = re.match(r"^(\d+)\s*/\s*([smh])$", value)
    if short is not None:
        value = f"{short.group(1)}/{_RATE_UNITS[short.group(2)]}"
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"not a rate: {text!r} (e.g. 20/s, 600/minute)") from exc


@dataclass(frozen=True)
class Selection:
    statuses: tuple[Status, ...]
    older_than: float | None = None
    lacking: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        status: str | None,
        older_than: str | None,
        missing_sizes: bool,
        boxes: list[ThumbnailBox],
    ) -> Selection:
        """--missing-sizes alone means DONE images (an ERROR one lacks every size anyway)."""
        if status is not None:
            statuses: tuple[Status, ...] = (Status(status),)
        else:
            statuses = (Status.DONE,) if missing_sizes else (Status.DONE, Status.ERROR)
        lacking = tuple(f"{w}x{h}" for w, h in boxes) if missing_sizes else ()
        age = parse_duration(older_than) if older_than is not None else None
        return cls(statuses, age, lacking)


class Pacer:
    """At most the rate's amount of starts in any window of its length."""

    def __init__(self, rate: RateLimitItem) -> None:
        self.rate = rate
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def wait(self) -> float:
        """Returns once a start is allowed, with the time it was taken at."""
        while not await self.limiter.hit(self.rate, "reprocess"):
            stats = await self.limiter.get_window_stats(self.rate, "reprocess")
            await asyncio.sleep(max(stats.reset_time - time.time(), 0.001))
        return time.time()


@dataclass
class Report:
    enqueued: int = 0
    skipped: int = 0  # no longer finished when its turn came


async def reprocess_all(
    repo: Repo,
    reprocess: Reprocessor,
    selection: Selection,
    pacer: Pacer,
    report: Report,
    page: int = PAGE,
) -> Report:
    """Counts into `report` as it goes, so a failure part-way still tells what was sent."""
    after = None
    while rows := await repo.reprocess_candidates(
        selection.statuses, page, after, selection.older_than, selection.lacking
    ):
        for row in rows:
            started = await pacer.wait()
            try:
                await reprocess(row)
            except NotFinished:
                report.skipped += 1
                continue
            report.enqueued += 1
            log.debug("reprocess_enqueued", image_id=str(row.id), at=started)
        log.info("reprocess_progress", enqueued=report.enqueued, skipped=report.skipped)
        after = (rows[-1].created_at, rows[-1].id)
    return report
