"""Wake long-polling requests when a row's status changes (PostgreSQL LISTEN/NOTIFY).

One listening connection per API process, outside the pool; a waiting request holds no
database connection, only an asyncio.Event. If the listener is down, waits fall back to short
sleeps so callers re-read the row.

A caller subscribes *before* it reads the row and re-reads after every wake-up:

    with notifier.watch(image_id) as watch:
        row = await load()
        while not changed(row):
            await watch.wait(remaining)
            row = await load()

A NOTIFY that arrives between the read and the wait sets the watch's event, so the wait returns
at once instead of sleeping through a change that already happened (a lost wake-up).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

from thumbnailer.logging import get_logger
from thumbnailer.repo.schema import STATUS_CHANNEL

log = get_logger(__name__)
FALLBACK_POLL = 1.0
FEED_LIMIT = 10_000  # ids a slow feed subscriber may fall behind before it must resync


class Watch:
    """One subscriber's wake-up flag: set by a NOTIFY for its id, cleared by each wait."""

    def __init__(self, notifier: StatusNotifier) -> None:
        self.notifier = notifier
        self.event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Return at once if a change was signalled since the last wait, else at the next one,
        after `seconds`, or after the fallback poll while the listener is down."""
        limit = seconds if self.notifier.listening else min(seconds, self.notifier.fallback_poll)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), limit)
        self.event.clear()


class Feed:
    """One subscriber to every row's changes: the ids NOTIFY named, in commit order.

    `resync` is set when ids may have been missed (the listener was down, or the subscriber fell
    more than FEED_LIMIT ids behind): the subscriber must then re-read by time instead.
    """

    def __init__(self, notifier: StatusNotifier) -> None:
        self.notifier = notifier
        self.ids: list[str] = []
        self.resync = False
        self.event = asyncio.Event()

    def push(self, image_id: str) -> None:
        if len(self.ids) >= FEED_LIMIT:
            self.ids.clear()
            self.resync = True
        else:
            self.ids.append(image_id)
        self.event.set()

    def lost(self) -> None:
        self.resync = True
        self.event.set()

    async def next(self, seconds: float) -> tuple[list[str], bool]:
        """The ids since the last call and whether to resync; waits up to `seconds` for one
        (the fallback poll while the listener is down, which asks for a resync)."""
        listening = self.notifier.listening
        limit = seconds if listening else min(seconds, self.notifier.fallback_poll)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), limit)
        self.event.clear()
        ids, resync = self.ids, self.resync or not listening
        self.ids, self.resync = [], False
        return ids, resync


class StatusNotifier:
    def __init__(self, database_url: str, fallback_poll: float = FALLBACK_POLL) -> None:
        url = make_url(database_url)
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.fallback_poll = fallback_poll
        self.waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.feeds: set[Feed] = set()
        self.listening = False

    async def run(self) -> None:
        """Keep one LISTEN connection open, reconnecting after any loss."""
        while True:
            try:
                await self._listen_until_closed()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.debug("status_listener_down", error=str(exc))
            if self.listening:
                self.listening = False
                # Waits started while listening would sleep their whole limit: NOTIFYs sent
                # while the link is down are gone. Wake them to re-read and fall back to polls.
                self._wake_all()
            await asyncio.sleep(self.fallback_poll)

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
        for feed in self.feeds:
            feed.push(payload)

    def _wake_all(self) -> None:
        for events in self.waiters.values():
            for event in events:
                event.set()
        for feed in self.feeds:
            feed.lost()

    @contextlib.contextmanager
    def watch(self, image_id: str) -> Iterator[Watch]:
        """Subscribe to changes of one row for the duration of the block (enter before reading)."""
        watch = Watch(self)
        self.waiters[image_id].add(watch.event)
        try:
            yield watch
        finally:
            self.waiters[image_id].discard(watch.event)
            if not self.waiters[image_id]:
                del self.waiters[image_id]

    @contextlib.contextmanager
    def watch_all(self) -> Iterator[Feed]:
        """Subscribe to every row's changes for the duration of the block (enter before reading)."""
        feed = Feed(self)
        self.feeds.add(feed)
        try:
            yield feed
        finally:
            self.feeds.discard(feed)
