"""What a variant costs in AVIF and in WebP, against libvips at matching settings, in one run.

One 12 MP photo-like JPEG, one variant of it: 1200x1200 contain (1200x900), quality 80, in each
output format. Two measurements per format, medians of `repeat` runs, same process, same run:
- the whole variant: ours is imaging.make_variant (draft decode, resize, orient, sRGB, encode);
  libvips' is thumbnail_buffer (shrink-on-load) and the save, the way an imgproxy-like service
  makes one;
- the encode alone, from the same 1200x900 pixels: Pillow's save vs libvips' save.
Matching settings: quality 80, 4:2:0, 8 bits; WebP effort 2 both (our WEBP_METHOD); AVIF
through libaom both, at our AVIF_SPEED 6, which libvips spells effort 3 (effort = 9 - speed);
one thread both (our AVIF_THREADS, pyvips.concurrency_set(1)): the worker runs one job a core.
The ratio is ours / libvips: above 1 means we are slower.
"""

from __future__ import annotations

import functools
import io
from typing import Any

from PIL import Image, features

from bench.common import corpus_file, encoded, median_ms, table
from tests.support import photo_like
from thumbnailer import imaging
from thumbnailer.variant_spec import make_spec

QUALITY = 80
BOX = 1200


def _source() -> bytes:
    path = corpus_file("variants_12mp.jpg", lambda: encoded(photo_like(4000, 3000), "JPEG"))
    return path.read_bytes()


def _pillow_variant(data: bytes, fmt: str) -> bytes:
    spec = make_spec(width=BOX, height=BOX, format=fmt, quality=QUALITY)
    return imaging.make_variant(data, spec, max_pixels=10**8, max_side=4096).data


def _vips_save(image: Any, fmt: str) -> bytes:
    if fmt == "webp":
        data: bytes = image.webpsave_buffer(Q=QUALITY, effort=imaging.WEBP_METHOD, keep=0)
    else:
        data = image.heifsave_buffer(
            Q=QUALITY, compression="av1", effort=9 - imaging.AVIF_SPEED, bitdepth=8,
            subsample_mode="on", keep=0,
        )  # fmt: skip
    return data


def _vips_variant(pyvips: Any, data: bytes, fmt: str) -> bytes:
    return _vips_save(pyvips.Image.thumbnail_buffer(data, BOX, height=BOX), fmt)


def _pillow_save(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "webp":
        image.save(buffer, "WEBP", quality=QUALITY, method=imaging.WEBP_METHOD)
    else:
        image.save(
            buffer, "AVIF", quality=QUALITY, speed=imaging.AVIF_SPEED,
            max_threads=imaging.AVIF_THREADS, subsampling="4:2:0",
        )  # fmt: skip
    return buffer.getvalue()


def run(quick: bool, earlier: dict[str, Any]) -> dict[str, Any]:
    import pyvips

    pyvips.cache_set_max(0)  # the same buffer again and again must not hit libvips' cache
    pyvips.concurrency_set(1)
    repeat = 2 if quick else 5
    data = _source()
    pixels = Image.open(io.BytesIO(_pillow_variant(data, "png"))).convert("RGB")
    vips_pixels = pyvips.Image.new_from_memory(
        pixels.tobytes(), pixels.width, pixels.height, 3, "uchar"
    )
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for fmt in ("webp", "avif"):
        ours = median_ms(functools.partial(_pillow_variant, data, fmt), repeat)
        theirs = median_ms(functools.partial(_vips_variant, pyvips, data, fmt), repeat)
        ours_encode = median_ms(functools.partial(_pillow_save, pixels, fmt), repeat)
        theirs_encode = median_ms(functools.partial(_vips_save, vips_pixels, fmt), repeat)
        sizes = (len(_pillow_save(pixels, fmt)), len(_vips_save(vips_pixels, fmt)))
        rows.append({
            "format": fmt,
            "variant ms (ours)": round(ours, 1),
            "variant ms (libvips)": round(theirs, 1),
            "encode ms (Pillow)": round(ours_encode, 1),
            "encode ms (libvips)": round(theirs_encode, 1),
            "bytes (Pillow)": sizes[0],
            "bytes (libvips)": sizes[1],
        })  # fmt: skip
        ratios[f"{fmt} variant, ours / libvips"] = round(ours / theirs, 2)
        ratios[f"{fmt} encode, Pillow / libvips"] = round(ours_encode / theirs_encode, 2)
    codecs = (
        f"Pillow {features.version('avif')} libavif, {features.version('webp')} libwebp; "
        f"libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    )
    markdown = "\n\n".join([
        f"12 MP photo-like JPEG -> {BOX}x{BOX} contain (1200x900), quality {QUALITY}, one "
        f"thread each, median of {repeat}; {codecs}.",
        table(list(rows[0]), [list(row.values()) for row in rows]),
        table(["ratio", "value"], [[k, v] for k, v in ratios.items()]),
    ])  # fmt: skip
    return {"rows": rows, "ratios": ratios, "markdown": markdown, "codecs": codecs}


if __name__ == "__main__":
    print(run(quick=True, earlier={})["markdown"])
