"""What web front ends rely on: CORS, ETag/304, Retry-After, long-polling and the list."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import make_settings
from tests.support import jpeg_bytes
from thumbnailer.api.app import create_app

ALLOWED = "https://app.example.com"


@pytest.fixture
async def cors_client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, tmp_path / "s", cors_origins=[ALLOWED]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_cors_preflight_from_allowed_and_refused_origins(
    cors_client: httpx.AsyncClient,
) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-request-id",
    }
    allowed = await cors_client.options("/images", headers={"Origin": ALLOWED, **ask})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in allowed.headers["access-control-allow-methods"]
    refused = await cors_client.options(
        "/images", headers={"Origin": "https://evil.example", **ask}
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_cors_actual_request_exposes_what_front_ends_read(
    cors_client: httpx.AsyncClient,
) -> None:
    files = {"file": ("a.jpg", jpeg_bytes(64, 64))}
    allowed = await cors_client.post("/images", files=files, headers={"Origin": ALLOWED})
    assert allowed.status_code == 202
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    exposed = allowed.headers["access-control-expose-headers"].lower()
    assert {"location", "etag", "x-request-id", "retry-after"} <= set(exposed.split(", "))
    refused = await cors_client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in refused.headers


async def upload(client: httpx.AsyncClient) -> str:
    response = await client.post("/images", files={"file": ("a.jpg", jpeg_bytes(64, 64))})
    assert response.status_code == 202
    return str(response.json()["id"])


async def test_etag_304_and_retry_after_while_not_terminal(client: httpx.AsyncClient) -> None:
    image_id = await upload(client)
    first = await client.get(f"/images/{image_id}")
    assert first.headers["retry-after"] == "1"
    assert first.headers["cache-control"] == "no-cache"
    again = await client.get(
        f"/images/{image_id}", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]


async def test_wait_returns_early_when_the_status_changes(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    image_id = await upload(client)
    repo = app.state.services.repo

    async def finish_soon() -> None:
        await asyncio.sleep(0.5)
        await repo.mark_done(uuid.UUID(image_id), {})

    started = time.monotonic()
    finisher = asyncio.create_task(finish_soon())
    response = await client.get(f"/images/{image_id}?wait=5")
    elapsed = time.monotonic() - started
    await finisher
    assert response.json()["status"] == "DONE"
    assert "retry-after" not in response.headers
    assert elapsed < 4.5  # woke on the change, before the 5 s wait ran out


async def test_wait_times_out_with_no_change(client: httpx.AsyncClient) -> None:
    image_id = await upload(client)
    first = await client.get(f"/images/{image_id}")
    response = await client.get(
        f"/images/{image_id}?wait=1", headers={"If-None-Match": first.headers["etag"]}
    )
    assert response.status_code == 304


async def test_wait_is_bounded_and_validated(client: httpx.AsyncClient) -> None:
    image_id = await upload(client)
    assert (await client.get(f"/images/{image_id}?wait=-1")).status_code == 422
    assert (await client.get(f"/images/{image_id}?wait=soon")).status_code == 422


async def test_list_is_newest_first_with_cursor_and_filter(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    ids = [await upload(client) for _ in range(5)]
    await app.state.services.repo.mark_error(uuid.UUID(ids[1]), "test reason")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/images", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    mine = [image_id for image_id in seen if image_id in ids]
    assert mine == list(reversed(ids))
    errors = (await client.get("/images", params={"status": "ERROR", "limit": "100"})).json()
    assert ids[1] in [item["id"] for item in errors["items"]]
    assert all(item["status"] == "ERROR" for item in errors["items"])
    assert (await client.get("/images", params={"cursor": "garbage!"})).status_code == 422
    assert (await client.get("/images", params={"status": "NOPE"})).status_code == 422
    assert (await client.get("/images", params={"limit": "1000"})).status_code == 422


async def test_pages_are_served(client: httpx.AsyncClient) -> None:
    for path in ("/", "/dashboard", "/static/app.js", "/static/style.css"):
        response = await client.get(path)
        assert response.status_code == 200, path
