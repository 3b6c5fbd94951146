"""Pure logic of the front-end features: BlurHash and dominant colour, srcset, event ids."""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import blurhash
from PIL import Image, ImageDraw

from thumbnailer.api.presenters import present
from thumbnailer.api.routes.events import parse_stamp, stamp
from thumbnailer.placeholder import dominant_colour, make_placeholder
from thumbnailer.records import ImageRecord, Placeholder, Status, ThumbnailEntry
from thumbnailer.store import LocalStore

SRCSET_CANDIDATE = re.compile(r"^(\S+) (\d+)w$")


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=85)
    return buffer.getvalue()


def halves(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", size, left)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=right)
    return encoded(image)


def test_a_single_colour_image_has_that_colour() -> None:
    made = make_placeholder(encoded(Image.new("RGB", (100, 67), (200, 80, 40))), 1.5)
    assert made.color == "#c85028"
    assert made.aspect_ratio == 1.5
    # Through our own JPEG encoder the colour moves by a code value at most.
    jpeg = make_placeholder(encoded(Image.new("RGB", (100, 67), (200, 80, 40)), "JPEG"), 1.5)
    red, green, blue = (int(jpeg.color[i : i + 2], 16) for i in (1, 3, 5))
    assert max(abs(red - 200), abs(green - 80), abs(blue - 40)) <= 2, jpeg.color


def test_the_dominant_colour_is_the_commonest_not_the_mean() -> None:
    image = Image.new("RGB", (100, 100), (220, 30, 30))
    ImageDraw.Draw(image).rectangle((0, 0, 29, 99), fill=(20, 40, 220))
    assert dominant_colour(image) == (220, 30, 30)


def test_the_hash_decodes_to_the_picture_at_its_aspect_ratio() -> None:
    made = make_placeholder(halves((100, 50), (230, 20, 20), (20, 20, 230)), 2.0)
    assert blurhash.is_valid_blurhash(made.hash)
    assert len(made.hash) == 28  # 4x3 components
    width = 64
    height = round(width / made.aspect_ratio)
    decoded = blurhash.decode(made.hash, width, height)
    assert decoded.size == (64, 32)
    left = decoded.getpixel((4, height // 2))
    right = decoded.getpixel((width - 5, height // 2))
    assert isinstance(left, tuple)
    assert isinstance(right, tuple)
    assert left[0] > left[2] + 80, left  # red on the left
    assert right[2] > right[0] + 80, right  # blue on the right


def test_a_tall_image_gets_more_components_down_than_across() -> None:
    made = make_placeholder(encoded(Image.new("RGB", (40, 100), (10, 200, 10))), 0.4)
    size_flag = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".index(made.hash[0])
    assert (size_flag % 9 + 1, size_flag // 9 + 1) == (3, 4)
    assert made.aspect_ratio == 0.4


def test_transparent_pixels_count_as_the_white_page() -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 19, 19), fill=(0, 0, 255, 255))
    assert make_placeholder(encoded(image, "WEBP"), 1.0).color == "#ffffff"


def record(thumbnails: dict[str, ThumbnailEntry], status: Status = Status.DONE) -> ImageRecord:
    now = datetime.now(UTC)
    return ImageRecord(
        id=uuid.uuid4(), status=status, original_key="originals/ab/x.jpg",
        original_filename="x.jpg", media_type="image/jpeg", width=80, height=60, size_bytes=1,
        thumbnails=thumbnails, error=None, request_id=None, created_at=now, updated_at=now,
        placeholder=Placeholder("L00000fQfQfQfQfQfQfQfQfQfQfQ", "#000000", 1.3333),
    )  # fmt: skip


def test_renditions_and_srcset_of_a_small_original_and_of_an_old_row(tmp_path: Path) -> None:
    """An 80x60 original fits every box at its own size: one srcset candidate, not three. A
    row written before sizes were kept (no `bytes` in its JSON) still presents, with null."""
    store = LocalStore(tmp_path)
    old = {"key": "thumbnails/ab/x/100x100.jpg", "width": 80, "height": 60}
    thumbnails = {
        "100x100": ThumbnailEntry.from_json({**old, "media_type": "image/jpeg"}),
        "300x300": ThumbnailEntry("thumbnails/ab/x/300x300.jpg", 80, 60, "image/jpeg", 900),
    }
    body = present(record(thumbnails), "http://h", [(300, 300), (100, 100)], store)
    assert [(r.label, r.bytes) for r in body.renditions] == [("100x100", None), ("300x300", 900)]
    assert body.srcset == "http://h/files/thumbnails/ab/x/100x100.jpg 80w"
    assert body.placeholder is not None
    assert body.placeholder.color == "#000000"
    waiting = present(record(thumbnails, Status.PROCESSING), "http://h", [(100, 100)], store)
    assert waiting.renditions == []
    assert waiting.srcset is None


def parse_srcset(value: str) -> list[tuple[str, int]]:
    candidates = []
    for candidate in value.split(", "):
        match = SRCSET_CANDIDATE.match(candidate)
        assert match, candidate
        candidates.append((match[1], int(match[2])))
    return candidates


def test_srcset_parser_refuses_what_a_browser_would() -> None:
    assert parse_srcset("a.jpg 100w, b.jpg 300w") == [("a.jpg", 100), ("b.jpg", 300)]
    assert SRCSET_CANDIDATE.match("a.jpg 1.5x") is None


def test_event_ids_round_trip_and_foreign_ones_are_ignored() -> None:
    moment = datetime(2026, 12, 1, 23, 59, 58, 123456, tzinfo=UTC)
    assert stamp(moment) == "1796169598123456"
    assert parse_stamp(stamp(moment)) == moment
    for foreign in (None, "", "abc", "-5", "1.5", "9" * 5000, "9" * 20):
        assert parse_stamp(foreign) is None
