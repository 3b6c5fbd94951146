"""imaging.make_variant: sizes per fit, grey, output formats, orientation and sRGB as for
thumbnails, no metadata; and the same through the decoder process."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.images import RED, WHITE, display_p3_profile, encode, marked, with_orientation
from tests.support import photo_jpeg
from thumbnailer import imaging
from thumbnailer.imaging_subprocess import DecodeRunner
from thumbnailer.variant_spec import OUTPUT_FORMATS, make_spec

LIMIT = 100_000_000
MAX_SIDE = 4096
MB = 2**20


def variant(data: bytes, **spec: object) -> imaging.Thumbnail:
    return imaging.make_variant(
        data, make_spec(**spec), max_pixels=LIMIT, max_side=MAX_SIDE  # type: ignore[arg-type]
    )


def opened(made: imaging.Thumbnail) -> Image.Image:
    image = Image.open(io.BytesIO(made.data))
    image.load()
    return image


@pytest.mark.parametrize("source", [(1600, 1200), (1200, 1600), (300, 200)])
def test_contain_fits_inside_and_never_enlarges(source: tuple[int, int]) -> None:
    data = photo_jpeg(*source)
    made = variant(data, width=400, height=400)
    scale = min(400 / source[0], 400 / source[1], 1.0)
    assert (made.width, made.height) == (round(source[0] * scale), round(source[1] * scale))
    assert opened(made).size == (made.width, made.height)


def test_contain_with_one_side_follows_the_aspect_ratio() -> None:
    data = photo_jpeg(1600, 1200)
    assert opened(variant(data, width=800)).size == (800, 600)
    assert opened(variant(data, height=300)).size == (400, 300)


@pytest.mark.parametrize("fit", ["cover", "fill"])
@pytest.mark.parametrize("size", [(400, 100), (100, 400), (333, 333), (2000, 1800)])
def test_cover_and_fill_give_exactly_the_size(fit: str, size: tuple[int, int]) -> None:
    made = variant(photo_jpeg(1600, 1200), width=size[0], height=size[1], fit=fit)
    assert opened(made).size == size == (made.width, made.height)


def test_cover_crops_around_the_centre_and_fill_stretches() -> None:
    # Left third red, middle white, right third red: a centre crop of a tall box is all white.
    source = Image.new("RGB", (900, 300), RED)
    source.paste(WHITE, (300, 0, 600, 300))
    data = encode(source, "PNG")
    cover = opened(variant(data, width=100, height=300, fit="cover", format="png"))
    assert cover.getpixel((0, 150)) == cover.getpixel((99, 150)) == WHITE
    fill = opened(variant(data, width=90, height=300, fit="fill", format="png"))
    assert fill.getpixel((5, 150)) == RED
    assert fill.getpixel((45, 150)) == WHITE


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_grayscale_is_grey(fmt: str) -> None:
    made = variant(photo_jpeg(640, 480), width=200, grayscale=True, format=fmt)
    image = opened(made).convert("RGB")
    assert len(image.getcolors(1 << 24) or []) > 50  # not a flat image
    for x in range(0, image.width, 17):
        for y in range(0, image.height, 13):
            red, green, blue = image.getpixel((x, y))  # type: ignore[misc]
            assert max(red, green, blue) - min(red, green, blue) <= 3, (fmt, (x, y))


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_each_format_decodes_as_itself(fmt: str) -> None:
    made = variant(photo_jpeg(640, 480), width=320, format=fmt, quality=70)
    image = opened(made)
    expected = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}[fmt]
    assert image.format == made.format == expected
    assert made.media_type == f"image/{fmt}"
    assert image.size == (320, 240)


def test_quality_changes_the_bytes() -> None:
    data = photo_jpeg(640, 480)
    for fmt in ("jpeg", "webp", "avif"):
        low = variant(data, width=320, format=fmt, quality=20)
        high = variant(data, width=320, format=fmt, quality=95)
        assert len(low.data) < len(high.data), fmt


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fit", ["contain", "cover"])
def test_exif_orientation_is_applied(orientation: int, fit: str) -> None:
    data = with_orientation(marked(800, 400), orientation)
    made = opened(variant(data, width=200, height=100, fit=fit, format="png"))
    assert made.size == (200, 100)
    red = made.getpixel((10, 10))
    assert red[0] > 200, orientation  # type: ignore[index]
    assert red[1] < 80, orientation  # type: ignore[index]
    assert made.getpixel((190, 90))[1] > 200  # type: ignore[index]


def test_profile_is_converted_to_srgb_and_nothing_is_copied() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    source = Image.new("RGB", (200, 200), (200, 100, 50))
    data = encode(source, "JPEG", quality=100, icc_profile=display_p3_profile(), exif=exif)
    for fmt in OUTPUT_FORMATS:
        image = opened(variant(data, width=100, format=fmt, quality=95))
        assert "icc_profile" not in image.info, fmt
        assert "exif" not in image.info, fmt
        red, green, blue = image.convert("RGB").getpixel((50, 50))  # type: ignore[misc]
        assert max(abs(red - 216), abs(green - 93)) <= 6, fmt
        assert abs(blue - 24) <= 8, fmt


def test_alpha_is_kept_where_the_format_has_it_and_flattened_on_white_for_jpeg() -> None:
    source = Image.new("RGBA", (200, 200), (0, 0, 255, 255))
    source.paste((0, 0, 0, 0), (0, 0, 100, 200))
    data = encode(source, "PNG")
    for fmt in ("png", "webp", "avif"):
        image = opened(variant(data, width=100, format=fmt)).convert("RGBA")
        assert image.getpixel((10, 50))[3] == 0, fmt  # type: ignore[index]
        assert image.getpixel((90, 50))[3] == 255, fmt  # type: ignore[index]
    jpeg = opened(variant(data, width=100, format="jpeg"))
    assert min(jpeg.getpixel((10, 50))) > 240  # type: ignore[arg-type]


def test_a_jpeg_is_drafted_for_the_output_not_decoded_whole() -> None:
    info = imaging.probe(photo_jpeg(4000, 3000), LIMIT)
    plan, need = imaging.estimate_variant_bytes(info, make_spec(width=400, height=300), MAX_SIDE)
    assert plan.draft_box == (400, 300)
    _, whole = imaging.estimate_variant_bytes(info, make_spec(width=4000), MAX_SIDE)
    assert need < whole / 4


def test_enlarging_counts_the_output_against_the_memory_limit() -> None:
    data = photo_jpeg(100, 100)
    spec = make_spec(width=4000, height=4000, fit="cover")
    _, need = imaging.estimate_variant_bytes(imaging.probe(data, LIMIT), spec, MAX_SIDE)
    assert need > 4000 * 4000 * 12
    with pytest.raises(imaging.DecodeTooLarge, match="variant"):
        imaging.make_variant(
            data, spec, max_pixels=LIMIT, max_side=MAX_SIDE, max_decode_bytes=64 * MB
        )


def test_the_decoder_process_makes_the_same_variant(tmp_path: Path) -> None:
    data = photo_jpeg(1200, 900)
    spec = make_spec(width=300, height=300, fit="cover", format="webp", quality=70)
    runner = DecodeRunner(processes=1, memory_limit=320 * MB, timeout=20)
    try:
        timings: dict[str, float] = {}
        made = runner.run_variant(data, spec, max_pixels=LIMIT, max_side=MAX_SIDE, timings=timings)
        refused = pytest.raises(imaging.DecodeTooLarge)
        with refused:
            runner.run_variant(
                photo_jpeg(50, 50),
                make_spec(width=4000, height=4000, fit="fill"),
                max_pixels=LIMIT,
                max_side=MAX_SIDE,
                max_decode_bytes=32 * MB,
            )
    finally:
        runner.close()
    direct = imaging.make_variant(data, spec, max_pixels=LIMIT, max_side=MAX_SIDE)
    assert made.data == direct.data
    assert (made.width, made.height, made.format) == (300, 300, "WEBP")
    assert "decode" in timings
