"""Part 1: the service's thumbnail function against naive Pillow and libvips, same corpus.

Methods, each making the 1200, 300 and 100 boxes from one input held in memory:
- service: thumbnailer.imaging.make_thumbnails, exactly what the worker runs;
- naive_pillow: full decode, three LANCZOS resizes from the full image, PNG for alpha;
- pyvips: libvips thumbnail (shrink-on-load) to 1200, then 300 and 100 from the previous size,
  in the service's formats with libvips' own encoder defaults (JPEG Q85; WebP Q85 at libvips'
  default effort 4 when there is alpha): libvips as a user would run it;
- pyvips_same_effort (alpha only): the same with WebP at the service's effort, which isolates
  decode + resize from the encoder setting the service chose;
- draft_floor: Pillow's reduced-scale JPEG decode alone, the floor any Pillow method pays.

Peak RSS is each method once on the 50 MP JPEG in a fresh interpreter, read from VmHWM: the
ru_maxrss of a child started from a large parent can report the parent's size.
"""

from __future__ import annotations

import functools
import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import corpus_file, encoded, median_ms, ratios_table, rows_table
from tests.support import photo_like
from thumbnailer.imaging import WEBP_METHOD, Thumbnail, make_thumbnails

BOXES = [(1200, 1200), (300, 300), (100, 100)]
LIMIT = 200_000_000
JPEG_QUALITY = 85


def _rgba(width: int, height: int) -> Image.Image:
    image = photo_like(width, height, 3).convert("RGBA")
    mask = Image.radial_gradient("L").resize((width, height))
    image.putalpha(mask.point(lambda v: 255 - v))
    return image


# name -> (kind, generator). Kinds: JPEG (all JPEG ratios), ALPHA, WEBP. Names are cache keys
# shared with bench/pipeline.py: change a generator only together with its name.
CORPUS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "jpeg_12mp.jpg": ("JPEG", lambda: encoded(photo_like(4000, 3000), "JPEG", quality=90)),
    "jpeg_24mp.jpg": ("JPEG", lambda: encoded(photo_like(6000, 4000, 1), "JPEG", quality=90)),
    "jpeg_12mp_progressive.jpg": (
        "JPEG",
        lambda: encoded(photo_like(4000, 3000, 2), "JPEG", quality=90, progressive=True),
    ),
    "jpeg_50mp.jpg": ("JPEG", lambda: encoded(photo_like(8660, 5774, 4), "JPEG", quality=90)),
    "jpeg_640x480.jpg": ("JPEG", lambda: encoded(photo_like(640, 480, 5), "JPEG", quality=90)),
    "png_4mp_rgba.png": ("ALPHA", lambda: encoded(_rgba(2400, 1600), "PNG")),
    "webp_4mp.webp": ("WEBP", lambda: encoded(photo_like(2400, 1600, 6), "WEBP", quality=85)),
}


def service(data: bytes) -> list[bytes]:
    thumbnails: list[Thumbnail] = make_thumbnails(
        data, BOXES, max_pixels=LIMIT, jpeg_quality=JPEG_QUALITY
    )
    return [t.data for t in thumbnails]


def naive_pillow(data: bytes) -> list[bytes]:
    image = Image.open(io.BytesIO(data))
    image.load()
    out = []
    for box in BOXES:
        copy = image.copy()
        copy.thumbnail(box, Image.Resampling.LANCZOS, reducing_gap=None)
        if copy.mode == "RGBA":
            out.append(encoded(copy, "PNG"))
        else:
            out.append(encoded(copy.convert("RGB"), "JPEG", quality=JPEG_QUALITY))
    return out


def pyvips_cascade(data: bytes, webp_effort: int | None = None) -> list[bytes]:
    import pyvips

    pyvips.cache_set_max(0)  # the same buffer again and again must not hit libvips' cache
    image = pyvips.Image.thumbnail_buffer(data, BOXES[0][0], height=BOXES[0][1]).copy_memory()
    alpha = image.hasalpha()
    webp_options = {} if webp_effort is None else {"effort": webp_effort}
    out = []
    for index, (width, height) in enumerate(BOXES):
        image = image if index == 0 else image.thumbnail_image(width, height=height)
        if alpha:
            out.append(image.webpsave_buffer(Q=JPEG_QUALITY, strip=True, **webp_options))
        else:
            out.append(image.jpegsave_buffer(Q=JPEG_QUALITY, strip=True))
    return out


def pyvips_same_effort(data: bytes) -> list[bytes]:
    return pyvips_cascade(data, webp_effort=WEBP_METHOD)


def draft_floor(data: bytes) -> list[bytes]:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", BOXES[0])
    image.load()
    return []


METHODS: dict[str, Callable[[bytes], list[bytes]]] = {
    "service": service,
    "naive_pillow": naive_pillow,
    "pyvips": pyvips_cascade,
    "pyvips_same_effort": pyvips_same_effort,
    "draft_floor": draft_floor,
}
THROUGHPUT_METHODS = ("service", "pyvips", "draft_floor")
RSS_METHODS = ("service", "naive_pillow", "pyvips", "draft_floor")
TARGETS = {
    "jpeg_service_vs_pyvips_median": "<= 0.9",
    "jpeg_12mp_service_vs_draft_floor": "<= 1.5",
    "alpha_service_vs_pyvips": "<= 1.0",
    "alpha_service_vs_pyvips_same_effort": "(information)",
    "jpeg_50mp_service_peak_rss_mb": "< 150",
}


