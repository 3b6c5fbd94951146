"""What web front ends rely on: CORS, ETag/304, Retry-After, long-polling and the list."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import delete_queues, make_settings
from tests.support import jpeg_bytes
from thumbnailer.api.app import create_app
from thumbnailer.config import Settings

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


@asynccontextmanager
async def listening_client(
    settings: Settings, fallback_poll: float = 60.0
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An in-process API whose LISTEN connection is up, with a fallback poll (used only while
    the listener is down) longer than any limit below: a wait that ends early was woken."""
    app = create_app(settings)
    notifier = app.state.services.notifier
    notifier.fallback_poll = fallback_poll
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.services.broker.wait_connected(), 10)
        deadline = time.monotonic() + 10
        while not notifier.listening:
            assert time.monotonic() < deadline, "the status listener never connected"
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


@pytest.fixture
async def listening(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with listening_client(settings) as pair:
        yield pair


async def test_wait_returns_when_the_status_changes(
    listening: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = listening
    image_id = await upload(client)
    repo = app.state.services.repo

    async def finish_soon() -> float:
        await asyncio.sleep(0.5)
        await repo.mark_done(uuid.UUID(image_id), {})
        return time.monotonic()

    started = time.monotonic()
    finisher = asyncio.create_task(finish_soon())
    response = await client.get(f"/images/{image_id}?wait=5")
    returned = time.monotonic()
    changed = await finisher
    assert response.json()["status"] == "DONE"
    assert "retry-after" not in response.headers
    # Held until the change (not a plain read), released by its NOTIFY (not the 5 s limit and
    # not a fallback poll, which is 60 s here).
    assert returned - started >= 0.5
    assert returned - changed < 0.5, returned - changed


async def test_no_poll_outlives_its_change(listening: tuple[FastAPI, httpx.AsyncClient]) -> None:
    """Many polls, each on a row that changes within milliseconds of the poll being sent: the
    change lands between the poll's first read and its wait as often as the race allows."""
    app, client = listening
    repo = app.state.services.repo
    lateness: list[float] = []
    # Small rounds keep the loop and the pool uncongested, so a late answer means a lost
    # wake-up (held until the 5 s wait ran out), not a busy machine.
    for round_ in range(25):
        ids = [await upload(client) for _ in range(8)]

        async def poll_while_it_finishes(image_id: str, delay: float) -> tuple[str, float]:
            async def finish() -> float:
                await asyncio.sleep(delay)
                assert await repo.mark_done(uuid.UUID(image_id), {})
                return time.monotonic()

            finisher = asyncio.create_task(finish())
            response = await client.get(f"/images/{image_id}?wait=5")
            returned = time.monotonic()
            return response.json()["status"], returned - await finisher

        results = await asyncio.gather(
            *(
                poll_while_it_finishes(i, ((round_ * 8 + n) % 24) * 0.0005)
                for n, i in enumerate(ids)
            )
        )
        assert [status for status, _ in results] == ["DONE"] * len(ids)
        lateness += [late for _, late in results]
    worst = max(lateness)
    assert worst < 0.75, f"a poll outlived its change by {worst:.2f} s"


async def test_wait_times_out_with_no_change(client: httpx.AsyncClient) -> None:
    image_id = await upload(client)
    first = await client.get(f"/images/{image_id}")
    started = time.monotonic()
    response = await client.get(
        f"/images/{image_id}?wait=1", headers={"If-None-Match": first.headers["etag"]}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 304
    assert 1.0 <= elapsed <= 2.0, elapsed  # held the whole second, then answered


async def test_wait_is_capped_by_max_poll_wait(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "s", max_poll_wait=1.0)
    try:
        async with listening_client(settings) as (_, client):
            image_id = await upload(client)
            first = await client.get(f"/images/{image_id}")
            started = time.monotonic()
            response = await client.get(
                f"/images/{image_id}?wait=30", headers={"If-None-Match": first.headers["etag"]}
            )
            elapsed = time.monotonic() - started
    finally:
        await delete_queues(settings)
    assert response.status_code == 304
    assert 1.0 <= elapsed <= 2.0, elapsed  # MAX_POLL_WAIT, not the 30 s asked for


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
    bad_cursor = await client.get("/images", params={"cursor": "garbage!"})
    assert (bad_cursor.status_code, bad_cursor.json()["code"]) == (422, "invalid_cursor")
    assert (await client.get("/images", params={"status": "NOPE"})).status_code == 422
    assert (await client.get("/images", params={"limit": "1000"})).status_code == 422


async def test_pages_are_served_with_their_content(client: httpx.AsyncClient) -> None:
    upload_page = await client.get("/")
    assert upload_page.status_code == 200
    assert upload_page.headers["content-type"].startswith("text/html")
    assert re.search(r'<input id="file" type="file" accept="image/jpeg,image/png', upload_page.text)
    assert 'id="uploads"' in upload_page.text
    dashboard = await client.get("/dashboard")
    assert dashboard.status_code == 200
    assert re.search(
        r"<table>.*<thead>.*<th>status</th>.*<tbody id=\"rows\">", dashboard.text, re.S
    )
    assert 'id="status"' in dashboard.text
    loaded = {
        page: re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)"', response.text)
        for page, response in (("/", upload_page), ("/dashboard", dashboard))
    }
    assert loaded == {
        "/": ["/static/style.css", "/static/auth.js", "/static/app.js"],
        "/dashboard": ["/static/style.css", "/static/auth.js", "/static/dashboard.js"],
    }
    for url in {url for urls in loaded.values() for url in urls}:
        response = await client.get(url)
        assert response.status_code == 200, url
        kind = "text/css" if url.endswith(".css") else "javascript"
        assert kind in response.headers["content-type"], (url, response.headers["content-type"])
        assert len(response.content) > 200, url
    # The scripts talk to the API they are served with.
    assert "/images" in (await client.get("/static/app.js")).text
    assert "/images" in (await client.get("/static/dashboard.js")).text
