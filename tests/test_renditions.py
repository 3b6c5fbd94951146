"""Renditions and placeholders end to end: the sizes given out are the files served, the srcset
parses, the placeholder matches the picture. Real API and worker processes, HTTP only."""

from __future__ import annotations

import io

import blurhash
import httpx
import pytest
from PIL import Image

from tests.conftest import Services
from tests.support import fitted, jpeg_bytes, photo_jpeg
from tests.test_e2e import wait_for_terminal
from tests.test_placeholder import parse_srcset

pytestmark = pytest.mark.e2e


def test_renditions_describe_the_files_served_and_the_placeholder_the_picture(
    services: Services,
) -> None:
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        photo = client.post("/images", files={"file": ("p.jpg", photo_jpeg(2400, 1600))})
        flat = client.post(
            "/images", files={"file": ("f.jpg", jpeg_bytes(900, 1200, (30, 140, 200)))}
        )
        body = wait_for_terminal(client, photo.json()["id"])
        assert body["status"] == "DONE", body
        renditions = body["renditions"]
        assert isinstance(renditions, list)
        assert [r["label"] for r in renditions] == ["100x100", "300x300", "1200x1200"]
        for rendition in renditions:
            served = client.get(rendition["url"])
            assert served.status_code == 200
            assert served.headers["content-type"] == rendition["media_type"]
            assert len(served.content) == rendition["bytes"]
            image = Image.open(io.BytesIO(served.content))
            assert image.size == (rendition["width"], rendition["height"])
            box = int(rendition["label"].split("x")[0])
            assert image.size == fitted((2400, 1600), box)
            assert body["thumbnails"][rendition["label"]] == rendition["url"]  # type: ignore[index]
        assert parse_srcset(str(body["srcset"])) == [(r["url"], r["width"]) for r in renditions]
        placeholder = body["placeholder"]
        assert isinstance(placeholder, dict)
        assert placeholder["aspect_ratio"] == 1.5
        assert blurhash.is_valid_blurhash(placeholder["hash"])

        flat_body = wait_for_terminal(client, flat.json()["id"])
        assert flat_body["status"] == "DONE", flat_body
        flat_placeholder = flat_body["placeholder"]
        assert isinstance(flat_placeholder, dict)
        assert flat_placeholder["aspect_ratio"] == 0.75
        colour = flat_placeholder["color"]
        channels = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        assert max(abs(a - b) for a, b in zip(channels, (30, 140, 200), strict=True)) <= 3, colour
        decoded = blurhash.decode(flat_placeholder["hash"], 30, 40)
        assert decoded.size == (30, 40)
        centre = decoded.getpixel((15, 20))
        assert isinstance(centre, tuple)
        assert max(abs(a - b) for a, b in zip(centre, channels, strict=True)) <= 6, centre
