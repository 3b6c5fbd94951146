"""What `imaging.make_thumbnails` will need in memory for one image, from its header alone.

Pure arithmetic on the facts `imaging.probe` reads (format, mode, size, JPEG layout); no I/O and
no Pillow, so the API can refuse at upload and the worker can admit jobs against a budget
(MemoryBudget, at the end: a byte semaphore for the worker's event loop).

The model adds up the buffers that are alive at the same time in our pipeline, per phase:

- decode: JPEG: the image at draft scale (1, 2, 4 or 8 by Pillow's rule) + libjpeg's
  whole-image coefficient buffer when the file has more than one scan (progressive, or
  sequential with components in separate scans: libjpeg must keep every DCT coefficient,
  2 bytes each, at full size, whatever the output scale). PNG, GIF: the full-size image in
  Pillow's mode (P, L, 1: 1 byte a pixel, I;16: 2, everything else 4). WebP: three full-size
  RGBA buffers at the peak: libwebp's WebPAnimDecoder holds the canvas and the previous-frame
  canvas, and hands the frame out as a bytes object; imaging drops the decoder then and maps
  those bytes as the image, so only one stays for the resize (bench/results/
  imaging-decisions.md §6).
  No scaled decoding exists for PNG, GIF or WebP through Pillow 13 (libwebp has
  `use_scaling`, but `PIL._webp` exposes only the animation decoder, and lossless VP8L keeps
  a full-size ARGB buffer even when scaling).
  AVIF (libavif through Pillow) and HEIC (libheif through pillow-heif): no scaled decoding;
  the full-size image, plus the decoder's own copies: its YUV planes and the interleaved
  RGB(A) it hands over (HEIF_DECODER_BYTES_A_PIXEL, one more a pixel for an alpha plane).
  Pillow's AVIF plugin keeps its decoder and those bytes until the file is closed, so they
  stay through the resize; pillow-heif drops them once the frame is loaded.
- resize: what stays from the decode + the conversion strips (modes that need a conversion
  are converted and box-reduced in strips of ~1 MP, so no full-size converted copy exists)
  + the box-reduced image + Pillow's horizontal-pass buffer + the first thumbnail and its
  conversions.
- encode: proportional to the largest thumbnail (libwebp's encoder needs the most).

Coefficients were calibrated by measuring peak RSS in a fresh process per case; the table is
in tests/test_hostile_imaging.py, which also checks that the estimate stays at or above what
is measured and within 2x + 32 MB of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

# Bytes a pixel in Pillow's storage: every multi-band mode is 4 bytes, "1" is a byte a pixel.
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
REDUCING_GAP = 2.0  # imaging._resize's reducing_gap: the box reduction factor follows from it
STRIP_PIXELS = 1 << 20  # imaging converts in strips of about this many pixels
STRIP_BYTES_A_PIXEL = 14  # crop + I;16 -> I -> point -> L, the costliest conversion
WEBP_COPIES = 3  # canvas, previous canvas, the frame's bytes (which become the image)
COEFFICIENT_BYTES = 128  # 64 coefficients of 2 bytes in each 8x8 block
ENCODE_BYTES_A_PIXEL = 8  # of the largest thumbnail: encoder buffers (libwebp needs the most)
FIXED_BYTES = 8 << 20  # allocator slack, codec tables, Python objects; measured
# AVIF/HEIC decoder copies: RGBA handed over (4) + YUV planes (up to 3 at 4:4:4, 8-bit)
HEIF_DECODER_BYTES_A_PIXEL = 7
HEIF_FORMATS = frozenset({"AVIF", "HEIF"})


@dataclass(frozen=True)
class Layout:
    """What the estimate needs to know about an image (imaging.ImageInfo provides it)."""

    format: str
    mode: str
    width: int
    height: int
    progressive: bool = False
    scans: int = 1
    sampling: tuple[tuple[int, int], ...] = ()
    lossless: bool = False
    transparency: bool = False
    orientation: int = 1
    file_bytes: int = 0


@dataclass(frozen=True)
class Estimate:
    total: int
    parts: dict[str, int] = field(compare=False)
    draft_scale: int = 1

    @property
    def megabytes(self) -> float:
        return self.total / 2**20


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The same rule as imaging.fit (kept here so this module stays free of Pillow)."""
    width, height = size
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def draft_scale(size: tuple[int, int], target: tuple[int, int]) -> int:
    """Pillow's JpegImageFile.draft: the largest of 8, 4, 2, 1 not above the size ratio."""
    ratio = min(size[0] // target[0], size[1] // target[1])
    return next(scale for scale in (8, 4, 2, 1) if ratio >= scale)


def eight_bit_mode(mode: str, transparency: bool) -> str:
    """The mode imaging._to_8bit brings `mode` to."""
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return mode
    if mode.startswith("I") or mode == "1":
        return "L"
    if mode == "P":
        return "RGBA" if transparency else "RGB"
    if mode in ("PA", "RGBa", "La"):
        return "RGBA"
    return "RGB"


def full_copies(mode: str, transparency: bool) -> int:
    """Full-size copies converting `mode` for the first resize would make, done whole: the
    steps of imaging._to_8bit, plus the premultiplied copy Pillow filters RGBA and LA in."""
    if mode in ("L", "RGB", "CMYK"):
        return 0
    if mode.startswith("I"):
        return 3  # I, I after point, L
    if mode in ("P", "PA", "RGBa", "La"):
        return 2 if eight_bit_mode(mode, transparency) == "RGBA" else 1
    return 1  # RGBA, LA (premultiply); 1 (L); RGBX and the rest (RGB)


def uses_strips(mode: str, transparency: bool, factor: tuple[int, int]) -> bool:
    """Whether imaging converts in strips: when that saves a full-size copy. With a box
    reduction every converted copy shrinks to the reduced size; without one, the strips still
    build one full-size converted image, which saves something only if there were two."""
    copies = full_copies(mode, transparency)
    return copies >= 2 or (copies == 1 and factor != (1, 1))


def coefficient_bytes(width: int, height: int, sampling: tuple[tuple[int, int], ...]) -> int:
    """libjpeg's whole-image coefficient arrays (jdcoefct.c): blocks rounded up to the MCU."""
    if not sampling:
        sampling = ((2, 2), (1, 1), (1, 1))
    h_max = max(h for h, _ in sampling)
    v_max = max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        blocks_x = -(-width * h // (h_max * 8))  # width_in_blocks
        blocks_y = -(-height * v // (v_max * 8))
        total += -(-blocks_x // h) * h * (-(-blocks_y // v) * v) * COEFFICIENT_BYTES
    return total


def estimate(
    layout: Layout, boxes: list[tuple[int, int]] | tuple[tuple[int, int], ...]
) -> Estimate:
    """Peak bytes make_thumbnails needs for `layout` and `boxes`, above the idle process."""
    box = max(boxes, key=lambda b: b[0] * b[1])
    width, height = layout.width, layout.height
    swapped = layout.orientation in (5, 6, 7, 8)
    displayed = (height, width) if swapped else (width, height)
    shown = fit(displayed, box)
    target = (shown[1], shown[0]) if swapped else shown
    parts: dict[str, int] = {}
    scale = 1
    if layout.format == "JPEG":
        if not layout.lossless:
            scale = draft_scale((width, height), target)
        grey = len(layout.sampling) == 1
        source_mode = "L" if grey else ("CMYK" if len(layout.sampling) == 4 else "RGB")
        decoded_size = (-(-width // scale), -(-height // scale))
        decoded = decoded_size[0] * decoded_size[1] * (1 if grey else 4)
        parts["decoded"] = decoded
        if layout.progressive or layout.scans > 1:
            parts["coefficients"] = coefficient_bytes(width, height, layout.sampling)
        parts["row_buffers"] = width * 16 * max(1, len(layout.sampling)) * 2
        decode_phase = sum(parts.values())
        kept = decoded
    elif layout.format == "WEBP":
        source_mode = "RGBA" if layout.mode == "RGBA" else "RGBX"  # what libwebp hands out
        decoded_size = (width, height)
        decoded = width * height * 4
        parts["decoded"] = decoded
        parts["decoder_copies"] = (WEBP_COPIES - 1) * decoded
        decode_phase = WEBP_COPIES * decoded
        kept = decoded  # the decoder is gone once the frame is out
    elif layout.format in HEIF_FORMATS:
        source_mode = layout.mode
        decoded_size = (width, height)
        decoded = width * height * 4
        alpha = 1 if "A" in layout.mode else 0
        parts["decoded"] = decoded
        parts["decoder_copies"] = width * height * (HEIF_DECODER_BYTES_A_PIXEL + alpha)
        decode_phase = decoded + parts["decoder_copies"]
        kept = decode_phase if layout.format == "AVIF" else decoded
    else:  # PNG, GIF: the full image in Pillow's mode, and row buffers
        source_mode = layout.mode
        decoded_size = (width, height)
        decoded = width * height * MODE_BYTES.get(layout.mode, 4)
        parts["decoded"] = decoded
        decode_phase = kept = decoded + width * 16

    target_mode = eight_bit_mode(source_mode, layout.transparency)
    work_bytes = 1 if target_mode == "L" else 4
    copies = full_copies(source_mode, layout.transparency)
    resize = 0
    if decoded_size != target:
        factor = (
            int(decoded_size[0] / target[0] / REDUCING_GAP) or 1,
            int(decoded_size[1] / target[1] / REDUCING_GAP) or 1,
        )
        reduced_height = -(-decoded_size[1] // factor[1])
        reduced = -(-decoded_size[0] // factor[0]) * reduced_height * work_bytes
        if uses_strips(source_mode, layout.transparency, factor):
            strip_rows = max(factor[1], STRIP_PIXELS // decoded_size[0] // factor[1] * factor[1])
            parts["strips"] = decoded_size[0] * strip_rows * STRIP_BYTES_A_PIXEL
            parts["reduced"] = reduced
        else:
            if copies:  # one whole conversion (or Pillow's premultiplied copy), then Pillow's
                parts["converted"] = decoded_size[0] * decoded_size[1] * work_bytes
            if factor != (1, 1):
                parts["reduced"] = reduced
        parts["resample"] = target[0] * reduced_height * work_bytes
        resize = sum(parts.get(key, 0) for key in ("strips", "reduced", "converted", "resample"))
    elif copies:
        parts["converted"] = decoded_size[0] * decoded_size[1] * work_bytes * min(copies, 2)
        resize += parts["converted"]
    thumbnail = target[0] * target[1]
    parts["thumbnail"] = thumbnail * 4 * 3  # resized, converted back or oriented, sRGB
    parts["encode"] = thumbnail * ENCODE_BYTES_A_PIXEL
    parts["fixed"] = FIXED_BYTES
    # The source itself: the worker reads it into memory; Pillow's WebP plugin reads it into a
    # bytes object and libwebp's demuxer keeps a copy of its own; the AVIF and HEIF plugins
    # read it into bytes for their decoder.
    copies = 3 if layout.format == "WEBP" else 2 if layout.format in HEIF_FORMATS else 1
    parts["source"] = layout.file_bytes * copies
    peak = max(decode_phase, kept + resize) + parts["thumbnail"] + parts["encode"]
    peak += FIXED_BYTES + parts["source"]
    return Estimate(peak, parts, scale)


class OverBudget(Exception):
    """One job needs more than the whole budget: it can never run (end it in ERROR)."""


class MemoryBudget:
    """Admission by bytes for one worker process: jobs running at once never add up past
    `total` (WORKER_MEMORY_BUDGET). First come, first served: a big job at the head of the
    line is not overtaken by small ones; it runs as soon as enough has been released.

        async with budget.reserve(imaging.estimate_decode_bytes(source, boxes)):
            ...  # decode
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("the budget must be positive")
        self.total = total
        self.used = 0
        self._line: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def reserve(self, nbytes: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Raises OverBudget at once when `nbytes` alone is over the budget."""
        if nbytes > self.total:
            raise OverBudget(
                f"the image needs about {nbytes / 2**20:.0f} MB to decode; "
                f"the worker's budget is {self.total / 2**20:.0f} MB"
            )
        return self._reserved(max(0, nbytes))

    @contextlib.asynccontextmanager
    async def _reserved(self, nbytes: int) -> AsyncIterator[None]:
        if not self._line and self.used + nbytes <= self.total:
            self.used += nbytes
        else:
            entry = (nbytes, asyncio.get_running_loop().create_future())
            self._line.append(entry)
            try:
                await entry[1]  # _grant has added nbytes to used on our behalf
            except BaseException:
                if entry[1].done() and not entry[1].cancelled():
                    self.used -= nbytes  # granted, then cancelled before it could run
                elif entry in self._line:
                    self._line.remove(entry)
                self._grant()
                raise
        try:
            yield
        finally:
            self.used -= nbytes
            self._grant()

    def _grant(self) -> None:
        while self._line:
            nbytes, turn = self._line[0]
            if turn.done():  # cancelled while waiting
                self._line.popleft()
            elif self.used + nbytes <= self.total:
                self._line.popleft()
                self.used += nbytes
                turn.set_result(None)
            else:
                break
