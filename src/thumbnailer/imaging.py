"""Thumbnails: pure, synchronous Pillow code; bytes or a path in, encoded thumbnails out.

Doing less work is what makes this fast:
- JPEGs decode at a reduced DCT scale (`draft`) just large enough for the biggest box, so a
  12 MP photo is decoded at 1/2 or 1/4 of its size and never exists at full resolution;
- orientation and colour conversion run on the largest thumbnail, not on the decoded image;
- smaller sizes are derived from the larger one (1200 -> 300 -> 100), never from the source.

Output: opaque images become baseline JPEG. Images whose alpha channel is actually used become
lossy WebP with alpha: PNG keeps the alpha too, but its zlib encoder makes it the slowest and by
far the largest choice for photographic content (several MB at 1200 px), while WebP's encoder is
fast, keeps transparency, and every current browser displays it.

Thread-safe: no global state changes per call, so the worker runs it in a thread pool (Pillow
releases the GIL while decoding, resizing and encoding).
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
ORIENTATION_TAG = 0x0112
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = {5, 6, 7, 8}
RESAMPLE_FIRST = Image.Resampling.HAMMING
RESAMPLE = Image.Resampling.LANCZOS
WEBP_METHOD = 2  # libwebp effort 0-6; 2 is several times faster than 4 for a few % more bytes
# Pillow's DecodeError family: what a broken or hostile file raises somewhere inside a codec.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
)
_SRGB = ImageCms.createProfile("sRGB")

# The configurable limit is enforced from the header in `_check_pixels`; Pillow's own global
# guard would only warn below twice its fixed limit and cannot be set per call.
Image.MAX_IMAGE_PIXELS = None


class ImagingError(Exception):
    """A permanent failure: the image ends in ERROR with this message as the reason."""


class UnsupportedImage(ImagingError):
    """The content is not a JPEG, PNG, WebP or GIF image."""


class ImageTooLarge(ImagingError):
    """Width x height is over the pixel limit (a decompression bomb, or just too big)."""


class CorruptImage(ImagingError):
    """The header looked right but the data cannot be decoded (truncated, damaged)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    media_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Thumbnail:
    box: tuple[int, int]
    width: int
    height: int
    data: bytes
    format: str
    media_type: str
    extension: str

    @property
    def label(self) -> str:
        return f"{self.box[0]}x{self.box[1]}"


def probe(path: Path, max_pixels: int) -> ImageInfo:
    """Recognise the format by content and read the dimensions from the header only."""
    with _opened(path) as image:
        _check_pixels(image, max_pixels)
        assert image.format is not None
        return ImageInfo(image.format, MEDIA_TYPES[image.format], image.width, image.height)


def make_thumbnails(
    source: Path | bytes,
    boxes: Sequence[tuple[int, int]],
    *,
    max_pixels: int,
    jpeg_quality: int = 85,
    timings: dict[str, float] | None = None,
) -> list[Thumbnail]:
    """One thumbnail per box, in the order given; each fits its box and is never enlarged."""
    clock = _Stopwatch(timings)
    largest_first = sorted(set(boxes), key=lambda box: box[0] * box[1], reverse=True)
    with _opened(source) as image:
        _check_pixels(image, max_pixels)
        orientation = _orientation(image)
        # Targets come from the header's size: draft's reduced size is rounded up.
        displayed = _stored(image.size, orientation)
        with clock("decode"):
            _decode_reduced(image, fit(displayed, largest_first[0]), orientation)
        with clock("resize"):
            made = _cascade(image, largest_first, orientation, displayed)
    with clock("encode"):
        encoded = {box: _encode(made[box], box, jpeg_quality) for box in largest_first}
    return [encoded[box] for box in boxes]


