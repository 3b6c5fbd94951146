"""The HTTP contract, in-process, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI

from tests.conftest import Services, make_settings
from tests.support import free_port, jpeg_bytes, multipart_body, png_bytes
from thumbnailer.api.app import create_app
from thumbnailer.config import Settings
from thumbnailer.records import ThumbnailEntry

JPEG = jpeg_bytes(640, 480)


def upload(data: bytes, name: str = "photo.jpg", kind: str = "image/jpeg") -> dict[str, object]:
    return {"files": {"file": (name, data, kind)}}


async def test_upload_is_accepted_with_location_and_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/images", **upload(JPEG))  # type: ignore[arg-type]
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "status", "message"}
    assert body["status"] in {"NEW", "PROCESSING"}
    assert response.headers["location"] == f"/images/{body['id']}"
    assert response.headers["x-request-id"]


async def test_status_of_an_upload(client: httpx.AsyncClient) -> None:
    created = (await client.post("/images", **upload(JPEG, "holiday.jpg"))).json()  # type: ignore[arg-type]
    response = await client.get(f"/images/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == created["id"]
    assert body["status"] in {"NEW", "PROCESSING", "DONE"}
    assert set(body["thumbnails"]) == {"100x100", "300x300", "1200x1200"}
    assert body["filename"] == "holiday.jpg"
    assert (body["width"], body["height"], body["media_type"]) == (640, 480, "image/jpeg")
    assert body["size_bytes"] == len(JPEG)
    assert body["error"] is None
    assert body["created_at"]
    assert body["updated_at"]


async def test_thumbnails_are_null_until_done(client: httpx.AsyncClient, app: FastAPI) -> None:
    """No worker consumes here: the row stays PROCESSING until the test finishes it."""
    image_id = (await client.post("/images", **upload(JPEG))).json()["id"]  # type: ignore[arg-type]
    entries = {
        label: ThumbnailEntry(
            f"thumbnails/{image_id[:2]}/{image_id}/{label}.jpg", side, side, "image/jpeg"
        )
        for label, side in (("100x100", 100), ("300x300", 300), ("1200x1200", 1200))
    }
    # Thumbnail entries present in the row while it is not DONE (as a retried job may leave
    # them) must still not be handed out.
    engine = app.state.services.repo.engine
    async with engine.begin() as conn:
        await conn.execute(
            sqlalchemy.text("UPDATE images SET thumbnails = CAST(:t AS jsonb) WHERE id = :id"),
            {
                "t": json.dumps({label: e.to_json() for label, e in entries.items()}),
                "id": uuid.UUID(image_id),
            },
        )
    body = (await client.get(f"/images/{image_id}")).json()
    assert body["status"] == "PROCESSING"
    assert body["thumbnails"] == {"100x100": None, "300x300": None, "1200x1200": None}
    assert await app.state.services.repo.mark_done(uuid.UUID(image_id), entries)
    body = (await client.get(f"/images/{image_id}")).json()
    assert body["status"] == "DONE"
    assert body["thumbnails"] == {
        label: f"http://testserver/files/{entry.key}" for label, entry in entries.items()
    }


async def test_original_is_served_immutable_with_etag(client: httpx.AsyncClient) -> None:
    created = (await client.post("/images", **upload(JPEG))).json()  # type: ignore[arg-type]
    url = (await client.get(f"/images/{created['id']}")).json()["original_url"]
    assert url.startswith("http://testserver/files/originals/")
    response = await client.get(url)
    assert response.status_code == 200
    assert response.content == JPEG
    assert response.headers["content-type"] == "image/jpeg"
    assert "immutable" in response.headers["cache-control"]
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    again = await client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304


def raw_get(port: int, target: bytes) -> tuple[int, bytes]:
    """GET `target` exactly as written: no client normalises dot segments or escapes first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


SPOOLED = [
    b"/files/.tmp/planted.jpg",
    b"/files/originals/../.tmp/planted.jpg",
    b"/files/originals/%2e%2e/.tmp/planted.jpg",
    b"/files/originals/%2E%2E%2F.tmp%2Fplanted.jpg",
    b"/files/originals%2f..%2f.tmp%2fplanted.jpg",
    b"/files/thumbnails/pl/../../.tmp/planted.jpg",
    b"/files/originals/./../.tmp/planted.jpg",
    b"/files/%2etmp/planted.jpg",
]
OUTSIDE = [
    b"/files/../outside.jpg",
    b"/files/%2e%2e/outside.jpg",
    b"/files/originals/../../outside.jpg",
    b"/files/originals/%2e%2e/%2e%2e/outside.jpg",
    b"/files/originals/..%2f..%2foutside.jpg",
    b"/files/originals%2f%2e%2e%2f%2e%2e%2foutside.jpg",
    b"/files/../pyproject.toml",
    b"/files/originals/../../../../../../etc/passwd",
    b"/files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
]


@pytest.mark.e2e
def test_files_outside_our_keys_are_not_served(services: Services) -> None:
    """Raw request targets to the real server: an upload being spooled, and a file next to the
    storage root, both with an image extension, must not be served by any spelling."""
    storage = services.settings.storage_path
    secret = b"\xff\xd8planted-" + uuid.uuid4().bytes
    (storage / ".tmp" / "planted.jpg").write_bytes(secret)
    (storage.parent / "outside.jpg").write_bytes(secret)
    served = storage / "originals" / "pl" / "planted.jpg"
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_bytes(secret)
    # The same raw request, for a key we serve, does get the file: the method can see a leak.
    assert raw_get(services.api_port, b"/files/originals/pl/planted.jpg") == (200, secret)
    assert raw_get(services.api_port, b"/files/originals/pl/%70lanted.jpg") == (200, secret)
    for target in SPOOLED + OUTSIDE:
        status, body = raw_get(services.api_port, target)
        assert secret not in body, target
        assert status in (400, 404), (target, status)


