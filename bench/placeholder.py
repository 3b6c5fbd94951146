"""Part: what a placeholder (BlurHash + dominant colour) adds to a job, against the job itself.

Both are measured here, in the same run, on one core: make_placeholder on the 100 px thumbnail
the worker makes of the 12 MP photo-like JPEG, and make_thumbnails of that JPEG (the work the
placeholder rides on). The ratio is the share of a 12 MP job's imaging the placeholder costs.
Also a 640x480 JPEG job, where the placeholder's share is largest.
"""

from __future__ import annotations

from typing import Any

from bench.common import corpus_file, median_ms, ratios_table, rows_table
from bench.imaging import BOXES, CORPUS, LIMIT
from thumbnailer.imaging import make_thumbnails
from thumbnailer.placeholder import make_placeholder


def _measure(name: str, repeat: int) -> dict[str, Any]:
    source = corpus_file(name, CORPUS[name][1]).read_bytes()

    def job() -> list[Any]:
        return make_thumbnails(source, BOXES, max_pixels=LIMIT)

    thumbnails = job()
    smallest = min(thumbnails, key=lambda thumb: thumb.width * thumb.height)
    largest = max(thumbnails, key=lambda thumb: thumb.width * thumb.height)
    ratio = largest.width / largest.height
    job_ms = median_ms(job, repeat)
    placeholder_ms = median_ms(lambda: make_placeholder(smallest.data, ratio), repeat * 20)
    return {
        "input": name,
        "thumbnails (ms)": round(job_ms, 2),
        "placeholder (ms)": round(placeholder_ms, 3),
        "placeholder share": round(placeholder_ms / job_ms, 4),
    }


def run(quick: bool, earlier: dict[str, Any]) -> dict[str, Any]:
    repeat = 3 if quick else 10
    rows = [_measure(name, repeat) for name in ("jpeg_12mp.jpg", "jpeg_640x480.jpg")]
    ratios = {
        "placeholder / 12 MP job": rows[0]["placeholder share"],
        "placeholder / 640x480 job": rows[1]["placeholder share"],
    }
    targets = {"placeholder / 12 MP job": "< 0.02"}
    markdown = rows_table(rows) + "\n\n" + ratios_table(ratios, targets)
    return {"rows": rows, "ratios": ratios, "markdown": markdown}


if __name__ == "__main__":
    print(run(quick=False, earlier={})["markdown"])
