"""The parts the API is made of, built once per process by `build_services`."""

from __future__ import annotations

from dataclasses import dataclass

from thumbnailer.api.ratelimit import RateLimiter
from thumbnailer.auth import TokenVerifier
from thumbnailer.broker import Broker, Topology
from thumbnailer.config import Settings
from thumbnailer.ingest import Ingest
from thumbnailer.repo import Repo, StatusNotifier
from thumbnailer.store import Store, open_store


@dataclass
class Services:
    settings: Settings
    repo: Repo
    store: Store
    broker: Broker
    notifier: StatusNotifier
    ingest: Ingest
    limiter: RateLimiter
    verifier: TokenVerifier | None  # None in AUTH_MODE=none: every request is the operator


def build_services(settings: Settings) -> Services:
    topology = Topology(settings.queue_name, settings.max_retries, settings.retry_base_delay)
    repo = Repo.connect(settings.database_url, settings.database_pool_size)
    store = open_store(settings)
    broker = Broker(settings.rabbitmq_url, topology)
    settings.spool_path.mkdir(parents=True, exist_ok=True)
    return Services(
        settings=settings,
        repo=repo,
        store=store,
        broker=broker,
        notifier=StatusNotifier(settings.database_url),
        ingest=Ingest(repo, store, broker, settings.max_image_pixels),
        limiter=RateLimiter(settings),
        verifier=TokenVerifier(settings) if settings.auth_mode == "jwt" else None,
    )
