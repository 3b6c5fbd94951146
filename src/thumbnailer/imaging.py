"""Thumbnails: pure, synchronous Pillow code; bytes or a path in, encoded thumbnails out.

Doing less work is what makes this fast:
- JPEGs decode at a reduced DCT scale (`draft`) just large enough for the biggest box, so a
  12 MP photo is decoded at 1/2 of its size and never exists at full resolution (keeping
  >= 2x the box would cost a full decode and a 4x larger resize for a difference not visible
  at thumbnail size: bench/results/imaging-decisions.md §1);
- orientation and colour conversion run on the largest thumbnail, not on the decoded image;
- smaller sizes are derived from the larger one (1200 -> 300 -> 100), never from the source.

Output: opaque images become baseline JPEG. Images whose alpha channel is actually used become
lossy WebP with a lossless alpha plane, all sizes alike. PNG keeps the alpha too, but for
photographic content its zlib encoder is both the slowest and by far the largest choice, while
WebP is a ninth of the size at the same speed and every current browser displays it; a lower
WebP effort saves time for more bytes, and thumbnails are encoded once and served many times,
so bytes win (bench/results/imaging-decisions.md §2). That is THUMBNAIL_FORMAT=auto; webp or
avif write every image in that format. Variants (make_variant) are made the same way from the
original, drafted for their own size, and written as JPEG, PNG, WebP or AVIF as they ask.

Inputs beyond JPEG, PNG, WebP and GIF: AVIF through Pillow's own plugin (libavif, which hands
over the stored pixels with the irot/imir orientation as an EXIF tag, applied here as for a
JPEG) and HEIC/HEIF through pillow-heif (libheif, which applies irot/imir itself and resets the
EXIF tag, so nothing is turned twice). Neither decodes at a reduced scale.

The pixel limit is ours alone: formats are recognised by their signature and opened through
their Pillow plugin directly, so Pillow's process-wide MAX_IMAGE_PIXELS guard is neither
consulted nor changed; if Pillow raises its own bomb error anyway, it becomes ImageTooLarge.

Memory is bounded before anything is decoded (issue 13): probe reads what decoding will cost
from the header (mode, JPEG sampling and scans, WebP chunks; never through a decoder that
allocates), estimate_decode turns it into peak bytes (decode_budget, calibrated against measured
peak RSS in tests/test_hostile_imaging.py) and check_decode_budget refuses past a limit. What is
decoded is kept to one full-size copy where the codec allows it: modes that need a conversion
(16-bit, palette, 1-bit, and the premultiplied alpha Pillow filters RGBA and LA in) are
converted and box-reduced in strips, and a WebP's decoder is dropped as soon as its frame is out.
Progressive JPEGs with more than max_scans scans are refused from their markers (TooManyScans):
libjpeg would make a pass over the whole image for each one. imaging_subprocess runs all of this
in a child process with an address-space cap and a deadline.

Thread-safe: no global state changes, nothing shared between calls, so the worker runs it in a
thread pool (Pillow releases the GIL while decoding, resizing and encoding).
"""

from __future__ import annotations

import io
import math
import mmap
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from PIL import (
    AvifImagePlugin,
    GifImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
    _webp,
)
from pillow_heif.as_plugin import HeifImageFile

from thumbnailer import decode_budget
from thumbnailer.formats import EXTENSIONS, MEDIA_TYPES
from thumbnailer.variant_spec import VariantSpec

