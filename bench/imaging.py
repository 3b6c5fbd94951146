"""Part 1: the service's thumbnail function against naive Pillow and libvips, same corpus."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import corpus_file, encoded, median_ms, photo_like, table
from thumbnailer.imaging import make_thumbnails

BOXES = [(1200, 1200), (300, 300), (100, 100)]
LIMIT = 200_000_000


def _rgba(width: int, height: int) -> Image.Image:
    image = photo_like(width, height, 3).convert("RGBA")
    mask = Image.radial_gradient("L").resize((width, height))
    image.putalpha(mask.point(lambda v: 255 - v))
    return image


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


def service(data: bytes) -> object:
    return make_thumbnails(data, BOXES, max_pixels=LIMIT)


def naive_pillow(data: bytes) -> object:
    image = Image.open(io.BytesIO(data))
    image.load()
    out = []
    for box in BOXES:
        copy = image.copy()
        copy.thumbnail(box, Image.Resampling.LANCZOS, reducing_gap=None)
        fmt = "PNG" if copy.mode == "RGBA" else "JPEG"
        out.append(encoded(copy if fmt == "PNG" else copy.convert("RGB"), fmt, quality=85))
    return out


def pyvips_cascade(data: bytes) -> object:
    import pyvips

    image = pyvips.Image.thumbnail_buffer(data, 1200, height=1200).copy_memory()
    alpha = image.hasalpha()
    out = []
    for box in (1200, 300, 100):
        image = image if box == 1200 else image.thumbnail_image(box, height=box)
        out.append(image.webpsave_buffer(Q=85, effort=2) if alpha else image.jpegsave_buffer(Q=85))
    return out


def draft_floor(data: bytes) -> object:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (1200, 1200))
    image.load()
    return image


METHODS: dict[str, Callable[[bytes], object]] = {
    "service": service,
    "naive_pillow": naive_pillow,
    "pyvips": pyvips_cascade,
    "draft_floor": draft_floor,
}


def throughput(data: bytes, threads: int, seconds: float = 3.0) -> float:
    """Images per second with `threads` running the service function back to back."""
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        count = 0
        while time.perf_counter() < deadline:
            service(data)
            count += 1
        return count

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: loop(), range(threads)))
    return total / (time.perf_counter() - started)


_PEAK = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"


def peak_rss_mb(method: str, path: Path) -> tuple[float, float]:
    """Peak RSS (VmHWM: ru_maxrss survives exec from a big parent) of a fresh process."""
    code = (
        "import sys; from bench.imaging import METHODS; "
        "METHODS[sys.argv[1]](open(sys.argv[2], 'rb').read()); " + _PEAK
    )
    idle_code = "import sys; from bench.imaging import METHODS; " + _PEAK
    used = int(subprocess.check_output([sys.executable, "-c", code, method, str(path)], text=True))
    idle = int(subprocess.check_output([sys.executable, "-c", idle_code], text=True))
    return round(used / 1024, 1), round(idle / 1024, 1)


def run(quick: bool = False) -> dict[str, Any]:
    files = {name: corpus_file(name, make) for name, (_, make) in CORPUS.items()}
    rows, results = [], {}
    for name, path in files.items():
        data = path.read_bytes()
        kind = CORPUS[name][0]
        repeat = 3 if quick or len(data) > 5_000_000 else 7
        timings = {}
        for method, function in METHODS.items():
            if method == "draft_floor" and kind != "JPEG":
                continue
            timings[method] = median_ms(lambda f=function, d=data: f(d), repeat)
        results[name] = {"kind": kind, "bytes": len(data), "median_ms": timings}
        rows.append([name, *(timings.get(m, float("nan")) for m in METHODS)])
    twelve = files["jpeg_12mp.jpg"].read_bytes()
    rates = {threads: throughput(twelve, threads) for threads in (1, 2)}
    rss = {m: peak_rss_mb(m, files["jpeg_50mp.jpg"]) for m in ("service", "naive_pillow", "pyvips")}
    ratios = ratios_of(results, rss)
    markdown = "\n\n".join(
        [
            table(["image", *[f"{m} ms" for m in METHODS]], rows),
            table(
                ["12 MP JPEG, service", "images/s"],
                [[f"{t} thread(s)", rate] for t, rate in rates.items()],
            ),
            table(
                ["50 MP JPEG", "peak RSS MB (process)", "idle interpreter MB"],
                [[m, used, idle] for m, (used, idle) in rss.items()],
            ),
            table(["ratio", "value", "target"], [[k, v, TARGETS[k]] for k, v in ratios.items()]),
        ]
    )
    return {
        "files": results,
        "images_per_second_12mp": rates,
        "peak_rss_mb_50mp": rss,
        "ratios": ratios,
        "markdown": markdown,
    }


TARGETS = {
    "jpeg_service_vs_pyvips_median": "<= 0.9",
    "jpeg_12mp_service_vs_draft_floor": "<= 1.5",
    "alpha_service_vs_pyvips": "<= 1.0",
    "jpeg_50mp_service_peak_rss_mb": "< 150",
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
        "jpeg_50mp_service_peak_rss_mb": rss["service"][0],
    }


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2, default=str))
