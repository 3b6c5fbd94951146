"""`make bench`: imaging, pipeline and upload benchmarks; writes bench/results/<date>.{json,md}."""

from __future__ import annotations

import sys

from bench import imaging, pipeline
from bench.common import write_results


def main() -> None:
    quick = "--quick" in sys.argv
    sections = {}
    print("imaging ...", flush=True)
    sections["Imaging"] = imaging.run(quick)
    print(sections["Imaging"]["markdown"], flush=True)
    print("pipeline, upload path, memory ...", flush=True)
    sections["Pipeline"] = pipeline.run(sections["Imaging"], quick)
    print(sections["Pipeline"]["markdown"], flush=True)
    print(f"written {write_results(sections)}")


if __name__ == "__main__":
    main()
