"""A TCP proxy the tests control, to cut and restore a service's link to a shared server.

It counts what it did, so a test can prove its fault took effect: `connections` accepted,
`cuts` made and `links_cut` (client connections open at a cut, aborted by it). `url()` refuses
a URL that does not name the proxied target literally, so a service cannot bypass the proxy by
being configured with another spelling of the same server (`localhost`, another port).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from tests.support import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every link and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.clients: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.cuts = 0
        self.links_cut = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TcpProxy:
        self.thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def cut(self) -> int:
        """Close the listener and every open connection: both ends see the link die.

        Returns how many client connections were open and aborted."""
        aborted = self._run(self._cut())
        assert isinstance(aborted, int)
        return aborted

    def wait_for_clients(self, count: int, timeout: float) -> None:
        """Block until `count` client connections are open, so a cut has something to cut."""
        deadline = time.monotonic() + timeout
        while len(self.clients) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.clients)} of {count} clients linked")
            time.sleep(0.05)

    def restore(self) -> None:
        self._run(self._listen())

    async def _listen(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _cut(self) -> int:
        if self.server is not None:
            self.server.close()
            self.server = None
        aborted = len(self.clients)
        for writer in list(self.links):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.links.clear()
        self.clients.clear()
        self.cuts += 1
        self.links_cut += aborted
        return aborted

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, upstream_writer}
        self.clients.add(writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )
        self.clients.discard(writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.links.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def url(self, template: str) -> str:
        """Rewrite a URL's host:port to go through this proxy; refuse one that names another."""
        host, port = self.target
        literal = f"{host}:{port}"
        if template.count(literal) != 1:
            raise ValueError(
                f"{template!r} does not name {literal} exactly once: it would bypass the proxy"
            )
        return template.replace(literal, f"127.0.0.1:{self.port}")
