"""The parts the API is made of, built once per process by `build_services`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from thumbnailer.api import errors
from thumbnailer.api.ratelimit import RateLimiter
from thumbnailer.auth import TokenVerifier
from thumbnailer.broker import Broker, Topology
from thumbnailer.config import Settings
from thumbnailer.ingest import Ingest, Limits
from thumbnailer.lifecycle import Reprocessor
from thumbnailer.repo import IdempotencyKeys, Repo, StatusNotifier
from thumbnailer.store import Store, open_store
from thumbnailer.variants import VariantLimits, VariantRequests


@dataclass
class Services:
    settings: Settings
    repo: Repo
    store: Store
    broker: Broker
    notifier: StatusNotifier
    ingest: Ingest
    variants: VariantRequests
    uploads: UploadGate
    limiter: RateLimiter
    verifier: TokenVerifier | None  # None in AUTH_MODE=none: every request is the operator
    idempotency_keys: IdempotencyKeys
    reprocessor: Reprocessor


class UploadGate:
    """Counts uploads being received; past the limit a new one is turned away, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.active >= self.limit:
            raise errors.TOO_MANY_UPLOADS
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def build_services(settings: Settings) -> Services:
    topology = Topology.from_settings(settings)
    repo = Repo.connect(settings.database_url, settings.database_pool_size)
    store = open_store(settings)
    broker = Broker(settings.rabbitmq_url, topology)
    settings.spool_path.mkdir(parents=True, exist_ok=True)
    variants = VariantRequests(repo, broker, VariantLimits.from_settings(settings))
    return Services(
        settings=settings,
        repo=repo,
        store=store,
        broker=broker,
        notifier=StatusNotifier(settings.database_url),
        ingest=Ingest(repo, store, broker, Limits.from_settings(settings), variants),
        variants=variants,
        uploads=UploadGate(settings.max_concurrent_uploads),
        limiter=RateLimiter(settings),
        verifier=TokenVerifier(settings) if settings.auth_mode == "jwt" else None,
        idempotency_keys=IdempotencyKeys(repo),
        reprocessor=Reprocessor(repo, broker),
    )