async def test_unknown_image_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/images/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"


async def test_malformed_id_is_422_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/images/not-a-uuid")
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_request"
    assert "image_id" in body["detail"]


async def test_non_image_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/images", **upload(b"hello, world\n" * 50, "a.jpg"))  # type: ignore[arg-type]
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_image"


async def test_missing_file_field_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/images", files={"other": ("a.jpg", JPEG, "image/jpeg")})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert "file" in response.json()["detail"]


async def test_two_file_fields_are_422(client: httpx.AsyncClient) -> None:
    files = [("file", ("a.jpg", JPEG, "image/jpeg")), ("file", ("b.jpg", JPEG, "image/jpeg"))]
    response = await client.post("/images", files=files)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


async def test_malformed_multipart_is_422(client: httpx.AsyncClient) -> None:
    body = b"--b0undary\r\nthis line is no header\r\n\r\n" + JPEG + b"\r\n--b0undary--\r\n"
    response = await client.post(
        "/images", content=body, headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "malformed_multipart"


async def test_unknown_route_and_method_have_codes(client: httpx.AsyncClient) -> None:
    missing = await client.get("/files/originals/ab/nothing.jpg")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    wrong = await client.delete("/images")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")


async def test_not_multipart_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/images", content=JPEG, headers={"content-type": "image/jpeg"})
    assert response.status_code == 415
    assert response.json()["code"] == "not_multipart"
    response = await client.post("/images", content=JPEG)
    assert response.status_code == 422
    assert response.json()["code"] == "not_multipart"


@pytest.fixture
def small_limit_settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url, tmp_path / "storage", max_file_size=20_000, max_image_pixels=10_000
    )


@pytest.fixture
async def small_limit_client(small_limit_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(small_limit_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_too_large_with_content_length_is_413(
    small_limit_client: httpx.AsyncClient,
) -> None:
    response = await small_limit_client.post("/images", **upload(jpeg_bytes(1, 1) + b"\0" * 30_000))  # type: ignore[arg-type]
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"


async def test_too_many_pixels_is_413(small_limit_client: httpx.AsyncClient) -> None:
    small_file = jpeg_bytes(200, 100)  # 20,000 pixels over a limit of 10,000, in 1 KB
    assert len(small_file) < 20_000
    response = await small_limit_client.post("/images", **upload(small_file))  # type: ignore[arg-type]
    assert response.status_code == 413
    assert response.json()["code"] == "image_too_large"


async def test_too_large_counted_while_streaming_without_length(
    small_limit_client: httpx.AsyncClient,
) -> None:
    body, content_type = multipart_body(JPEG + b"\0" * 30_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await small_limit_client.post(
        "/images", content=chunks(), headers={"content-type": content_type}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"


async def test_lying_content_length_is_still_counted(
    small_limit_client: httpx.AsyncClient,
) -> None:
    body, content_type = multipart_body(JPEG + b"\0" * 30_000)
    # ASGITransport passes the header through as sent, so the app sees a small length.
    response = await small_limit_client.post(
        "/images",
        content=body,
        headers={"content-type": content_type, "content-length": "100"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"


async def test_png_upload_records_its_type(client: httpx.AsyncClient) -> None:
    created = await client.post("/images", **upload(png_bytes(50, 40), "x.png", "image/png"))  # type: ignore[arg-type]
    assert created.status_code == 202
    body = (await client.get(f"/images/{created.json()['id']}")).json()
    assert (body["media_type"], body["width"], body["height"]) == ("image/png", 50, 40)
    assert body["original_url"].endswith(".png")


async def test_health_and_probes_when_healthy(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert body["services"] == {
        "database": True,
        "rabbitmq": True,
        "storage": True,
        "redis": True,
    }
    assert "timestamp" in body
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("broken", ["database_url", "rabbitmq_url"])
async def test_health_is_503_when_a_dependency_is_unreachable(
    database_url: str, tmp_path: Path, broken: str
) -> None:
    port = free_port()  # nothing listens here
    unreachable = {
        "database_url": f"postgresql://postgres@127.0.0.1:{port}/x",
        "rabbitmq_url": f"amqp://guest:guest@127.0.0.1:{port}/",
    }
    settings = make_settings(database_url, tmp_path, **{broken: unreachable[broken]})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if broken != "rabbitmq_url":
            await asyncio.wait_for(app.state.services.broker.wait_connected(), 10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            health = await client.get("/health")
            ready = await client.get("/readyz")
            live = await client.get("/livez")
    assert health.status_code == 503
    services = health.json()["services"]
    assert services["database"] is (broken != "database_url")
    assert services["rabbitmq"] is (broken != "rabbitmq_url")
    assert health.json()["status"] == "unhealthy"
    assert ready.status_code == 503
    assert live.status_code == 200


async def test_upload_while_database_down_is_503_not_500(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url, tmp_path, database_url=f"postgresql://u@127.0.0.1:{free_port()}/x"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/images", **upload(JPEG))  # type: ignore[arg-type]
            status = await client.get(f"/images/{uuid.uuid4()}")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert status.status_code == 503


async def test_openapi_documents_routes_and_errors(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    upload_op = schema["paths"]["/images"]["post"]
    assert {"202", "413", "415", "422", "503"} <= set(upload_op["responses"])
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    get_op = schema["paths"]["/images/{image_id}"]["get"]
    assert {"200", "404", "422"} <= set(get_op["responses"])
    assert {"/health", "/livez", "/readyz"} <= set(schema["paths"])
    assert (await client.get("/docs")).status_code == 200
