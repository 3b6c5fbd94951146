"""One typed dependency per capability: a route names what it uses, nothing more."""

from __future__ import annotations

import uuid
from typing import Annotated

from asgi_correlation_id import correlation_id
from fastapi import Depends, Header, Request

from thumbnailer import metrics
from thumbnailer.api import errors
from thumbnailer.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from thumbnailer.api.idempotency import Idempotency, parse_key
from thumbnailer.api.proxy import FORWARDED_HOST
from thumbnailer.api.ratelimit import Limit, RateLimiter
from thumbnailer.api.services import Services, UploadGate
from thumbnailer.auth import AuthUnavailable, InvalidToken, Principal
from thumbnailer.broker import Broker
from thumbnailer.config import Settings
from thumbnailer.ingest import Ingest
from thumbnailer.lifecycle import Reprocessor
from thumbnailer.records import ImageRecord
from thumbnailer.repo import KeyName, Repo, StatusNotifier
from thumbnailer.store import Store
from thumbnailer.variants import VariantRequests


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def _settings(request: Request) -> Settings:
    return services(request).settings


def _repo(request: Request) -> Repo:
    return services(request).repo


def _store(request: Request) -> Store:
    return services(request).store


def _broker(request: Request) -> Broker:
    return services(request).broker


def _notifier(request: Request) -> StatusNotifier:
    return services(request).notifier


def _ingest(request: Request) -> Ingest:
    return services(request).ingest


def _variants(request: Request) -> VariantRequests:
    return services(request).variants


def _uploads(request: Request) -> UploadGate:
    return services(request).uploads


def _limiter(request: Request) -> RateLimiter:
    return services(request).limiter


def _reprocessor(request: Request) -> Reprocessor:
    return services(request).reprocessor


def _url_base(request: Request) -> str:
    """Where clients reach us: the configured public URL, else the URL they used.

    In AUTH_MODE=jwt "the URL they used" counts only when a trusted proxy named the host
    (X-Forwarded-Host): a bare Host header is the client's to choose, and a signed URL pointed
    at a host of the client's choosing would hand the signature to it. Otherwise the URLs are
    root-relative.
    """
    settings = services(request).settings
    configured = settings.public_base_url.rstrip("/")
    if configured:
        return configured
    if settings.auth_mode == "jwt" and not request.scope.get(FORWARDED_HOST):
        return ""
    return str(request.base_url).rstrip("/")


async def _principal(request: Request) -> Principal:
    """Who the request acts as: the token's subject in jwt mode, the operator in none mode."""
    verifier = services(request).verifier
    if verifier is None:
        return Principal.operator()
    try:
        return await verifier.principal(request.headers.get("authorization"))
    except InvalidToken as exc:
        metrics.AUTH_FAILURES.labels("missing" if exc.missing else "invalid").inc()
        raise errors.invalid_token(exc.reason, exc.missing) from exc
    except AuthUnavailable as exc:
        raise errors.AUTH_UNAVAILABLE from exc


PrincipalDep = Annotated[Principal, Depends(_principal)]


async def visible_image(repo: Repo, image_id: uuid.UUID, principal: Principal) -> ImageRecord:
    """The row, if the principal may see it; someone else's is exactly as unknown (404)."""
    row = await repo.get(image_id)
    if row is None or not principal.can_see(row.owner):
        raise errors.image_not_found(image_id)
    return row


def _identity(request: Request, principal: Principal) -> str:
    """Whose budget a request spends: the subject, else the (proxy-resolved) client address."""
    if principal.subject is not None:
        return f"sub:{principal.subject}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


async def _spend(request: Request, principal: Principal, limit: Limit) -> None:
    limiter = services(request).limiter
    exceeded = await limiter.hit(limit, _identity(request, principal))
    if exceeded is not None:
        metrics.RATE_LIMITED.labels(limit.name).inc()
        raise errors.rate_limited(
            exceeded.name, exceeded.limit, exceeded.window, exceeded.retry_after, limit.policy()
        )


async def limit_requests(request: Request, principal: PrincipalDep) -> None:
    """RATE_LIMIT_REQUESTS: every /images request."""
    await _spend(request, principal, services(request).limiter.requests)


async def limit_uploads(request: Request, principal: PrincipalDep) -> None:
    """RATE_LIMIT_UPLOADS: POST /images, on top of the request limit."""
    await _spend(request, principal, services(request).limiter.uploads)


def _idempotency(
    request: Request,
    principal: PrincipalDep,
    key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description="Any unique string (a UUID): a retry with it gets the first answer",
        ),
    ] = None,
) -> Idempotency:
    """The request's Idempotency-Key, scoped to its caller and to this route (422 if malformed).

    In AUTH_MODE=none there is no caller to tell apart: keys share one scope, which random keys
    (UUIDs) keep apart.
    """
    found = services(request)
    name = None
    if key is not None:
        route = request.scope.get("route")
        operation = f"{request.method} {getattr(route, 'path', request.url.path)}"
        name = KeyName(principal.subject or "", operation, parse_key(key))
    return Idempotency(found.idempotency_keys, name, found.settings.idempotency_ttl)


def _request_id() -> str | None:
    return correlation_id.get()


SettingsDep = Annotated[Settings, Depends(_settings)]
RepoDep = Annotated[Repo, Depends(_repo)]
StoreDep = Annotated[Store, Depends(_store)]
BrokerDep = Annotated[Broker, Depends(_broker)]
NotifierDep = Annotated[StatusNotifier, Depends(_notifier)]
IngestDep = Annotated[Ingest, Depends(_ingest)]
VariantsDep = Annotated[VariantRequests, Depends(_variants)]
UploadsDep = Annotated[UploadGate, Depends(_uploads)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
ReprocessorDep = Annotated[Reprocessor, Depends(_reprocessor)]
UrlBase = Annotated[str, Depends(_url_base)]
IdempotencyDep = Annotated[Idempotency, Depends(_idempotency)]
RequestId = Annotated[str | None, Depends(_request_id)]