@contextmanager
def _opened(source: Path | bytes) -> Iterator[Image.Image]:
    """Open lazily (header only), translating every codec failure into our three errors."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream, formats=FORMATS) as image:
            yield image
    except ImagingError:
        raise
    except UnidentifiedImageError as exc:
        raise UnsupportedImage("not a JPEG, PNG, WebP or GIF image") from exc
    except DECODE_ERRORS as exc:
        raise CorruptImage(f"cannot decode the image: {exc}") from exc


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"the image is {image.width}x{image.height} ({pixels} pixels); "
            f"the limit is {max_pixels} pixels"
        )
    if pixels == 0:
        raise CorruptImage("the image has no pixels")


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except DECODE_ERRORS:
        return 1  # unreadable EXIF is ignored, as browsers do
    return value if value in TRANSPOSE else 1


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with `size`'s aspect ratio inside `box`, never larger than `size`."""
    width, height = size
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _stored(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """Map a size between displayed and stored orientation (a 90-degree turn swaps axes)."""
    return (size[1], size[0]) if orientation in SWAPS_AXES else size


def _decode_reduced(image: Image.Image, target: tuple[int, int], orientation: int) -> None:
    """Decode once; a JPEG at the smallest DCT scale that still covers `target`."""
    if image.format == "JPEG":
        mode = image.mode if image.mode in ("L", "CMYK") else "RGB"
        image.draft(mode, _stored(target, orientation))
    image.load()


def _cascade(
    image: Image.Image,
    largest_first: list[tuple[int, int]],
    orientation: int,
    displayed: tuple[int, int],
) -> dict[tuple[int, int], Image.Image]:
    """Make the largest thumbnail from the decoded image, each smaller one from the last."""
    current = _to_display(image, fit(displayed, largest_first[0]), orientation)
    made = {largest_first[0]: current}
    for box in largest_first[1:]:
        # Sizes come from the source's proportions, so rounding does not compound per step.
        current = _resize(current, fit(displayed, box))
        made[box] = current
    return made


def _to_display(image: Image.Image, size: tuple[int, int], orientation: int) -> Image.Image:
    """Resize to the largest thumbnail's size, then orient and convert to sRGB on the result."""
    target = _stored(size, orientation)
    icc = image.info.get("icc_profile")
    working = _to_8bit(image)
    resized = _resize(working, target, first=True)
    if orientation in TRANSPOSE:
        resized = resized.transpose(TRANSPOSE[orientation])
    return _to_srgb(resized, icc)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of L, LA, RGB, RGBA, CMYK, without clipping 16-bit."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if mode.startswith("I"):
        # Pillow's I;16 -> L conversion clips at 255 instead of scaling.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("PA", "RGBa", "La"):
        return image.convert("RGBA")
    return image.convert("RGB")


def _resize(image: Image.Image, size: tuple[int, int], first: bool = False) -> Image.Image:
    if image.size == size:
        return image.copy()
    # The first step shrinks the most pixels; HAMMING (support 1) costs 40% of LANCZOS there and
    # looks the same after draft's DCT scaling. reducing_gap: an integer box reduction first.
    resample = RESAMPLE_FIRST if first else RESAMPLE
    return image.resize(size, resample, reducing_gap=2.0)


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Apply the embedded profile (or the conventional meaning of the mode) to reach sRGB."""
    if icc and not _is_srgb(icc):
        converted = _apply_profile(image, icc)
        if converted is not None:
            return converted
    if image.mode == "CMYK":
        return image.convert("RGB")
    return image


def _is_srgb(icc: bytes) -> bool:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return True  # an unreadable profile is ignored, as browsers do
    return "srgb" in description.lower()


def _apply_profile(image: Image.Image, icc: bytes) -> Image.Image | None:
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    base = image.convert("RGB" if image.mode in ("RGBA", "LA") else image.mode)
    try:
        converted = ImageCms.profileToProfile(
            base,
            io.BytesIO(icc),
            _SRGB,
            outputMode="RGB",
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # a profile that does not fit the pixels is ignored
    assert converted is not None
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _has_alpha(image: Image.Image) -> bool:
    if image.mode not in ("RGBA", "LA"):
        return False
    extrema = image.getchannel("A").getextrema()
    assert isinstance(extrema, tuple)
    return bool(extrema[0] != 255)


def _encode(image: Image.Image, box: tuple[int, int], quality: int) -> Thumbnail:
    """Re-encode from pixels only: no EXIF, GPS, XMP, comments or profiles are carried over."""
    buffer = io.BytesIO()
    if _has_alpha(image):
        clean = _without_metadata(image.convert("RGBA"))
        clean.save(buffer, "WEBP", quality=quality, method=WEBP_METHOD, alpha_quality=100)
        fmt, extension = "WEBP", "webp"
    else:
        clean = _without_metadata(image.convert("L" if image.mode in ("L", "LA") else "RGB"))
        clean.save(buffer, "JPEG", quality=quality, optimize=False)
        fmt, extension = "JPEG", "jpg"
    return Thumbnail(
        box=box,
        width=clean.width,
        height=clean.height,
        data=buffer.getvalue(),
        format=fmt,
        media_type=MEDIA_TYPES[fmt],
        extension=extension,
    )


def _without_metadata(image: Image.Image) -> Image.Image:
    image.info.clear()
    return image


class _Stopwatch:
    """Adds the seconds spent in each stage to `timings`, when the caller wants them."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                elapsed = time.perf_counter() - started
                self.timings[stage] = self.timings.get(stage, 0.0) + elapsed
