"""Health and probes: what Kubernetes and operators ask."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Response

from thumbnailer.api.deps import BrokerDep, LimiterDep, RepoDep, StoreDep
from thumbnailer.api.ratelimit import RateLimiter
from thumbnailer.api.schemas import HealthOut, ProbeOut
from thumbnailer.broker import Broker
from thumbnailer.repo import Repo, RepoUnavailable
from thumbnailer.store import Store

router = APIRouter()


async def dependencies_up(repo: Repo, broker: Broker, store: Store) -> dict[str, bool]:
    database, storage = await asyncio.gather(_database_up(repo), _storage_up(store))
    return {"database": database, "rabbitmq": broker.is_connected, "storage": storage}


async def _database_up(repo: Repo) -> bool:
    try:
        return await asyncio.wait_for(repo.ping(), timeout=2.0)
    except (RepoUnavailable, TimeoutError):
        return False


async def _storage_up(store: Store) -> bool:
    """The directory is writable, or the bucket answers (one small request)."""
    try:
        return await asyncio.wait_for(store.healthy(), timeout=3.0)
    except TimeoutError:
        return False


async def _redis_up(limiter: RateLimiter) -> bool:
    try:
        return await asyncio.wait_for(limiter.healthy(), timeout=1.0)
    except TimeoutError:
        return False


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "A dependency is down"}},
    summary="Dependencies' health",
)
async def health(
    response: Response, repo: RepoDep, broker: BrokerDep, store: StoreDep, limiter: LimiterDep
) -> HealthOut:
    services = await dependencies_up(repo, broker, store)
    healthy = all(services.values())
    response.status_code = 200 if healthy else 503
    # Reported, never unhealthy: without Redis requests are served, only not rate limited.
    return HealthOut(
        status="healthy" if healthy else "unhealthy",
        services={**services, "redis": await _redis_up(limiter)},
        timestamp=datetime.now(UTC),
    )


@router.get("/livez", response_model=ProbeOut, summary="Liveness: the process answers")
async def livez() -> ProbeOut:
    return ProbeOut(status="ok")


@router.get(
    "/readyz",
    response_model=ProbeOut,
    responses={503: {"model": ProbeOut, "description": "Not ready"}},
    summary="Readiness: database, broker and storage reachable",
)
async def readyz(response: Response, repo: RepoDep, broker: BrokerDep, store: StoreDep) -> ProbeOut:
    ready = all((await dependencies_up(repo, broker, store)).values())
    response.status_code = 200 if ready else 503
    return ProbeOut(status="ok" if ready else "unavailable")
