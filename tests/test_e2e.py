"""The product end to end: real API and worker processes, HTTP only, real servers behind."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import Services
from tests.support import fitted, jpeg_bytes, png_bytes

pytestmark = pytest.mark.e2e
BOXES = {"100x100": 100, "300x300": 300, "1200x1200": 1200}


def gif_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("P", (width, height), i) for i in (1, 2, 3)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def webp_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 160, 90)).save(buffer, "WEBP")
    return buffer.getvalue()


def wait_for_terminal(
    client: httpx.Client, image_id: str, timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, object] = client.get(f"/images/{image_id}").json()
        if body["status"] in {"DONE", "ERROR"}:
            return body
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} not finished after {timeout}s: {body}")


def test_uploads_reach_done_with_working_thumbnails(services: Services) -> None:
    samples = {
        "photo.jpg": (jpeg_bytes(4000, 3000), (4000, 3000)),
        "tall.png": (png_bytes(300, 2000), (300, 2000)),
        "anim.gif": (gif_bytes(640, 360), (640, 360)),
        "small.webp": (webp_bytes(80, 60), (80, 60)),
    }
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        ids = {}
        for name, (data, _) in samples.items():
            response = client.post("/images", files={"file": (name, data)})
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]
        for name, (data, size) in samples.items():
            body = wait_for_terminal(client, ids[name])
            assert body["status"] == "DONE", body
            original = client.get(str(body["original_url"]))
            assert original.status_code == 200
            assert original.content == data
            thumbnails = body["thumbnails"]
            assert isinstance(thumbnails, dict)
            assert set(thumbnails) == set(BOXES)
            for label, box in BOXES.items():
                response = client.get(thumbnails[label])
                assert response.status_code == 200, (name, label)
                assert response.headers["content-type"].startswith("image/")
                assert "immutable" in response.headers["cache-control"]
                assert response.headers["etag"]
                thumb = Image.open(io.BytesIO(response.content))
                assert abs(thumb.width - fitted(size, box)[0]) <= 1, (name, label, thumb.size)
                assert abs(thumb.height - fitted(size, box)[1]) <= 1, (name, label, thumb.size)


def test_undecodable_image_ends_in_error_with_reason(services: Services) -> None:
    truncated = jpeg_bytes(1600, 1200)[:3000]
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = client.post("/images", files={"file": ("broken.jpg", truncated)})
        assert response.status_code == 202, response.text
        body = wait_for_terminal(client, response.json()["id"])
        assert body["status"] == "ERROR"
        assert body["error"]
        good = client.post("/images", files={"file": ("ok.jpg", jpeg_bytes(500, 500))})
        assert wait_for_terminal(client, good.json()["id"])["status"] == "DONE"