ONLY_FOR = {"draft_floor": "JPEG", "pyvips_same_effort": "ALPHA"}


def applies(method: str, kind: str) -> bool:
    return ONLY_FOR.get(method, kind) == kind


def throughput(method: str, data: bytes, threads: int, seconds: float) -> float:
    """Images per second with `threads` threads running `method` back to back."""
    function = METHODS[method]
    function(data)  # warm up outside the window
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        count = 0
        while time.perf_counter() < deadline:
            function(data)
            count += 1
        return count

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: loop(), range(threads)))
    return total / (time.perf_counter() - started)


_PEAK = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"


def peak_rss_mb(method: str, path: Path) -> tuple[float, float]:
    """(peak RSS running `method` once, peak RSS of the same interpreter idle), in MB."""
    code = (
        "import sys; from bench.imaging import METHODS; "
        "METHODS[sys.argv[1]](open(sys.argv[2], 'rb').read()); " + _PEAK
    )
    idle_code = "import sys; from bench.imaging import METHODS; " + _PEAK
    used = int(subprocess.check_output([sys.executable, "-c", code, method, str(path)], text=True))
    idle = int(subprocess.check_output([sys.executable, "-c", idle_code], text=True))
    return round(used / 1024, 1), round(idle / 1024, 1)


def time_file(name: str, data: bytes, quick: bool) -> dict[str, Any]:
    kind = CORPUS[name][0]
    repeat = 3 if quick or len(data) > 5_000_000 else 7
    medians = {
        method: median_ms(functools.partial(function, data), repeat)
        for method, function in METHODS.items()
        if applies(method, kind)
    }
    with Image.open(io.BytesIO(data)) as image:
        megapixels = image.width * image.height / 1e6
    return {
        "kind": kind,
        "bytes": len(data),
        "megapixels": round(megapixels, 1),
        "median_ms": medians,
        "output_kb": {
            method: round(sum(map(len, METHODS[method](data))) / 1024, 1)
            for method in ("service", "pyvips")
        },
    }


def ratios_of(results: dict[str, Any], rss: dict[str, Any]) -> dict[str, float]:
    jpeg = [r["median_ms"] for r in results.values() if r["kind"] == "JPEG"]
    alpha = results["png_4mp_rgba.png"]["median_ms"]
    twelve = results["jpeg_12mp.jpg"]["median_ms"]
    return {
        "jpeg_service_vs_pyvips_median": round(
            statistics.median(t["service"] / t["pyvips"] for t in jpeg), 3
        ),
        "jpeg_12mp_service_vs_draft_floor": round(twelve["service"] / twelve["draft_floor"], 3),
        "alpha_service_vs_pyvips": round(alpha["service"] / alpha["pyvips"], 3),
        "alpha_service_vs_pyvips_same_effort": round(
            alpha["service"] / alpha["pyvips_same_effort"], 3
        ),
        "jpeg_50mp_service_peak_rss_mb": rss["service"][0],
    }


def run(quick: bool = False, earlier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    files = {name: corpus_file(name, make) for name, (_, make) in CORPUS.items()}
    results = {name: time_file(name, path.read_bytes(), quick) for name, path in files.items()}
    twelve = files["jpeg_12mp.jpg"].read_bytes()
    window = 1.0 if quick else 2.0
    rates = {
        method: {t: throughput(method, twelve, t, window) for t in (1, 2)}
        for method in THROUGHPUT_METHODS
    }
    rss = {m: peak_rss_mb(m, files["jpeg_50mp.jpg"]) for m in RSS_METHODS}
    ratios = ratios_of(results, rss)
    rows = [
        {
            "image": name,
            "MP": r["megapixels"],
            **{f"{m} ms": r["median_ms"].get(m, "") for m in METHODS},
            "service KB": r["output_kb"]["service"],
            "pyvips KB": r["output_kb"]["pyvips"],
        }
        for name, r in results.items()
    ]
    markdown = "\n\n".join(
        [
            rows_table(rows),
            rows_table(
                [
                    {"12 MP JPEG": m, "images/s, 1 thread": r[1], "images/s, 2 threads": r[2]}
                    for m, r in rates.items()
                ]
            ),
            rows_table(
                [
                    {"50 MP JPEG": m, "peak RSS MB": used, "idle interpreter MB": idle}
                    for m, (used, idle) in rss.items()
                ]
            ),
            ratios_table(ratios, TARGETS),
        ]
    )
    return {
        "rows": rows,
        "ratios": ratios,
        "targets": TARGETS,
        "files": results,
        "images_per_second_12mp": rates["service"],  # read by bench/pipeline.py
        "images_per_second_12mp_by_method": rates,
        "peak_rss_mb_50mp": rss,
        "markdown": markdown,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2, default=str))
