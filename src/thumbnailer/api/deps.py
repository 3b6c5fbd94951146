"""One typed dependency per capability: a route names what it uses, nothing more."""

from __future__ import annotations

from typing import Annotated

from asgi_correlation_id import correlation_id
from fastapi import Depends, Request

from thumbnailer.api.services import Services, UploadGate
from thumbnailer.broker import Broker
from thumbnailer.config import Settings
from thumbnailer.ingest import Ingest
from thumbnailer.repo import Repo, StatusNotifier
from thumbnailer.store import Store


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


def _uploads(request: Request) -> UploadGate:
    return services(request).uploads


def _url_base(request: Request) -> str:
    """Where clients reach us: the configured public URL, else the URL they used."""
    configured = services(request).settings.public_base_url.rstrip("/")
    return configured or str(request.base_url).rstrip("/")


def _request_id() -> str | None:
    return correlation_id.get()


SettingsDep = Annotated[Settings, Depends(_settings)]
RepoDep = Annotated[Repo, Depends(_repo)]
StoreDep = Annotated[Store, Depends(_store)]
BrokerDep = Annotated[Broker, Depends(_broker)]
NotifierDep = Annotated[StatusNotifier, Depends(_notifier)]
IngestDep = Annotated[Ingest, Depends(_ingest)]
UploadsDep = Annotated[UploadGate, Depends(_uploads)]
UrlBase = Annotated[str, Depends(_url_base)]
RequestId = Annotated[str | None, Depends(_request_id)]