# The plugin classes themselves, not Image.open: that keeps Pillow's global pixel guard out of
# the way and reads an MPO (a phone JPEG with extra pictures) as the plain JPEG it starts with.
PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "GIF": GifImagePlugin.GifImageFile,
    "AVIF": AvifImagePlugin.AvifImageFile,
    # pillow-heif's plugin class, used directly: its register_heif_opener would change
    # Pillow's process-wide registry.
    "HEIF": HeifImageFile,
}
# ISO-BMFF brands (the ftyp box) of the two HEIF-family formats we read. AVIF goes to
# Pillow's own decoder (libavif), HEIC (HEVC inside) to libheif through pillow-heif.
AVIF_BRANDS = frozenset({b"avif", b"avis"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
GENERIC_BRANDS = frozenset({b"mif1", b"msf1"})
SNIFF_BYTES = 64
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
# libavif/aom speed 0 (slowest, smallest) to 10; 6 is Pillow's default. One encoder thread:
# the worker runs WORKER_CONCURRENCY jobs at once, one per core, and each thread's stack and
# malloc arena count against the decoder process's address-space cap.
AVIF_SPEED = 6
AVIF_THREADS = 1
THUMBNAIL_FORMATS = ("auto", "webp", "avif")
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
# Progressive scans a JPEG may have. Encoders write 10 (libjpeg's simple progression for
# colour, 6 for grey) and mozjpeg's scan optimisation stays well under 100; libjpeg itself has
# no limit and entropy-decodes every block of the image once per scan, so a small file with
# thousands of near-empty scans costs minutes of CPU (the cure53 audit of libjpeg-turbo, 2019;
# libjpeg-turbo's answer is an opt-in limit: djpeg/jpegtran `-maxscans N`, TurboJPEG
# TJPARAM_SCANLIMIT, which its own fuzzers set to 500; nvImageCodec defaults to 256). Measured:
# bench/results/imaging-decisions.md §4.
DEFAULT_MAX_SCANS = 100
STRIP_PIXELS = decode_budget.STRIP_PIXELS
REDUCING_GAP = decode_budget.REDUCING_GAP
# JPEG markers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC); lossless ones have no DCT.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
# The end of a scan's entropy-coded data: 0xFF followed by anything but a stuffed zero, a
# restart marker or another 0xFF (fill bytes).
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
GIF_FRAME_CAP = 1_000_000


class ImagingError(Exception):
    """A permanent failure: the image ends in ERROR with this message as the reason."""


class UnsupportedImage(ImagingError):
    """The content is not a JPEG, PNG, WebP, GIF, AVIF or HEIF image."""


class ImageTooLarge(ImagingError):
    """Width x height is over the pixel limit (a decompression bomb, or just too big)."""


class CorruptImage(ImagingError):
    """The header looked right but the data cannot be decoded (truncated, damaged)."""


class TooManyScans(ImageTooLarge):
    """A progressive JPEG with more scans than the limit: decoding it would cost minutes of CPU."""


class DecodeTooLarge(ImageTooLarge):
    """Decoding would need more memory than the limit, estimated from the header."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. Beyond the first four, the facts the decode estimate needs."""

    format: str
    media_type: str
    width: int
    height: int
    mode: str = ""  # Pillow's mode of the first frame, before any conversion
    frames: int = 1  # GIF: counted (up to GIF_FRAME_CAP); only the first is ever decoded
    progressive: bool = False  # JPEG: a progressive SOF
    scans: int = 1  # JPEG: SOS segments, counted up to max_scans + 1
    sampling: tuple[tuple[int, int], ...] = ()  # JPEG: each component's (h, v) sampling factors
    lossless: bool = False  # JPEG: a lossless SOF, which cannot be decoded at a reduced scale
    transparency: bool = False  # P, L, RGB: a transparent index or colour is declared
    orientation: int = 1  # JPEG: EXIF orientation (the draft target depends on it)
    file_bytes: int = 0  # the encoded size (the worker holds it; Pillow's WebP copies it twice)

    def layout(self) -> decode_budget.Layout:
        return decode_budget.Layout(
            format=self.format,
            mode=self.mode,
            width=self.width,
            height=self.height,
            progressive=self.progressive,
            scans=self.scans,
            sampling=self.sampling,
            lossless=self.lossless,
            transparency=self.transparency,
            orientation=self.orientation,
            file_bytes=self.file_bytes,
        )


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


def probe(path: Path | bytes, max_pixels: int, *, max_scans: int = DEFAULT_MAX_SCANS) -> ImageInfo:
    """Recognise the format by content and read the dimensions from the header only.

    Also reads what estimate_decode needs: the mode, and for a JPEG its markers up to the end
    (scans, sampling, progressive or not; a scan's entropy data is skipped with one regex
    search, never decoded); raises TooManyScans past `max_scans` scans. A file that cannot be
    read at all (missing, no permission) raises OSError: that is the caller's trouble, not the
    image's.
    """
    return _probe(path, max_pixels, max_scans)


def estimate_decode(
    source: ImageInfo | Path | bytes,
    boxes: Sequence[tuple[int, int]],
    *,
    max_pixels: int = 2**62,
    max_scans: int = DEFAULT_MAX_SCANS,
) -> decode_budget.Estimate:
    """Peak memory make_thumbnails(source, boxes) needs above the idle process, from the header.

    `source` is what probe returned, or the file itself (a path or its bytes: probed here).
    """
    info = source if isinstance(source, ImageInfo) else _probe(source, max_pixels, max_scans)
    return decode_budget.estimate(info.layout(), list(boxes))


def estimate_decode_bytes(
    source: ImageInfo | Path | bytes,
    boxes: Sequence[tuple[int, int]],
    *,
    max_pixels: int = 2**62,
    max_scans: int = DEFAULT_MAX_SCANS,
) -> int:
    """estimate_decode(...).total: the bytes to admit a job against a memory budget."""
    return estimate_decode(source, boxes, max_pixels=max_pixels, max_scans=max_scans).total


def check_decode_budget(
    info: ImageInfo, boxes: Sequence[tuple[int, int]], max_bytes: int
) -> decode_budget.Estimate:
    """The estimate, or DecodeTooLarge (an ImageTooLarge: 413 at upload) when over `max_bytes`."""
    estimate = decode_budget.estimate(info.layout(), list(boxes))
    if estimate.total > max_bytes:
        raise DecodeTooLarge(
            f"decoding this {info.width}x{info.height} {info.format} image ({info.mode}) would "
            f"need about {_mb(estimate.total)} of memory; the limit is {_mb(max_bytes)}"
        )
    return estimate


def make_thumbnails(
    source: Path | bytes,
    boxes: Sequence[tuple[int, int]],
    *,
    max_pixels: int,
    jpeg_quality: int = 85,
    timings: dict[str, float] | None = None,
    max_scans: int = DEFAULT_MAX_SCANS,
    max_decode_bytes: int | None = None,
    output_format: str = "auto",
) -> list[Thumbnail]:
    """One thumbnail per box, in the order given; each fits its box and is never enlarged.

    Refuses before decoding what probe refuses (pixels, scans) and, with `max_decode_bytes`,
    an image whose decode estimate is over it (DecodeTooLarge). `output_format` is
    THUMBNAIL_FORMAT: auto (JPEG, WebP when the alpha is used), webp or avif.
    """
    if output_format not in THUMBNAIL_FORMATS:
        raise ValueError(f"output_format must be one of {THUMBNAIL_FORMATS}, not {output_format!r}")
    if not boxes or any(side < 1 for box in boxes for side in box):
        raise ValueError(f"boxes must be a non-empty list of positive sizes, not {boxes!r}")
    clock = _Stopwatch(timings)
    largest_first = sorted(set(boxes), key=lambda box: box[0] * box[1], reverse=True)
    with clock("decode"):  # the header walk is part of the decode's cost
        info = _probe(source, max_pixels, max_scans)
        if max_decode_bytes is not None:
            check_decode_budget(info, boxes, max_decode_bytes)
    opener = _decoded_webp if info.format == "WEBP" else _opened
    with opener(source) as image:
        _check_pixels(image, max_pixels)
        with clock("decode"):
            orientation, displayed = _decode_once(image, largest_first[0])
        with clock("resize"):
            made = _cascade(image, largest_first, orientation, displayed)
    with clock("encode"):
        encode = _encoder_for(made[largest_first[0]], jpeg_quality, output_format)
        encoded = {box: encode(made[box], box) for box in largest_first}
    return [encoded[box] for box in boxes]


@dataclass(frozen=True)
class VariantPlan:
    """Sizes in displayed orientation: what the frame is drafted for, resized to, cut to."""

    draft_box: tuple[int, int]  # covers the output: JPEG draft never decodes below it
    resize: tuple[int, int]  # the whole frame is resized to this
    output: tuple[int, int]  # and, for cover, cropped around the centre to this

    @property
    def crops(self) -> bool:
        return self.resize != self.output


def plan_variant(displayed: tuple[int, int], spec: VariantSpec, max_side: int) -> VariantPlan:
    """contain: inside the box, never enlarged (a missing side is bounded by `max_side`);
    cover: exactly width x height, the centre of the image scaled to cover it; fill: exactly
    width x height, stretched. cover and fill may enlarge: the size asked for is the point."""
    width, height = displayed
    if spec.fit == "contain" or spec.width is None or spec.height is None:
        size = fit(displayed, (spec.width or max_side, spec.height or max_side))
        return VariantPlan(size, size, size)
    wanted = (spec.width, spec.height)
    scale = max(wanted[0] / width, wanted[1] / height)
    # Rounded up, so the covering frame is never a pixel short of the crop.
    covering = (
        max(wanted[0], math.ceil(width * scale - 1e-9)),
        max(wanted[1], math.ceil(height * scale - 1e-9)),
    )
    draft = fit(displayed, covering)
    if spec.fit == "cover":
        return VariantPlan(draft, covering, wanted)
    return VariantPlan(draft, wanted, wanted)


def estimate_variant_bytes(
    info: ImageInfo, spec: VariantSpec, max_side: int
) -> tuple[VariantPlan, int]:
    """The plan and the decode memory make_variant needs: the thumbnail estimate for the
    drafted size, plus the output's buffers where it is larger than the source (enlarging)."""
    plan = plan_variant(_stored((info.width, info.height), info.orientation), spec, max_side)
    estimate = decode_budget.estimate(info.layout(), [plan.draft_box])
    drafted = fit(_stored((info.width, info.height), info.orientation), plan.draft_box)
    extra = max(0, plan.resize[0] * plan.resize[1] - drafted[0] * drafted[1])
    per_pixel = 4 * 3 + decode_budget.ENCODE_BYTES_A_PIXEL
    return plan, estimate.total + extra * per_pixel


def make_variant(
    source: Path | bytes,
    spec: VariantSpec,
    *,
    max_pixels: int,
    max_side: int,
    max_scans: int = DEFAULT_MAX_SCANS,
    max_decode_bytes: int | None = None,
    timings: dict[str, float] | None = None,
) -> Thumbnail:
    """One image made to `spec` from the original, the way thumbnails are made: a JPEG drafted
    at the smallest scale still covering the output, EXIF orientation applied, sRGB, no
    metadata. Returned as a Thumbnail whose box is its own size."""
    clock = _Stopwatch(timings)
    with clock("decode"):
        info = _probe(source, max_pixels, max_scans)
        plan, need = estimate_variant_bytes(info, spec, max_side)
        if max_decode_bytes is not None and need > max_decode_bytes:
            raise DecodeTooLarge(
                f"making this {spec.width}x{spec.height} variant of a {info.width}x{info.height} "
                f"{info.format} image would need about {_mb(need)} of memory; "
                f"the limit is {_mb(max_decode_bytes)}"
            )
    opener = _decoded_webp if info.format == "WEBP" else _opened
    with opener(source) as image:
        _check_pixels(image, max_pixels)
        with clock("decode"):
            orientation, _ = _decode_once(image, plan.draft_box)
        with clock("resize"):
            made = _to_display(image, plan.resize, orientation)
            if plan.crops:
                made = _centre_crop(made, plan.output)
            if spec.grayscale:
                made = made.convert("LA" if _has_alpha(made) else "L")
    with clock("encode"):
        return _encode(made, spec.pillow_format, spec.quality, made.size)


def _centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    left = (image.width - size[0]) // 2
    top = (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with `size`'s aspect ratio inside `box`, never larger than `size`."""
    width, height = size
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes (SNIFF_BYTES of them) announce, among those we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    return None


def _sniff_ftyp(head: bytes) -> str | None:
    """AVIF or HEIF by the ftyp box's major brand, or for the generic image brands (mif1,
    msf1) by the compatible brands listed after it."""
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    brands = {major} | (compatible if major in GENERIC_BRANDS else set())
    if brands & AVIF_BRANDS:
        return "AVIF"
    if brands & HEIF_BRANDS:
        return "HEIF"
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
        fmt = sniff(stream.read(SNIFF_BYTES))
        if fmt is None:
            raise UnsupportedImage("not a JPEG, PNG, WebP, GIF, AVIF or HEIF image")
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


@contextmanager
def _decoded_webp(source: Path | bytes) -> Iterator[Image.Image]:
    """The first frame of a WebP, decoded without Pillow's plugin keeping its decoder alive.

    WebPImageFile.load leaves libwebp's two canvases and a bytes copy of the frame alive next to
    its image until the file is closed: 16 bytes a pixel through the whole resize. Here the
    decoder goes as soon as the frame is out, and the frame's bytes become the image without a
    copy (frombuffer maps RGBA/RGBX): 12 bytes a pixel at the peak, 4 after
    (bench/results/imaging-decisions.md §6).
    """
    data = source if isinstance(source, bytes) else source.read_bytes()
    try:
        decoder = _webp.WebPAnimDecoder(data)
        size, *_, rawmode = decoder.get_info()
        info = {}
        for key, chunk in (("icc_profile", "ICCP"), ("exif", "EXIF")):
            if value := decoder.get_chunk(chunk):
                info[key] = value
        frame, _ = decoder.get_next()
        del decoder
        image = Image.frombuffer(rawmode, size, frame, "raw", rawmode, 0, 1)
        image.info.update(info)
    except BOMB_ERRORS as exc:
        raise ImageTooLarge(f"the image is too large to decode safely: {exc}") from exc
    except DECODE_ERRORS as exc:
        raise CorruptImage(f"cannot decode the WEBP image: {exc}") from exc
    del data, frame
    yield image


def _format_of(image: ImageFile.ImageFile) -> str:
    fmt = image.format
    if fmt not in MEDIA_TYPES:  # cannot happen with PLUGINS as they are; keep the promise anyway
        raise UnsupportedImage(f"unexpected format {fmt!r}")
    return fmt


def _mb(value: int) -> str:
    return f"{value / 2**20:.0f} MB"


def _probe(source: Path | bytes, max_pixels: int, max_scans: int) -> ImageInfo:
    with _bytes_of(source) as data:
        if sniff(data[:SNIFF_BYTES]) == "WEBP":
            return _probe_webp(data, max_pixels)
    with _opened(source) as image:
        _check_pixels(image, max_pixels)
        fmt = _format_of(image)
        info = ImageInfo(
            fmt,
            MEDIA_TYPES[fmt],
            image.width,
            image.height,
            mode=image.mode,
            transparency="transparency" in image.info,
            orientation=_orientation(image) if fmt == "JPEG" else 1,
            frames=getattr(image, "n_frames", 1) if fmt == "PNG" else 1,  # APNG: from acTL
            file_bytes=len(source) if isinstance(source, bytes) else source.stat().st_size,
        )
    if fmt not in ("JPEG", "GIF"):
        return info
    with _bytes_of(source) as data:
        try:
            if fmt == "GIF":
                return replace(info, frames=_gif_frames(data))
            return _jpeg_layout(info, data, max_scans)
        except (IndexError, ValueError, struct.error) as exc:
            raise CorruptImage(f"cannot read the {fmt} structure: {exc}") from exc


@contextmanager
def _bytes_of(source: Path | bytes) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes without reading them into memory (a read-only map of a path)."""
    if isinstance(source, bytes):
        yield source
        return
    with source.open("rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            yield b""  # an empty file cannot be mapped
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _jpeg_layout(info: ImageInfo, data: bytes | mmap.mmap, max_scans: int) -> ImageInfo:
    """Walk the markers from SOI to EOI (or the end): the SOF's layout and the scan count."""
    position, scans, end = 2, 0, len(data)
    sampling: tuple[tuple[int, int], ...] = ()
    sof = 0xC0
    while position + 4 <= end:
        if data[position] != 0xFF:  # junk between segments: libjpeg warns and skips it
            position = data.find(b"\xff", position)
            if position < 0:
                break
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # EOI: an MPO's second picture or appended data lie beyond
            break
        if marker in STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        position += 2 + length
        if marker in SOF_MARKERS and not sampling:
            sof = marker
            components = segment[5]
            sampling = tuple(
                (segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15) for i in range(components)
            )
            if any(h < 1 or v < 1 for h, v in sampling):
                raise ValueError("a sampling factor of zero")
        elif marker == 0xDA:
            scans += 1
            if sof not in PROGRESSIVE_SOF:
                # Sequential JPEGs decode scan by scan in one pass: the scan-count trap is
                # progressive only, and not walking a photo's entropy data keeps the upload
                # path short (bench/results/imaging-decisions.md §5).
                break
            if scans > max_scans:
                raise TooManyScans(
                    f"the JPEG has more than {max_scans} scans; the limit is {max_scans} "
                    "(decoding each scan costs a pass over the whole image)"
                )
            found = _ENTROPY_END.search(data, position)
            position = found.start() if found else end
    return replace(
        info,
        progressive=sof in PROGRESSIVE_SOF,
        lossless=sof in LOSSLESS_SOF,
        scans=max(scans, 1),
        sampling=sampling,
    )


def _probe_webp(data: bytes | mmap.mmap, max_pixels: int) -> ImageInfo:
    """Read a WebP's RIFF chunks, never through Pillow: opening one there creates libwebp's
    animation decoder, which allocates two full canvases (800 MB of address space at 100 MP)
    before anything is decoded. Same size and mode as Pillow reports (tested)."""
    try:
        chunks = _riff_chunks(data)
        fourcc, payload = bytes(data[12:16]), bytes(data[20:30])
        alpha, frames = False, 1
        if fourcc == b"VP8 " and payload[3:6] == b"\x9d\x01\x2a":
            width = int.from_bytes(payload[6:8], "little") & 0x3FFF
            height = int.from_bytes(payload[8:10], "little") & 0x3FFF
        elif fourcc == b"VP8L" and payload[0] == 0x2F:
            bits = int.from_bytes(payload[1:5], "little")
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            alpha = bool(bits >> 28 & 1)
        elif fourcc == b"VP8X" and len(payload) == 10:
            alpha = bool(payload[0] & 0x10)
            width = int.from_bytes(payload[4:7], "little") + 1
            height = int.from_bytes(payload[7:10], "little") + 1
            if payload[0] & 0x02:  # animation: count the ANMF chunks
                frames = max(1, chunks.count(b"ANMF"))
        else:
            raise CorruptImage("cannot decode the WEBP image: no VP8, VP8L or VP8X header")
    except IndexError as exc:
        raise CorruptImage("cannot decode the WEBP image: the header is cut short") from exc
    _check_size(width, height, max_pixels)
    return ImageInfo(
        "WEBP",
        MEDIA_TYPES["WEBP"],
        width,
        height,
        mode="RGBA" if alpha else "RGB",
        frames=frames,
        file_bytes=len(data),
    )


def _riff_chunks(data: bytes | mmap.mmap) -> list[bytes]:
    """The top-level chunk names, checking each lies inside the file as libwebp's demuxer does
    (a cut file is refused at upload, as it was when Pillow's open ran the demuxer)."""
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        raise CorruptImage("cannot decode the WEBP image: the file is cut short")
    position, names = 12, []
    while position + 8 <= end:
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        if position + 8 + size > end:
            raise CorruptImage("cannot decode the WEBP image: a chunk runs past the end")
        names.append(bytes(data[position : position + 4]))
        position += 8 + size + (size & 1)
    return names


def _gif_frames(data: bytes | mmap.mmap) -> int:
    """Count image descriptors by skipping blocks (no LZW decoding), up to GIF_FRAME_CAP."""
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, end = 0, len(data)
    while position < end and frames < GIF_FRAME_CAP:
        introducer = data[position]
        if introducer == 0x3B:  # trailer
            break
        if introducer == 0x2C:
            frames += 1
            local = data[position + 9]
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW size
        elif introducer == 0x21:
            position += 2
        else:
            break  # garbage after the frames: Pillow stops there too
        while position < end and data[position]:  # data sub-blocks
            position += data[position] + 1
        position += 1
    return max(frames, 1)


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    _check_size(image.width, image.height, max_pixels)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} ({pixels} pixels); the limit is {max_pixels} pixels"
        )
    if pixels == 0:
        raise CorruptImage("the image has no pixels")


def _decode_once(image: Image.Image, box: tuple[int, int]) -> tuple[int, tuple[int, int]]:
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
    resized = _first_resize(image, _stored(size, orientation))
    if orientation in TRANSPOSE:
        resized = resized.transpose(TRANSPOSE[orientation])
    return _to_srgb(resized, icc)


def _first_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """_resize(_to_8bit(image), size, first=True), without a full-size converted copy.

    Modes that need a conversion (I;16, P, 1, LA and RGBA, which Pillow premultiplies to La
    and RGBa before filtering) are converted and box-reduced in strips of ~STRIP_PIXELS whose
    height is a multiple of the reduction factor, so the result is the one Pillow's resize
    gives (the same reduce blocks, the same filter and box), while memory holds the decoded
    image, one strip and the reduced image instead of two or three full-size copies. Used only
    where it saves a full-size copy (decode_budget.uses_strips): otherwise it costs time
    (bench/results/imaging-decisions.md §8).
    """
    transparency = "transparency" in image.info
    target = decode_budget.eight_bit_mode(image.mode, transparency)
    work = {"LA": "La", "RGBA": "RGBa"}.get(target, target)
    width, height = image.size
    factor_x = int(width / size[0] / REDUCING_GAP) or 1
    factor_y = int(height / size[1] / REDUCING_GAP) or 1
    strips = decode_budget.uses_strips(image.mode, transparency, (factor_x, factor_y))
    if image.size == size or not strips:
        return _resize(_to_8bit(image), size, first=True)
    rows = max(factor_y, STRIP_PIXELS // width // factor_y * factor_y)
    reduced = Image.new(work, (-(-width // factor_x), -(-height // factor_y)))
    for top in range(0, height, rows):
        strip = _to_8bit(image.crop((0, top, width, min(height, top + rows))))
        if strip.mode != work:
            strip = strip.convert(work)
        if (factor_x, factor_y) != (1, 1):
            strip = strip.reduce((factor_x, factor_y))
        reduced.paste(strip, (0, top // factor_y))
        del strip
    box = (0.0, 0.0, width / factor_x, height / factor_y)
    resized = reduced.resize(size, RESAMPLE_FIRST, box=box)
    return resized.convert(target) if resized.mode != target else resized


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
    # The first step shrinks the most pixels; HAMMING (support 1) is much cheaper than LANCZOS
    # there and looks the same after draft's DCT scaling. reducing_gap=2.0: an integer box
    # reduction first, but only while 2x of the scale is left for the filter; a plain box
    # reduction is faster but visibly aliased and makes larger WebP files
    # (bench/results/imaging-decisions.md §3).
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
    """One format for every size of an image, chosen by THUMBNAIL_FORMAT and the alpha."""

    def __init__(self, alpha: bool, quality: int, output_format: str = "auto") -> None:
        self.quality = quality
        if output_format == "avif":
            self.format = "AVIF"
        elif output_format == "webp" or alpha:
            self.format = "WEBP"
        else:
            self.format = "JPEG"

    def __call__(self, image: Image.Image, box: tuple[int, int]) -> Thumbnail:
        return _encode(image, self.format, self.quality, box)


def _encode(image: Image.Image, fmt: str, quality: int | None, box: tuple[int, int]) -> Thumbnail:
    """Re-encode from pixels only: no EXIF, GPS, XMP, comments or profiles are carried over.

    JPEG has no alpha: a used alpha is flattened onto white (what a page behind it most often
    is) rather than dropped, which would show the colour under the transparent pixels.
    """
    buffer = io.BytesIO()
    alpha = _has_alpha(image)
    grey = image.mode in ("L", "LA")
    if fmt == "JPEG":
        clean = _without_metadata(
            _flattened(image) if alpha else image.convert("L" if grey else "RGB")
        )
        clean.save(buffer, "JPEG", quality=quality or 85, optimize=False)
    elif fmt == "PNG":
        mode = ("LA" if grey else "RGBA") if alpha else ("L" if grey else "RGB")
        clean = _without_metadata(image.convert(mode))
        clean.save(buffer, "PNG")
    elif fmt == "WEBP":
        clean = _without_metadata(image.convert("RGBA" if alpha else "RGB"))
        options = {"alpha_quality": 100} if alpha else {}
        clean.save(buffer, "WEBP", quality=quality or 85, method=WEBP_METHOD, **options)
    elif fmt == "AVIF":
        mode = "RGBA" if alpha else ("L" if grey else "RGB")
        clean = _without_metadata(image.convert(mode))
        clean.save(
            buffer, "AVIF", quality=quality or 85, speed=AVIF_SPEED, max_threads=AVIF_THREADS
        )
    else:
        raise ValueError(f"cannot write {fmt!r}")
    return Thumbnail(
        box=box,
        width=clean.width,
        height=clean.height,
        data=buffer.getvalue(),
        format=fmt,
        media_type=MEDIA_TYPES[fmt],
        extension=EXTENSIONS[fmt],
    )


def _flattened(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    background.alpha_composite(rgba)
    return background.convert("L" if image.mode == "LA" else "RGB")


def _encoder_for(largest: Image.Image, quality: int, output_format: str = "auto") -> _Encoder:
    # One format for all sizes of an image: judged on the largest, whose alpha is least blurred.
    return _Encoder(_has_alpha(largest), quality, output_format)


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
