"""Thumbnail rules on generated images, with the real Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.corpus import huge_png_header
from tests.images import (
    RED,
    animated,
    cmyk_jpeg,
    display_p3_profile,
    encode,
    marked,
    palette_with_transparency,
    png16,
    with_orientation,
)
from tests.support import fitted
from thumbnailer import imaging

BOXES = [(100, 100), (300, 300), (1200, 1200)]
LIMIT = 100_000_000


def thumbs(data: bytes, boxes: list[tuple[int, int]] = BOXES) -> list[imaging.Thumbnail]:
    return imaging.make_thumbnails(data, boxes, max_pixels=LIMIT)


def opened(thumb: imaging.Thumbnail) -> Image.Image:
    image = Image.open(io.BytesIO(thumb.data))
    image.load()
    return image


def assert_fits(thumbs_: list[imaging.Thumbnail], size: tuple[int, int]) -> None:
    for thumb in thumbs_:
        expected = fitted(size, thumb.box[0])
        assert abs(thumb.width - expected[0]) <= 1, (thumb.label, thumb.width, expected)
        assert abs(thumb.height - expected[1]) <= 1, (thumb.label, thumb.height, expected)
        assert opened(thumb).size == (thumb.width, thumb.height)


@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (1500, 1500), (8000, 20), (1, 1)])
def test_each_thumbnail_fits_its_box_and_keeps_the_aspect_ratio(size: tuple[int, int]) -> None:
    result = thumbs(encode(Image.new("RGB", size, (90, 140, 200)), "JPEG"))
    assert [t.label for t in result] == ["100x100", "300x300", "1200x1200"]
    assert_fits(result, size)


def test_small_images_are_not_enlarged() -> None:
    result = thumbs(encode(Image.new("RGB", (80, 60), RED), "PNG"))
    assert [(t.width, t.height) for t in result] == [(80, 60)] * 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = marked(400, 200)
    big, *_ = reversed(thumbs(with_orientation(upright, orientation)))
    image = opened(big).convert("RGB")
    assert image.size == (400, 200)
    red_corner = image.getpixel((10, 10))
    white_corner = image.getpixel((390, 190))
    assert isinstance(red_corner, tuple)
    assert isinstance(white_corner, tuple)
    assert red_corner[0] > 200, red_corner
    assert red_corner[1] < 60, red_corner
    assert min(white_corner) > 200, white_corner


@pytest.mark.parametrize("adobe", [True, False])
def test_cmyk_jpeg_becomes_rgb(adobe: bool) -> None:
    result = thumbs(cmyk_jpeg(adobe))
    image = opened(result[0])
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((50, 25))  # type: ignore[misc]
    assert (red < 60, green > 180, blue > 180) == (True, True, True), (red, green, blue)  # cyan


def test_16_bit_png_is_scaled_not_clipped() -> None:
    result = thumbs(png16())
    value = opened(result[0]).convert("L").getpixel((10, 10))
    assert isinstance(value, int)
    assert 140 < value < 170  # 40000/65535 of full scale, not clipped to 255


def test_palette_with_transparency_keeps_it() -> None:
    result = thumbs(palette_with_transparency())
    image = opened(result[0]).convert("RGBA")
    assert result[0].media_type == "image/webp"
    assert image.getpixel((2, 2))[3] == 0  # type: ignore[index]
    assert image.getpixel((50, 50))[3] == 255  # type: ignore[index]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_survives_without_black_background(mode: str) -> None:
    source = Image.new(mode, (600, 400), (255, 0) if mode == "LA" else (255, 255, 255, 0))
    result = thumbs(encode(source, "PNG"))
    for thumb in result:
        image = opened(thumb).convert("RGBA")
        assert thumb.format == "WEBP"
        assert image.getpixel((5, 5))[3] == 0  # type: ignore[index]


def test_opaque_rgba_is_written_as_jpeg() -> None:
    result = thumbs(encode(Image.new("RGBA", (300, 300), (1, 2, 3, 255)), "PNG"))
    assert {t.format for t in result} == {"JPEG"}


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_uses_the_first_frame(fmt: str) -> None:
    result = thumbs(animated(fmt))
    red, green, blue = opened(result[0]).convert("RGB").getpixel((10, 10))  # type: ignore[misc]
    assert red > 200
    assert green < 60
    assert blue < 60


def test_non_srgb_profile_is_converted_and_dropped() -> None:
    source = Image.new("RGB", (200, 200), (200, 100, 50))
    data = encode(source, "JPEG", quality=100, icc_profile=display_p3_profile())
    result = thumbs(data)
    image = opened(result[0])
    assert "icc_profile" not in image.info
    red, green, blue = image.getpixel((50, 50))  # type: ignore[misc]
    # The same colour in Display P3 is a more saturated orange in sRGB: (216, 93, 24).
    assert abs(red - 216) <= 4
    assert abs(green - 93) <= 4
    assert abs(blue - 24) <= 6


def test_no_metadata_is_copied() -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPS
    data = encode(marked(800, 600), "JPEG", exif=exif.tobytes(), comment=b"secret")
    for thumb in thumbs(data):
        image = opened(thumb)
        assert not image.getexif()
        assert "comment" not in image.info
        assert "exif" not in image.info
        assert b"PhoneMaker" not in thumb.data
        assert b"secret" not in thumb.data


def test_progressive_jpeg() -> None:
    data = encode(marked(2000, 1000), "JPEG", progressive=True)
    assert_fits(thumbs(data), (2000, 1000))


def test_trailing_zip_is_not_copied() -> None:
    data = encode(marked(500, 500), "JPEG") + b"PK\x03\x04" + b"zipdata" * 100
    for thumb in thumbs(data):
        assert b"PK\x03\x04" not in thumb.data


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"<html><body>x</body></html>", b"%PDF-1.4\n", b"<svg xmlns=''/>"],
)
def test_non_images_are_unsupported(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(data)
    with pytest.raises(imaging.UnsupportedImage):
        imaging.probe(path, LIMIT)
    with pytest.raises(imaging.UnsupportedImage):
        thumbs(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_corrupt(fmt: str) -> None:
    data = encode(Image.effect_noise((800, 600), 50).convert("RGB"), fmt)
    with pytest.raises(imaging.CorruptImage):
        thumbs(data[: len(data) // 2])


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png_header(100_000, 100_000))
    with pytest.raises(imaging.ImageTooLarge, match="100000x100000"):
        imaging.probe(path, LIMIT)
    with pytest.raises(imaging.ImageTooLarge):
        thumbs(path.read_bytes())


def test_probe_reads_format_and_size(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(encode(Image.new("RGB", (640, 480)), "WEBP"))
    assert imaging.probe(path, LIMIT) == imaging.ImageInfo("WEBP", "image/webp", 640, 480)


def test_stage_timings_are_reported() -> None:
    timings: dict[str, float] = {}
    imaging.make_thumbnails(
        encode(marked(500, 500), "JPEG"), BOXES, max_pixels=LIMIT, timings=timings
    )
    assert set(timings) == {"decode", "resize", "encode"}
    assert all(value >= 0 for value in timings.values())


MODES = st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16"])


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 2500),
    height=st.integers(1, 2500),
    mode=MODES,
    orientation=st.integers(1, 8),
)
def test_property_thumbnails_always_fit(
    width: int, height: int, mode: str, orientation: int
) -> None:
    image = Image.new(mode, (width, height))
    fmt = "JPEG" if mode in ("RGB", "L", "CMYK") else "PNG"
    data = encode(image, fmt)
    if fmt == "JPEG":
        data = with_orientation(image.convert("RGB"), orientation)
    displayed = (width, height)  # with_orientation stores pixels so that they display upright
    result = thumbs(data)
    for thumb in result:
        assert thumb.width <= thumb.box[0]
        assert thumb.height <= thumb.box[1]
        assert thumb.width <= displayed[0]
        assert thumb.height <= displayed[1]
        expected = fitted(displayed, thumb.box[0])
        assert abs(thumb.width - expected[0]) <= 1
        assert abs(thumb.height - expected[1]) <= 1
