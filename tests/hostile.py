"""The hostile corpus: small files that cost a decoder far more than their size (issue 13).

Every file here passes the upload checks that existed before the decode budget: the header is
valid and at or under the 100 MP pixel limit. What they cost is memory (flat colour compresses
to almost nothing, then decodes at full size) or CPU (thousands of progressive scans).

Built without holding the pixels where the format allows it: PNGs from one flushed deflate
block repeated (as `tests.corpus.black_png` does), the lossless WebP as a hand-written VP8L
bitstream whose prefix codes all have one symbol (0 bits per pixel: ~60 bytes for 100 MP), the
scan bomb and the GIF by repeating segments cut from small Pillow-made files. Only the 100 MP
JPEGs are encoded by Pillow from a 400 MB image (0.4 s baseline, 1.5 s progressive).

`build(directory)` writes every file once into `directory` and returns the paths; the tests
call it from a session-scoped fixture, so each session builds the corpus once in its temp dir.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.corpus import PNG_SIGNATURE, _png_chunk
from tests.images import encode

VERSION = 1  # bump when a builder changes, so a cached file is not reused
SIDE = 10_000  # 100 MP: the default MAX_IMAGE_PIXELS, so every file passes the pixel check

# channels per PNG colour type
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def flat_png(
    width: int,
    height: int,
    colour_type: int = 0,
    bit_depth: int = 8,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    header_height: int | None = None,
) -> bytes:
    """A PNG of all-zero samples, without ever holding the pixels.

    `extra` chunks go between IHDR and IDAT (PLTE, tRNS). `header_height` lets IHDR promise a
    different height than the data holds (the decoder stops at the header's, or runs out).
    """
    row_bytes = (width * _PNG_CHANNELS[colour_type] * bit_depth + 7) // 8 + 1
    rows = next(
        r for r in range(min(height, max(1, 4_000_000 // row_bytes)), 0, -1) if height % r == 0
    )
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(row_bytes * rows)) + raw.flush(zlib.Z_FULL_FLUSH)
    adler = (row_bytes * height % 65521) << 16 | 1
    stream = b"\x78\xda" + block * (height // rows) + b"\x03\x00" + adler.to_bytes(4, "big")
    declared = height if header_height is None else header_height
    header = struct.pack(">IIBBBBB", width, declared, bit_depth, colour_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    chunks += [_png_chunk(kind, body) for kind, body in extra]
    chunks += [_png_chunk(b"IDAT", stream), _png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def png_header_only(width: int, height: int, colour_type: int, bit_depth: int = 8) -> bytes:
    """The header promises width x height; the data holds one row: a decoder allocates it all."""
    row = bytes((width * _PNG_CHANNELS[colour_type] * bit_depth + 7) // 8 + 1)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row, 9))
        + _png_chunk(b"IEND", b"")
    )


class _Bits:
    """LSB-first bit writer, as VP8L reads."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= value << self.count
        self.count += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def flat_webp_lossless(width: int, height: int, argb: tuple[int, int, int, int]) -> bytes:
    """A lossless WebP of one colour, written as a VP8L bitstream by hand.

    No transforms, no colour cache, no meta prefix codes; each of the five prefix codes is a
    "simple" code with a single symbol, which has length zero: every pixel costs no bits.
    """
    alpha, red, green, blue = argb
    bits = _Bits()
    bits.put(0x2F, 8)  # signature
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(int(alpha != 255), 1)  # alpha_is_used hint
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for symbol in (green, red, blue, alpha, 0):  # green (+lengths), red, blue, alpha, distance
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(1, 1)  # an 8-bit symbol
        bits.put(symbol, 8)
    payload = bits.bytes()
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment; an SOS segment's end includes its entropy data."""
    out, position = [], 2
    while position < len(data) - 1:
        marker = data[position + 1]
        if marker == 0xD9:
            out.append((marker, position, position + 2))
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        end = position + 2 + length
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
        out.append((marker, position, end))
        position = end
    return out


def scan_bomb(scans: int = 5000, side: int = 2048) -> bytes:
    """A progressive JPEG whose smallest scan (with its Huffman table) is repeated to `scans`.

    The repeats are legal syntax; libjpeg only warns ("inconsistent progression sequence"),
    which Pillow does not turn into an error, and then entropy-decodes every block of the image
    once per scan: the CPU cost grows with scans x blocks while the file stays small (a flat
    image, so each AC scan is one end-of-band run: a few bytes).
    """
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(data)
    units = []
    for index, (marker, _, end) in enumerate(segments):
        if marker == 0xDA:
            first = index
            while segments[first - 1][0] == 0xC4:  # with the DHT the scan needs
                first -= 1
            units.append(data[segments[first][1] : end])
    unit = min(units[1:], key=len)  # an AC scan: repeating the DC scan would change nothing
    eoi = segments[-1][1]
    return data[:eoi] + unit * (scans - len(units)) + data[eoi:]


def many_frames_gif(frames: int = 5000, side: int = 500) -> bytes:
    """A GIF with `frames` frames: a full first frame, then 1x1 frames cut from a tiny GIF."""
    first = encode(Image.new("P", (side, side), 1), "GIF")
    tiny = encode(Image.new("P", (1, 1), 2), "GIF")
    descriptor = tiny.index(b"\x2c", 13 + (3 << ((tiny[10] & 7) + 1) if tiny[10] & 0x80 else 13))
    frame = b"\x21\xf9\x04\x00\x02\x00\xff\x00" + tiny[descriptor:-1]  # GCE: 20 ms, then frame
    return first[:-1] + frame * (frames - 1) + b"\x3b"


def animated_webp(frames: int = 300, side: int = 64) -> bytes:
    colours = [(i * 97 % 256, i * 57 % 256, i // 256 * 40 % 256) for i in range(frames)]
    images = [Image.new("RGB", (side, side), colour) for colour in colours]
    return encode(
        images[0], "WEBP", save_all=True, append_images=images[1:], duration=20, lossless=True
    )


def _jpeg(side: int, progressive: bool, subsampling: int = 2, mode: str = "RGB") -> bytes:
    colour = (200, 100, 50) if mode == "RGB" else 120
    image = Image.new(mode, (side, side), colour)
    return encode(image, "JPEG", quality=85, progressive=progressive, subsampling=subsampling)


@dataclass(frozen=True)
class Hostile:
    name: str
    filename: str
    build: Callable[[], bytes]
    # What the service must answer with the proposed defaults (MAX_DECODE_MEMORY 320 MB,
    # 100 scans): "refused" (413 at upload: the decode estimate is over MAX_DECODE_MEMORY, or
    # too many scans), "error" (accepted, ends ERROR), "done" (accepted, thumbnails made, with a
    # peak under MAX_DECODE_MEMORY).
    expected: str
    note: str


PLTE = (b"PLTE", bytes((0, 0, 0, 255, 0, 0)))
HOSTILE: list[Hostile] = [
    Hostile(
        "webp_lossless_flat_100mp",
        "flat.webp",
        lambda: flat_webp_lossless(SIDE, SIDE, (255, 30, 90, 200)),
        "refused",
        "one colour, VP8L with 0-bit codes; 1526 MB peak through Pillow's plugin, 1145 MB now",
    ),
    Hostile(
        "png16_grey_100mp",
        "grey16.png",
        lambda: flat_png(SIDE, SIDE, colour_type=0, bit_depth=16),
        "done",
        "I;16: 200 MB decoded; 954 MB peak before the strip conversion, 207 MB after",
    ),
    Hostile(
        "rgba_png_100mp",
        "rgba.png",
        lambda: flat_png(SIDE, SIDE, colour_type=6),
        "refused",
        "400 MB decoded; 804 MB peak before the strip conversion, 424 MB after",
    ),
    Hostile(
        "palette_trns_png_100mp",
        "palette.png",
        lambda: flat_png(SIDE, SIDE, colour_type=3, extra=(PLTE, (b"tRNS", b"\x00"))),
        "done",
        "P with transparency: 100 MB decoded; 900 MB peak before the strip conversion, 138 after",
    ),
    Hostile(
        "progressive_jpeg_100mp",
        "progressive.jpg",
        lambda: _jpeg(SIDE, progressive=True),
        "refused",
        "whole-image coefficient buffer (300 MB at 4:2:0) that draft does not shrink",
    ),
    Hostile(
        "scan_bomb_jpeg",
        "bomb.jpg",
        scan_bomb,
        "refused",
        "5000 progressive scans of a flat 2048x2048 image",
    ),
    Hostile(
        "gif_5000_frames",
        "frames.gif",
        many_frames_gif,
        "done",
        "only the first frame is decoded; n_frames is never asked",
    ),
    Hostile(
        "header_less_than_data_png",
        "less.png",
        lambda: flat_png(1000, 100_000, header_height=1000),
        "done",
        "IHDR says 1000x1000, the data holds 1000x100000: the decoder stops at the header's",
    ),
    Hostile(
        "header_more_than_data_png",
        "more.png",
        lambda: png_header_only(SIDE, SIDE, colour_type=0),
        "done",
        "IHDR says 10000x10000 grey, one row in a complete zlib stream: Pillow takes the early "
        "end of the stream as the end of the image (rows left black); the 100 MB it allocates "
        "are never touched, so the measured peak is ~10 MB (the estimate counts them)",
    ),
    Hostile(
        "header_more_than_data_rgba_png",
        "more_rgba.png",
        lambda: png_header_only(SIDE, SIDE, colour_type=6),
        "refused",
        "IHDR says 10000x10000 RGBA, one row of data: refused from the header alone",
    ),
    Hostile(
        "header_more_than_data_truncated_png",
        "cut.png",
        lambda: flat_png(SIDE, SIDE // 10)[:-40],
        "error",
        "10000x1000 grey whose zlib stream is cut: decoded as far as it goes, then ERROR",
    ),
]
BASELINE = Hostile(
    "baseline_jpeg_100mp",
    "baseline.jpg",
    lambda: _jpeg(SIDE, progressive=False),
    "done",
    "a plain 100 MP photo: draft decodes it at 1/8",
)


def build(directory: Path, cases: list[Hostile] | None = None) -> dict[str, Path]:
    """Write each case once into `directory` (kept if already there) and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases if cases is not None else [*HOSTILE, BASELINE]:
        path = directory / f"v{VERSION}-{case.filename}"
        if not path.exists():
            partial = path.with_suffix(".part")
            partial.write_bytes(case.build())
            partial.replace(path)
        paths[case.name] = path
    return paths
