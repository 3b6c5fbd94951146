"""Thumbnail rules on generated images, with the real Pillow."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from tests.corpus import (
    PNG_SIGNATURE,
    black_png,
    decompression_bomb,
    gif_frame_beyond_screen,
    huge_png_header,
    mpo,
)
from tests.images import (
    INVERSE,
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


def stored_with_orientation(upright: Image.Image, orientation: int, fmt: str) -> bytes:
    stored = upright.transpose(INVERSE[orientation]) if orientation in INVERSE else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"lossless": True} if fmt == "WEBP" else {}
    return encode(stored, fmt, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_beyond_jpeg(fmt: str, orientation: int) -> None:
    big = thumbs(stored_with_orientation(marked(400, 200), orientation, fmt))[-1]
    image = opened(big).convert("RGB")
    assert image.size == (400, 200)
    red, green, _ = image.getpixel((10, 10))  # type: ignore[misc]
    assert (red > 240, green < 20) == (True, True), image.getpixel((10, 10))
    assert min(image.getpixel((390, 190))) > 240  # type: ignore[arg-type]


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


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_high_bit_depth_modes_are_scaled(mode: str) -> None:
    image = Image.new(mode, (64, 48), 40000)
    value = opened(thumbs(encode(image, "PNG"))[0]).getpixel((5, 5))
    assert isinstance(value, int)
    assert 140 < value < 170


def test_one_bit_png_becomes_greyscale_jpeg() -> None:
    image = Image.new("1", (257, 129), 1)
    ImageDraw.Draw(image).rectangle((0, 0, 60, 128), fill=0)
    big = thumbs(encode(image, "PNG"))[-1]
    decoded = opened(big)
    assert (big.format, decoded.mode, decoded.size) == ("JPEG", "L", (257, 129))
    assert decoded.getpixel((10, 10)) == 0
    assert decoded.getpixel((200, 100)) == 255


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


def test_non_srgb_profile_keeps_the_alpha() -> None:
    source = Image.new("RGBA", (200, 200), (200, 100, 50, 128))
    source.paste((0, 0, 0, 0), (0, 0, 100, 100))
    result = thumbs(encode(source, "PNG", icc_profile=display_p3_profile()))
    image = opened(result[-1]).convert("RGBA")
    assert result[-1].format == "WEBP"
    assert image.getpixel((20, 20))[3] == 0  # type: ignore[index]
    red, _, blue, alpha = image.getpixel((150, 150))  # type: ignore[misc]
    assert abs(alpha - 128) <= 2
    assert abs(red - 216) <= 6
    assert abs(blue - 24) <= 8


def test_every_size_of_an_image_has_the_same_format() -> None:
    # Alpha that averages away in the small sizes must not switch them to JPEG.
    source = Image.new("RGBA", (1200, 1200), (10, 200, 10, 255))
    source.putpixel((600, 600), (10, 200, 10, 250))
    assert {t.format for t in thumbs(encode(source, "PNG"))} == {"WEBP"}


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


def test_mpo_from_a_phone_reads_as_its_first_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    path.write_bytes(mpo())
    info = imaging.probe(path, LIMIT)
    assert (info.format, info.media_type, info.width, info.height) == (
        "JPEG",
        "image/jpeg",
        300,
        200,
    )
    assert info.scans == 1  # the markers are read up to the first picture's EOI only
    red, green, _ = opened(thumbs(path.read_bytes())[0]).getpixel((5, 5))  # type: ignore[misc]
    assert red > 200
    assert green < 40


def test_known_signature_with_garbage_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG_SIGNATURE + b"garbage" * 20)
    with pytest.raises(imaging.CorruptImage):
        imaging.probe(path, LIMIT)


def test_unreadable_path_is_not_blamed_on_the_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        imaging.probe(tmp_path / "missing", LIMIT)


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


_BOMB_CHILD = """
import json, re, sys, time
from pathlib import Path
from thumbnailer import imaging

def peak_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])

paths = sys.argv[1:]
datas = [Path(p).read_bytes() for p in paths]
before, started, outcomes = peak_kb(), time.perf_counter(), []
for path, data in zip(paths, datas):
    for call in (lambda: imaging.probe(Path(path), 100_000_000),
                 lambda: imaging.make_thumbnails(data, [(100, 100)], max_pixels=100_000_000)):
        try:
            call()
            outcomes.append("accepted")
        except imaging.ImagingError as exc:
            outcomes.append(type(exc).__name__)
print(json.dumps({"seconds": time.perf_counter() - started,
                  "extra_mb": (peak_kb() - before) / 1024, "outcomes": outcomes}))
