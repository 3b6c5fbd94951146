"""Idempotency-Key on POST /images: a retry replays the first answer, never a second image."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.auth_support import JWT_SETTINGS, SECRET, bearer, hs_token
from tests.conftest import Services, make_settings
from tests.lifecycle_support import Barrier, GatedStore
from tests.support import ServiceProcess, jpeg_bytes, wait_until_ready
from thumbnailer.api import errors
from thumbnailer.api.app import create_app
from thumbnailer.api.idempotency import fingerprint_json, parse_key
from thumbnailer.config import Settings

JPEG = jpeg_bytes(320, 240)
OTHER = jpeg_bytes(320, 240, color=(10, 200, 10))


def upload(
    data: bytes = JPEG, key: str | None = None, name: str = "photo.jpg"
) -> dict[str, object]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return {"files": {"file": (name, data, "image/jpeg")}, "headers": headers}


async def images_in(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM images"))
    finally:
        await conn.close()


def originals(settings: Settings) -> list[Path]:
    return [p for p in (settings.storage_path / "originals").rglob("*") if p.is_file()]


def test_keys_are_structured_field_strings_or_bare() -> None:
    assert parse_key('"8e03978e-40d5-43e8-bc93-6894a57f9324"') == (
        "8e03978e-40d5-43e8-bc93-6894a57f9324"
    )
    assert parse_key("abc-123") == "abc-123"
    for bad in ("", '""', "a b", "x" * 256, "é", 'a"b'):
        with pytest.raises(errors.ApiError) as caught:
            parse_key(bad)
        assert caught.value.code == "invalid_idempotency_key"


def test_json_fingerprints_ignore_key_order_and_tell_values_apart() -> None:
    assert fingerprint_json({"a": 1, "b": [2]}) == fingerprint_json({"b": [2], "a": 1})
    assert fingerprint_json({"a": 1}) != fingerprint_json({"a": 2})


async def test_a_retry_replays_the_first_answer_and_stores_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    before = await images_in(settings.database_url)
    key = str(uuid.uuid4())
    first = await client.post("/images", **upload(key=key))  # type: ignore[arg-type]
    again = await client.post("/images", **upload(key=f'"{key}"'))  # type: ignore[arg-type]
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await images_in(settings.database_url) == before + 1
    assert len(originals(settings)) == before + 1
    # Without a key, or with another, the same bytes are a new upload.
    fresh = await client.post("/images", **upload(key=str(uuid.uuid4())))  # type: ignore[arg-type]
    assert fresh.json()["id"] != first.json()["id"]


async def test_the_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    assert (await client.post("/images", **upload(key=key))).status_code == 202  # type: ignore[arg-type]
    for changed in (upload(OTHER, key), upload(JPEG, key, name="renamed.jpg")):
        reused = await client.post("/images", **changed)  # type: ignore[arg-type]
        assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")


async def test_a_malformed_key_is_422_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    response = await client.post("/images", **upload(key="not a key"))  # type: ignore[arg-type]
    assert (response.status_code, response.json()["code"]) == (422, "invalid_idempotency_key")


async def test_a_failed_request_gives_its_key_back(client: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    refused = await client.post("/images", **upload(b"not an image", key))  # type: ignore[arg-type]
    assert refused.status_code == 415
    # The retry (here with the file the client meant to send) runs for real.
    assert (await client.post("/images", **upload(JPEG, key))).status_code == 202  # type: ignore[arg-type]


async def test_a_request_still_in_progress_is_409(app: FastAPI, client: httpx.AsyncClient) -> None:
    services = app.state.services
    gated = GatedStore(services.settings.storage_path)
    gated.before_put_file = barrier = Barrier()
    services.ingest.store = gated
    key = str(uuid.uuid4())
    first = asyncio.create_task(client.post("/images", **upload(key=key)))  # type: ignore[arg-type]
    await asyncio.wait_for(barrier.reached.wait(), 10)
    busy = await client.post("/images", **upload(key=key))  # type: ignore[arg-type]
    assert (busy.status_code, busy.json()["code"]) == (409, "idempotency_key_in_progress")
    assert busy.headers["retry-after"] == "1"
    barrier.opened.set()
    accepted = await asyncio.wait_for(first, 10)
    assert accepted.status_code == 202
    replayed = await client.post("/images", **upload(key=key))  # type: ignore[arg-type]
    assert replayed.json()["id"] == accepted.json()["id"]


async def test_keys_belong_to_their_caller(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **JWT_SETTINGS)
    app = create_app(settings)
    key = str(uuid.uuid4())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        ids = set()
        for subject in ("alice", "bob", "alice"):
            headers = {"Idempotency-Key": key, **bearer(hs_token(subject))}
            sent = await client.post("/images", files={"file": ("p.jpg", JPEG)}, headers=headers)
            assert sent.status_code == 202
            ids.add(sent.json()["id"])
        assert len(ids) == 2  # alice's retry replayed; bob's upload is his own


@pytest.fixture
def empty_database(database_url: str) -> None:
    """Rows the in-process tests above left PROCESSING (no worker there) would be republished
    by the real API's relay, with files in another test's storage: start from none."""

    async def truncate() -> None:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("TRUNCATE images, idempotency_keys CASCADE")
        finally:
            await conn.close()

    asyncio.run(truncate())


async def post_many(base_url: str, key: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return list(
            await asyncio.gather(
                *(client.post("/images", **upload(key=key)) for _ in range(count))  # type: ignore[arg-type]
            )
        )


def test_concurrent_requests_with_one_key_make_one_image(
    empty_database: None, services: Services
) -> None:
    before = asyncio.run(images_in(services.settings.database_url))
    key = str(uuid.uuid4())
    answers = asyncio.run(post_many(services.base_url, key, 12))
    accepted = [a for a in answers if a.status_code == 202]
    assert {a.status_code for a in answers} <= {202, 409}
    assert len({a.json()["id"] for a in accepted}) == 1
    for busy in (a for a in answers if a.status_code == 409):
        assert busy.json()["code"] == "idempotency_key_in_progress"
    assert asyncio.run(images_in(services.settings.database_url)) == before + 1


def test_a_replay_survives_an_api_restart(empty_database: None, services: Services) -> None:
    before = asyncio.run(images_in(services.settings.database_url))
    key = str(uuid.uuid4())
    first = httpx.post(f"{services.base_url}/images", **upload(key=key))  # type: ignore[arg-type]
    assert first.status_code == 202
    services.api.stop()
    services.api = ServiceProcess("api", services.env, services.artifacts / "api-restarted.log")
    services.api.start()
    wait_until_ready(f"{services.base_url}/readyz")
    again = httpx.post(f"{services.base_url}/images", **upload(key=key))  # type: ignore[arg-type]
    assert (again.status_code, again.json()) == (202, first.json())
    assert again.headers["location"] == first.headers["location"]
    assert asyncio.run(images_in(services.settings.database_url)) == before + 1


async def _has_table(url: str, table: str) -> bool:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
    finally:
        await conn.close()


def test_migration_0005_goes_up_and_down() -> None:
    from alembic import command

    from tests.conftest import _drop_database, database_url_for
    from tests.support import unique_name
    from tests.test_migrations import alembic
    from thumbnailer.repo.admin import ensure_database

    name = unique_name("thumbnailer_migration")
    url = database_url_for(name).replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(ensure_database(url))
    try:
        command.upgrade(alembic(url), "0005")
        assert asyncio.run(_has_table(url, "idempotency_keys"))
        command.downgrade(alembic(url), "0004")
        assert not asyncio.run(_has_table(url, "idempotency_keys"))
        command.upgrade(alembic(url), "0005")
    finally:
        asyncio.run(_drop_database(name))


async def test_a_holder_that_died_frees_its_key_after_the_lease(settings: Settings) -> None:
    from thumbnailer.repo import IdempotencyKeys, KeyName, Repo

    repo = Repo.connect(settings.database_url, 1)
    try:
        keys = IdempotencyKeys(repo)
        name = KeyName("carol", "POST /images", str(uuid.uuid4()))
        assert await keys.claim(name, "a" * 64, ttl=3600, lease=0.2) is None
        held = await keys.claim(name, "a" * 64, ttl=3600, lease=0.2)
        assert held is not None
        assert held.in_progress  # 409 while the lease runs
        await asyncio.sleep(0.3)  # its process died: it never completes nor releases
        other = await keys.claim(name, "b" * 64, ttl=3600, lease=60)
        assert other is not None  # another body still may not take it (422)
        assert other.fingerprint == "a" * 64
        assert await keys.claim(name, "a" * 64, ttl=3600, lease=60) is None  # the retry may
        await keys.complete(name, "a" * 64, 202, {"body": {"id": "x"}, "headers": {}})
        done = await keys.claim(name, "a" * 64, ttl=3600, lease=60)
        assert done is not None
        assert (done.status_code, done.response) == (202, {"body": {"id": "x"}, "headers": {}})
    finally:
        await repo.close()
