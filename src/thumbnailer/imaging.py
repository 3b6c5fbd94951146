"""Thumbnails: pure, synchronous Pillow code; bytes or a path in, encoded thumbnails out.

Doing less work is what makes this fast:
- JPEGs decode at a reduced DCT scale (`draft`) just large enough for the biggest box, so a
  12 MP photo is decoded at 1/2 of its size and never exists at full resolution (keeping
  >= 2x the box instead would mean a full decode here, 80 instead of 53 ms, then resizing 12 MP
  instead of 3 MP: ~1.7x the time, to go from 42.3 to 44.8 dB PSNR against full decode +
  LANCZOS, a difference not visible at thumbnail size);
- orientation and colour conversion run on the largest thumbnail, not on the decoded image;
- smaller sizes are derived from the larger one (1200 -> 300 -> 100), never from the source.

Output: opaque images become baseline JPEG. Images whose alpha channel is actually used become
lossy WebP with a lossless alpha plane, all sizes alike. PNG keeps the alpha too, but for
photographic content its zlib encoder is both the slowest and by far the largest choice (2.2 MB
at 1200x800 even at compress_level 1, 88 ms) while WebP at method 2 gives 255 KB in 96 ms and
every current browser displays it. Method 0 would halve the encode time for 24% more bytes;
thumbnails are encoded once and served many times, so bytes win at this price.

The pixel limit is ours alone: formats are recognised by their signature and opened through
their Pillow plugin directly, so Pillow's process-wide MAX_IMAGE_PIXELS guard is neither
consulted nor changed; if Pillow raises its own bomb error anyway, it becomes ImageTooLarge.

Thread-safe: no global state changes, nothing shared between calls, so the worker runs it in a
thread pool (Pillow releases the GIL while decoding, resizing and encoding).
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import (
    GifImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from thumbnailer.formats import EXTENSIONS, MEDIA_TYPES

# The plugin classes themselves, not Image.open: that keeps Pillow's global pixel guard out of
# the way and reads an MPO (a phone JPEG with extra pictures) as the plain JPEG it starts with.
PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "GIF": GifImagePlugin.GifImageFile,
}
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
WEBP_METHOD = 2  # libwebp effort 0-6; see the module docstring for the trade-off
# What a broken or hostile file raises somewhere inside a codec.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)
BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


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
    """Recognise the format by content and read the dimensions from the header only.

    A file that cannot be read at all (missing, no permission) raises OSError: that is the
    caller's trouble, not the image's.
    """
    with _opened(path) as image:
        _check_pixels(image, max_pixels)
        fmt = _format_of(image)
        return ImageInfo(fmt, MEDIA_TYPES[fmt], image.width, image.height)


def make_thumbnails(
    source: Path | bytes,
    boxes: Sequence[tuple[int, int]],
    *,
    max_pixels: int,
    jpeg_quality: int = 85,
    timings: dict[str, float] | None = None,
) -> list[Thumbnail]:
    """One thumbnail per box, in the order given; each fits its box and is never enlarged."""
    if not boxes or any(side < 1 for box in boxes for side in box):
        raise ValueError(f"boxes must be a non-empty list of positive sizes, not {boxes!r}")
    clock = _Stopwatch(timings)
    largest_first = sorted(set(boxes), key=lambda box: box[0] * box[1], reverse=True)
    with _opened(source) as image:
        _check_pixels(image, max_pixels)
        with clock("decode"):
            orientation, displayed = _decode_once(image, largest_first[0])
        with clock("resize"):
            made = _cascade(image, largest_first, orientation, displayed)
    with clock("encode"):
        encode = _encoder_for(made[largest_first[0]], jpeg_quality)
        encoded = {box: encode(made[box], box) for box in largest_first}
    return [encoded[box] for box in boxes]


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with `size`'s aspect ratio inside `box`, never larger than `size`."""
    width, height = size
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes announce, among the four we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@contextmanager
def _opened(source: Path | bytes) -> Iterator[ImageFile.ImageFile]:
    """Open lazily (header only), translating every codec failure into our three errors."""
    with ExitStack() as stack:
        # Opened outside the translation below: an unreadable file is not a corrupt image.
        stream: BinaryIO = (
            io.BytesIO(source)
            if isinstance(source, bytes)
            else stack.enter_context(source.open("rb"))
        )
        fmt = sniff(stream.read(16))
        if fmt is None:
            raise UnsupportedImage("not a JPEG, PNG, WebP or GIF image")
        stream.seek(0)
        try:
            with PLUGINS[fmt](stream) as image:
                yield image
        except ImagingError:
            raise
        except BOMB_ERRORS as exc:
            raise ImageTooLarge(f"the image is too large to decode safely: {exc}") from exc
        except DECODE_ERRORS as exc:
            raise CorruptImage(f"cannot decode the {fmt} image: {exc}") from exc