"""


def test_bombs_are_refused_fast_and_without_memory(tmp_path: Path) -> None:
    """Fresh process, so its peak RSS shows whether anything was decoded (400 MB and 10 GB)."""
    paths = [tmp_path / "bomb.png", tmp_path / "header.png"]
    paths[0].write_bytes(decompression_bomb())
    paths[1].write_bytes(huge_png_header(100_000, 100_000))
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _BOMB_CHILD, *map(str, paths)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["outcomes"] == ["ImageTooLarge"] * 4
    assert report["extra_mb"] < 20, report
    assert report["seconds"] < 2, report  # a header read; decoding would take many seconds


def test_pillow_own_guard_does_not_override_the_configured_limit() -> None:
    # 95 MP is over Pillow's warning threshold (89 MP) but under our 100 MP limit: it must decode,
    # even where warnings are errors, and Pillow's global setting must be left as it was.
    default = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = thumbs(black_png(10_000, 9_500), [(100, 100)])
    assert (result[0].width, result[0].height) == (100, 95)
    assert default == Image.MAX_IMAGE_PIXELS


def test_pillow_bomb_error_becomes_image_too_large() -> None:
    # A GIF frame larger than its screen trips Pillow's own guard while opening.
    with pytest.raises(imaging.ImageTooLarge):
        imaging.make_thumbnails(gif_frame_beyond_screen(), BOXES, max_pixels=10**12)


def test_probe_reads_format_and_size(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(encode(Image.new("RGB", (640, 480)), "WEBP"))
    info = imaging.probe(path, LIMIT)
    assert (info.format, info.media_type, info.width, info.height) == (
        "WEBP",
        "image/webp",
        640,
        480,
    )
    assert (info.mode, info.frames) == ("RGB", 1)


@pytest.mark.parametrize("boxes", [[], [(0, 100)]])
def test_meaningless_boxes_are_a_programming_error(boxes: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError, match="boxes"):
        thumbs(encode(marked(50, 50), "PNG"), boxes)


def test_stage_timings_are_reported() -> None:
    timings: dict[str, float] = {}
    imaging.make_thumbnails(
        encode(marked(500, 500), "JPEG"), BOXES, max_pixels=LIMIT, timings=timings
    )
    assert set(timings) == {"decode", "resize", "encode"}
    assert all(value >= 0 for value in timings.values())


def test_concurrent_calls_give_the_same_bytes_as_sequential_ones() -> None:
    rgba = Image.new("RGBA", (900, 700), (20, 40, 60, 90))
    inputs = [
        stored_with_orientation(marked(1600, 900), 6, "JPEG"),
        cmyk_jpeg(True),
        encode(marked(800, 600), "JPEG", icc_profile=display_p3_profile()),
        encode(rgba, "PNG", icc_profile=display_p3_profile()),
        png16(),
        animated("GIF"),
    ] * 3
    sequential = [[t.data for t in thumbs(data)] for data in inputs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda data: [t.data for t in thumbs(data)], inputs))
    assert concurrent == sequential


MODES = st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I;16B"])
FORMAT_OF_MODE = {"RGB": "JPEG", "L": "JPEG", "CMYK": "JPEG", "RGBA": "WEBP"}


@settings(max_examples=120, deadline=None)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    mode=MODES,
    orientation=st.integers(1, 8),
)
def test_property_thumbnails_always_fit(
    width: int, height: int, mode: str, orientation: int
) -> None:
    upright = Image.new(mode, (width, height))
    data = stored_with_orientation(upright, orientation, FORMAT_OF_MODE.get(mode, "PNG"))
    result = thumbs(data)
    assert [t.box for t in result] == BOXES
    for thumb in result:
        assert 1 <= thumb.width <= min(thumb.box[0], width)
        assert 1 <= thumb.height <= min(thumb.box[1], height)
        expected = fitted((width, height), thumb.box[0])
        assert abs(thumb.width - expected[0]) <= 1
        assert abs(thumb.height - expected[1]) <= 1
        assert opened(thumb).size == (thumb.width, thumb.height)


def _noisy(mode: str, size: tuple[int, int]) -> Image.Image:
    grey = Image.effect_noise(size, 80)
    if mode == "I;16":
        return grey.convert("I").point(lambda v: v * 250).convert("I;16")
    if mode == "P":
        image = Image.merge("RGB", (grey, grey.rotate(180), grey)).quantize(64)
        image.info["transparency"] = 3
        return image
    if mode in ("RGBA", "LA", "PA"):
        image = Image.merge("RGBA", (grey, grey.rotate(180), grey, Image.effect_noise(size, 120)))
        return image.convert(mode)
    return grey.convert(mode)


@pytest.mark.parametrize("mode", ["I;16", "I", "P", "RGBA", "LA", "PA", "1"])
@pytest.mark.parametrize(
    ("size", "target"),
    [((1501, 1003), (300, 200)), ((2503, 497), (600, 119)), ((650, 625), (600, 577))],
)
def test_strip_conversion_gives_the_bytes_a_whole_image_conversion_gives(
    mode: str, size: tuple[int, int], target: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converting and box-reducing in strips saves memory, never changes a pixel."""
    monkeypatch.setattr(imaging, "STRIP_PIXELS", 100_000)  # many strips, a short last one
    image = _noisy(mode, size)
    whole = imaging._resize(imaging._to_8bit(image), target, first=True)
    strips = imaging._first_resize(image, target)
    assert strips.mode == whole.mode
    assert strips.tobytes() == whole.tobytes()
