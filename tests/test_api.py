"""The HTTP contract, in-process, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import free_port, jpeg_bytes, png_bytes
from thumbnailer.api.app import create_app
from thumbnailer.config import Settings

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


async def test_files_outside_our_keys_are_not_served(client: httpx.AsyncClient) -> None:
    for path in ["/files/.tmp/x", "/files/../pyproject.toml", "/files/originals/../../etc/passwd"]:
        response = await client.get(path)
        assert response.status_code == 404, path


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
    assert "file" in response.json()["detail"]


async def test_two_file_fields_are_422(client: httpx.AsyncClient) -> None:
    files = [("file", ("a.jpg", JPEG, "image/jpeg")), ("file", ("b.jpg", JPEG, "image/jpeg"))]
    response = await client.post("/images", files=files)
    assert response.status_code == 422


async def test_not_multipart_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/images", content=JPEG, headers={"content-type": "image/jpeg"})
    assert response.status_code == 415
    assert response.json()["code"] == "not_multipart"
    response = await client.post("/images", content=JPEG)
    assert response.status_code == 422


@pytest.fixture
def small_limit_settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:
    return make_settings(database_url, tmp_path / "storage", max_file_size=20_000)


@pytest.fixture
async def small_limit_client(small_limit_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(small_limit_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


def multipart_body(data: bytes) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://t/images", files={"file": ("big.jpg", data)})
    return request.read(), request.headers["content-type"]


async def test_too_large_with_content_length_is_413(
    small_limit_client: httpx.AsyncClient,
) -> None:
    response = await small_limit_client.post("/images", **upload(jpeg_bytes(1, 1) + b"\0" * 30_000))  # type: ignore[arg-type]
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"


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
    assert body["services"] == {"database": True, "rabbitmq": True, "redis": True}
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
