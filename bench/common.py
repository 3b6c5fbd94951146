"""Shared helpers of the benchmark: corpus, timing, result files and tables.

A part of the benchmark (imaging, pipeline, upload, ...) hands its outcome to `record`, which
merges it as one section into today's bench/results/<date>.json and re-renders <date>.md from
every section there, so parts can run separately and still end in one report.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"


def corpus_file(name: str, make: Callable[[], bytes]) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / name
    if not path.exists():
        path.write_bytes(make())
    return path


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def median_ms(run: Callable[[], object], repeat: int) -> float:
    run()  # warm caches and lazy imports
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import PIL

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Pillow {PIL.__version__}"
    )


def rows_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of dicts, columns in first-seen order."""
    headers: list[str] = []
    for row in rows:
        headers += [key for key in row if key not in headers]
    return table(headers, [[row.get(h, "") for h in headers] for row in rows])


def ratios_table(ratios: dict[str, Any], targets: dict[str, str] | None = None) -> str:
    targets = targets or {}
    return table(
        ["ratio", "value", "target"], [[k, v, targets.get(k, "")] for k, v in ratios.items()]
    )


def results_path(day: str | None = None, suffix: str = "json") -> Path:
    return RESULTS / f"{day or today()}.{suffix}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def load_sections(day: str | None = None) -> dict[str, dict[str, Any]]:
    """The sections already recorded today (empty when none)."""
    path = results_path(day)
    if not path.exists():
        return {}
    sections: dict[str, dict[str, Any]] = json.loads(path.read_text()).get("sections", {})
    return sections


def record(
    section: str,
    rows: list[dict[str, Any]],
    ratios: dict[str, Any],
    *,
    markdown: str | None = None,
    data: dict[str, Any] | None = None,
) -> Path:
    """Merge one part's outcome into today's results; returns the markdown file.

    `rows` is the main table, `ratios` the headline figures; `markdown` replaces the default
    rendering (rows table + ratios table); `data` is anything else worth keeping in the JSON.
    """
    body = {
        **(data or {}),
        "commit": current_commit(),
        "rows": rows,
        "ratios": ratios,
        "markdown": markdown or "\n\n".join([rows_table(rows), ratios_table(ratios)]),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    sections = load_sections()
    sections[section] = body
    return write_results(sections)


def write_results(sections: dict[str, dict[str, Any]]) -> Path:
    """Write every section to today's JSON and markdown (each atomically: temp + rename)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    day = today()
    commit = current_commit()
    document = {"date": day, "commit": commit, "machine": machine(), "sections": sections}
    _write_atomically(results_path(day), json.dumps(document, indent=2, default=str))
    markdown = [
        f"# Benchmark {day} (written at {commit})",
        "",
        f"Machine: {document['machine']}",
        "",
    ]
    for name, section in sections.items():
        at = f" ({section['commit']})" if section.get("commit") else ""
        markdown += [f"## {name}{at}", "", section["markdown"], ""]
    path = results_path(day, "md")
    _write_atomically(path, "\n".join(markdown))
    return path


def current_commit() -> str:
    """Short HEAD, with "+dirty" when measured code (src/, bench/) differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + (
        "+dirty" if head and git("status", "--porcelain", "--", "../src", ".", ":!results") else ""
    )


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")  # bench/results/*.tmp is gitignored
    temporary.write_text(text)
    os.replace(temporary, path)
