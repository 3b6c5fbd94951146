"""Local HTTP servers a URL-ingest or webhook test starts: image sources, receivers, traps.

Each counts the TCP connections it accepted, so a test can prove the guard never connected.
They run in threads of the test process; the service processes reach them over real TCP.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[BaseHTTPRequestHandler], None]


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        accepted = super().get_request()
        with self.lock:
            self.connections += 1
        return accepted

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class _Handler(BaseHTTPRequestHandler):
    server: CountingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers), body))
        route = self.server.routes.get(path)
        if route is None:
            send(self, 404, b"not here", "text/plain")
            return
        route(self)

    do_GET = _dispatch
    do_POST = _dispatch


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def body_route(body: bytes, content_type: str = "image/jpeg", status: int = 200) -> Route:
    return lambda handler: send(handler, status, body, content_type)


def redirect_route(location: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def chunked_route(chunk: bytes, chunks: int) -> Route:
    """A body with no Content-Length: only counting while streaming can stop it."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for _ in range(chunks):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    return route


def drip_route(total: int = 1000, every: float = 1.0) -> Route:
    """One byte a second: each read succeeds in time, only a total deadline ends it."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        try:
            for _ in range(total):
                handler.wfile.write(b"\xff")
                handler.wfile.flush()
                time.sleep(every)
        except OSError:
            pass

    return route


@contextmanager
def serving(
    routes: dict[str, Route], tls: ssl.SSLContext | None = None
) -> Iterator[CountingServer]:
    server = CountingServer(routes)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Trap:
    """A bare listener that only counts who connects: the guard must never reach it."""

    sock: socket.socket
    connections: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()


@contextmanager
def trap(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> Iterator[Trap]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(16)
    listener = Trap(sock)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        listener.stopping.set()
        thread.join(2)
        sock.close()


def json_body(raw: bytes) -> Any:
    return json.loads(raw)
