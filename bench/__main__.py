"""`python -m bench [--quick] [part ...]`: run benchmark parts, merge them into today's results.

Parts run in the order of PARTS; each is recorded as soon as it finishes (see common.record), so
a later part failing (no database, say) keeps the earlier results. To add a part, write
bench/<name>.py with `run(quick, earlier) -> dict` returning at least "markdown" (plus "rows",
"ratios" and any data), and add one Part line below. A part whose module does not exist yet is
skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from bench.common import load_sections, record

Sections = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Part:
    section: str  # heading in the results, key in the JSON
    module: str
    # How to call the module's entry point: (module, quick, sections recorded so far) -> section.
    call: Callable[[ModuleType, bool, Sections], dict[str, Any]]


def _standard(module: ModuleType, quick: bool, earlier: Sections) -> dict[str, Any]:
    result: dict[str, Any] = module.run(quick, earlier)
    return result


def _pipeline(module: ModuleType, quick: bool, earlier: Sections) -> dict[str, Any]:
    # pipeline.run predates the standard signature; it wants the imaging section, whose
    # thread-count keys JSON turned into strings when it comes from an earlier run.
    imaging = earlier.get("Imaging")
    if imaging is not None:
        rates = imaging.get("images_per_second_12mp", {})
        imaging = {**imaging, "images_per_second_12mp": {int(k): v for k, v in rates.items()}}
    result: dict[str, Any] = module.run(imaging, quick)
    return result


PARTS: dict[str, Part] = {
    "imaging": Part("Imaging", "bench.imaging", _standard),
    "pipeline": Part("Pipeline", "bench.pipeline", _pipeline),
    "upload": Part("Upload", "bench.upload", _standard),
    "s3": Part("Object storage clients", "bench.s3_clients", _standard),
    "storage": Part("Storage backends", "bench.storage_backends", _standard),
    "auth": Part("Auth", "bench.auth", _standard),
    "variants": Part("Variants: AVIF and WebP against libvips", "bench.variants", _standard),
    "fixed": Part("Fixed cost per job", "bench.fixed_cost", _standard),
    "load": Part("Load held", "bench.load", _standard),
    "placeholder": Part("Placeholder", "bench.placeholder", _standard),
}


def _load(part: Part) -> ModuleType | None:
    try:
        return importlib.import_module(part.module)
    except ModuleNotFoundError as exc:
        if exc.name != part.module:
            raise  # the part exists but something it imports is missing: say so
        return None


def run_parts(names: list[str], quick: bool) -> None:
    earlier = load_sections()
    for name in names:
        part = PARTS[name]
        module = _load(part)
        if module is None:
            print(f"{name}: {part.module} not written yet, skipped", flush=True)
            continue
        print(f"{name} ...", flush=True)
        started = time.perf_counter()
        section = part.call(module, quick, earlier)
        earlier[part.section] = section
        data = {k: v for k, v in section.items() if k not in ("rows", "ratios", "markdown")}
        path = record(
            part.section,
            section.get("rows", []),
            section.get("ratios", {}),
            markdown=section["markdown"],
            data=data,
        )
        print(section["markdown"], flush=True)
        print(f"{name}: {time.perf_counter() - started:.0f} s, written {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)}; default: all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    args = parser.parse_args()
    unknown = [name for name in args.parts if name not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    run_parts(args.parts or list(PARTS), args.quick)


if __name__ == "__main__":
    main()
