"""What the routes share: settings, repo, store and broker, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from thumbnailer.api.notify import StatusNotifier
from thumbnailer.broker import Broker
from thumbnailer.config import Settings
from thumbnailer.repo import Repo
from thumbnailer.store import LocalStore


@dataclass
class AppState:
    settings: Settings
    repo: Repo
    store: LocalStore
    broker: Broker
    notifier: StatusNotifier

    def url_base(self, request: Request) -> str:
        """Where clients reach us: the configured public URL, else the URL they used."""
        return self.settings.public_base_url.rstrip("/") or str(request.base_url).rstrip("/")


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.services
    return state