def _format_of(image: ImageFile.ImageFile) -> str:
    fmt = image.format
    if fmt not in MEDIA_TYPES:  # cannot happen with PLUGINS as they are; keep the promise anyway
        raise UnsupportedImage(f"unexpected format {fmt!r}")
    return fmt


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"the image is {image.width}x{image.height} ({pixels} pixels); "
            f"the limit is {max_pixels} pixels"
        )
    if pixels == 0:
        raise CorruptImage("the image has no pixels")


def _decode_once(image: ImageFile.ImageFile, box: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """Decode the first frame once (a JPEG at the smallest DCT scale still covering `box`).

    Returns the EXIF orientation and the displayed (oriented) size from the header, which
    draft's rounded-up reduced size must not change.
    """
    if image.format == "JPEG":
        orientation = _orientation(image)  # APP1 is parsed with the header: no decode here
        displayed = _stored(image.size, orientation)
        target = _stored(fit(displayed, box), orientation)
        image.draft(image.mode if image.mode in ("L", "CMYK") else "RGB", target)
        image.load()
        return orientation, displayed
    # PNG may keep its EXIF after the pixels, so reading it decodes: load first, explicitly.
    image.load()
    orientation = _orientation(image)
    return orientation, _stored(image.size, orientation)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except DECODE_ERRORS:
        return 1  # unreadable EXIF is ignored, as browsers do
    return value if value in TRANSPOSE else 1


def _stored(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """Map a size between displayed and stored orientation (a 90-degree turn swaps axes)."""
    return (size[1], size[0]) if orientation in SWAPS_AXES else size


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
    icc = image.info.get("icc_profile")
    resized = _resize(_to_8bit(image), _stored(size, orientation), first=True)
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
        return image
    # The first step shrinks the most pixels; HAMMING (support 1) costs 40% of LANCZOS there and
    # looks the same after draft's DCT scaling. reducing_gap=2.0: an integer box reduction
    # first, but only while 2x of the scale is left for the filter. A plain box reduction
    # (gap 1.0, libvips' shrink) is 2.5x faster on a 4 MP RGBA source but measured 37.6 vs
    # 40.3 dB PSNR against a full LANCZOS and 10-17% larger WebP files from the aliased grain.
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
    base = image.convert(image.mode.removesuffix("A")) if alpha is not None else image
    try:
        # A fresh sRGB profile per call: lcms profile handles are not for sharing across threads.
        converted = ImageCms.profileToProfile(
            base,
            io.BytesIO(icc),
            ImageCms.createProfile("sRGB"),
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


class _Encoder:
    """Re-encode from pixels only: no EXIF, GPS, XMP, comments or profiles are carried over."""

    def __init__(self, alpha: bool, jpeg_quality: int) -> None:
        self.alpha = alpha
        self.quality = jpeg_quality

    def __call__(self, image: Image.Image, box: tuple[int, int]) -> Thumbnail:
        buffer = io.BytesIO()
        if self.alpha:
            clean = _without_metadata(image.convert("RGBA"))
            clean.save(buffer, "WEBP", quality=self.quality, method=WEBP_METHOD, alpha_quality=100)
            fmt = "WEBP"
        else:
            clean = _without_metadata(image.convert("L" if image.mode in ("L", "LA") else "RGB"))
            clean.save(buffer, "JPEG", quality=self.quality, optimize=False)
            fmt = "JPEG"
        return Thumbnail(
            box=box,
            width=clean.width,
            height=clean.height,
            data=buffer.getvalue(),
            format=fmt,
            media_type=MEDIA_TYPES[fmt],
            extension=EXTENSIONS[fmt],
        )


def _encoder_for(largest: Image.Image, jpeg_quality: int) -> _Encoder:
    # One format for all sizes of an image: judged on the largest, whose alpha is least blurred.
    return _Encoder(_has_alpha(largest), jpeg_quality)


def _without_metadata(image: Image.Image) -> Image.Image:
    """`image` is always a fresh copy here, so clearing its info touches nothing shared."""
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
