"""The preflight names an unusable server instead of letting the suite hang on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import preflight
from tests.support import ADMIN_DATABASE_URL, RABBITMQ_URL, REDIS_URL, free_port


def test_the_shared_servers_pass_the_preflight(tmp_path: Path) -> None:
    preflight.check_servers(ADMIN_DATABASE_URL, RABBITMQ_URL, REDIS_URL, tmp_path)


def test_too_little_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "MIN_FREE_DISK", 1 << 62)
    with pytest.raises(preflight.ServerUnusable, match="MiB free on"):
        preflight.check_disk(tmp_path)


def test_too_few_free_connections_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "MIN_FREE_CONNECTIONS", 1 << 20)
    with pytest.raises(preflight.ServerUnusable, match="connections in use"):
        preflight.check_servers(ADMIN_DATABASE_URL, RABBITMQ_URL, REDIS_URL, Path("."))


@pytest.mark.parametrize("server", ["rabbitmq", "redis"])
def test_a_server_that_is_not_there_is_named(server: str) -> None:
    nowhere = free_port()
    urls = {
        "rabbitmq": (RABBITMQ_URL.replace(":5672", f":{nowhere}"), REDIS_URL),
        "redis": (RABBITMQ_URL, REDIS_URL.replace(":6379", f":{nowhere}")),
    }[server]
    with pytest.raises(preflight.ServerUnusable, match="is not usable"):
        preflight.check_servers(ADMIN_DATABASE_URL, *urls, Path("."))
