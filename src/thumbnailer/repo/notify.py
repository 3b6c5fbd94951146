"""Wake long-polling requests when a row's status changes (PostgreSQL LISTEN/NOTIFY).

One listening connection per API process, outside the pool; a waiting request holds no
database connection, only an asyncio.Event. If the listener is down, waits fall back to short
sleeps so callers re-read the row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import asyncpg
from sqlalchemy.engine import make_url

from thumbnailer.logging import get_logger
from thumbnailer.repo.schema import STATUS_CHANNEL

log = get_logger(__name__)
FALLBACK_POLL = 1.0


class StatusNotifier:
    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.listening = False

    async def run(self) -> None:
        """Keep one LISTEN connection open, reconnecting after any loss."""
        while True:
            try:
                await self._listen_until_closed()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.debug("status_listener_down", error=str(exc))
            self.listening = False
            await asyncio.sleep(FALLBACK_POLL)

    async def _listen_until_closed(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _: closed.set())
        try:
            await conn.add_listener(STATUS_CHANNEL, self._on_notify)
            self.listening = True
            while not closed.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), 5)
                # A half-open link never reports itself; a query does.
                await conn.execute("SELECT 1", timeout=5)
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for event in self.waiters.get(payload, ()):
            event.set()

    async def wait(self, image_id: str, seconds: float) -> None:
        """Return when the row changes, or after `seconds` (sooner if not listening)."""
        event = asyncio.Event()
        self.waiters[image_id].add(event)
        try:
            limit = seconds if self.listening else min(seconds, FALLBACK_POLL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), limit)
        finally:
            self.waiters[image_id].discard(event)
            if not self.waiters[image_id]:
                del self.waiters[image_id]
