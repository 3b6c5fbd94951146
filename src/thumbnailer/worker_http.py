"""The worker's small HTTP server: liveness, readiness and metrics for Kubernetes and Prometheus.

It runs inside the worker's own event loop, so `/livez` answering proves the loop is not blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thumbnailer import metrics


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the worker that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_app(is_ready: Callable[[], bool]) -> Starlette:
    async def livez(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ready = is_ready()
        return JSONResponse(
            {"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503
        )

    async def metrics_endpoint(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return Starlette(
        routes=[
            Route("/livez", livez),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )


def bind(port: int) -> socket.socket:
    """The listening socket, bound now so a taken port fails the worker's start at once."""
    try:
        return socket.create_server(("0.0.0.0", port))  # noqa: S104 - kubelet probes come off-host
    except OSError as exc:
        raise OSError(exc.errno, f"worker HTTP port {port}: {exc.strerror}") from exc


def start(port: int, is_ready: Callable[[], bool]) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    # uvicorn would bind inside its task and sys.exit() there on failure, which leaves the
    # worker neither serving nor exiting; binding here turns that into a plain, early error.
    listener = bind(port)
    config = uvicorn.Config(build_app(is_ready), log_config=None, access_log=False)
    server = _QuietServer(config)
    return server, asyncio.create_task(server.serve(sockets=[listener]))
