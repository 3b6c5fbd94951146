"""The FastAPI application: composition of routes, middleware and the process's resources."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thumbnailer import metrics
from thumbnailer.api.errors import install_error_handlers
from thumbnailer.api.proxy import ForwardedHeadersMiddleware, TrustedProxies
from thumbnailer.api.routes import events, health, images, pages, variants
from thumbnailer.api.services import Services, build_services
from thumbnailer.config import Settings, get_settings
from thumbnailer.ingest import sweep_spool
from thumbnailer.logging import configure_logging, get_logger
from thumbnailer.relay import Relay
from thumbnailer.retention import Sweeper

log = get_logger(__name__)
REQUEST_ID = "X-Request-ID"
GAUGE_INTERVAL = 10.0
EXPOSED_HEADERS = ["Location", "ETag", "Retry-After", REQUEST_ID, "RateLimit", "RateLimit-Policy"]
EXPOSED_HEADERS += ["WWW-Authenticate", "Idempotent-Replayed"]
_REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# How long shutdown waits for a cancelled background task: one stuck in a dead connection's
# cleanup must not hold the process (and a rolling deploy) for ever.
TASK_STOP_GRACE = 5.0


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=TASK_STOP_GRACE)
    if pending:
        log.warning("background_tasks_left_running", tasks=[t.get_name() for t in pending])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    state = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        swept = await asyncio.to_thread(
            sweep_spool, settings.spool_path, 2 * settings.upload_timeout
        )
        if swept:
            log.info("spool_swept", files=swept)
        await state.store.open()
        state.broker.start()
        relay = Relay(
            state.repo, state.broker, settings.relay_interval, settings.processing_timeout
        )
        relay_task = asyncio.create_task(relay.run())
        sweeper = Sweeper.from_settings(state.repo, state.store, settings)
        sweeper_task = asyncio.create_task(sweeper.run())
        gauges_task = asyncio.create_task(refresh_gauges(state))
        notifier_task = asyncio.create_task(state.notifier.run())
        app.state.relay = relay
        log.info("api_started", port=settings.api_port)
        try:
            yield
        finally:
            await _stop(relay_task, sweeper_task, gauges_task, notifier_task)
            await state.broker.close()
            await state.repo.close()
            await state.store.close()
            await state.limiter.close()
            if state.verifier is not None:
                await state.verifier.close()
            log.info("api_stopped")

    app = FastAPI(
        title="thumbnailer",
        version="0.1.0",
        summary="Upload an image, poll for its 100, 300 and 1200 px thumbnails.",
        lifespan=lifespan,
    )
    app.state.services = state
    if settings.auth_mode == "jwt":
        document_bearer_auth(app)
    install_error_handlers(app)
    for module in (images, variants, events, health, pages):
        app.include_router(module.router)
    instrumentator = Instrumentator(
        should_group_status_codes=False, excluded_handlers=["/metrics"]
    ).instrument(app)
    if settings.auth_mode == "none":
        instrumentator.expose(app, include_in_schema=False)
    # In jwt mode the API port is public: /metrics is served on METRICS_PORT (cli.serve_api).
    app.mount("/files", state.store.file_server())
    app.mount("/static", StaticFiles(packages=[("thumbnailer", "static")]), name="static")
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name=REQUEST_ID,
        validator=lambda value: bool(_REQUEST_ID_SHAPE.match(value)),
    )
    # Outermost: everything inside sees the client address and scheme a trusted proxy gave.
    app.add_middleware(
        ForwardedHeadersMiddleware, trusted=TrustedProxies(settings.forwarded_allow_ips)
    )
    return app


def document_bearer_auth(app: FastAPI) -> None:
    """OpenAPI (and so /docs' Authorize button) says the /images routes take a bearer JWT."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(("/images", "/events")):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def refresh_gauges(state: Services, interval: float = GAUGE_INTERVAL) -> None:
    """Row counts and queue depths, refreshed on a timer so a scrape never waits on them."""
    while True:
        try:
            for status, count in (await state.repo.count_by_status()).items():
                metrics.IMAGES_BY_STATUS.labels(status).set(count)
            for queue, depth in (await state.broker.queue_depths()).items():
                metrics.QUEUE_MESSAGES.labels(queue).set(depth)
        except Exception as exc:  # a dependency is down; health endpoints report that
            log.debug("gauges_refresh_failed", error=str(exc))
        await asyncio.sleep(interval)


class AccessLogMiddleware:
    """One JSON line per request, carrying the request id bound for every log line inside it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=correlation_id.get())
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
