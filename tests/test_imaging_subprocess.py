"""The child-process decode runner: same thumbnails, and a bounded cost for hostile ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hostile
from tests.images import encode, marked
from thumbnailer import imaging
from thumbnailer.imaging_subprocess import (
    DecodeOutOfMemory,
    DecoderCrashed,
    DecodeRunner,
    JobTimeout,
)

BOXES = [(100, 100), (300, 300), (1200, 1200)]
LIMIT = 100_000_000
MB = 2**20


@pytest.fixture
def runner() -> Iterator[DecodeRunner]:
    runner = DecodeRunner(processes=1, memory_limit=320 * MB, timeout=20)
    yield runner
    runner.close()


def good() -> bytes:
    return encode(marked(640, 480), "JPEG")


def test_same_thumbnails_as_in_thread(runner: DecodeRunner, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(marked(900, 500).convert("RGBA"), "PNG"))
    for source in (good(), path):
        expected = imaging.make_thumbnails(source, BOXES, max_pixels=LIMIT)
        timings: dict[str, float] = {}
        assert runner.run(source, BOXES, max_pixels=LIMIT, timings=timings) == expected
        assert set(timings) == {"decode", "resize", "encode"}


def test_imaging_errors_keep_their_class(runner: DecodeRunner) -> None:
    with pytest.raises(imaging.UnsupportedImage):
        runner.run(b"not an image", BOXES, max_pixels=LIMIT)
    with pytest.raises(imaging.CorruptImage):
        runner.run(good()[:400], BOXES, max_pixels=LIMIT)
    with pytest.raises(imaging.DecodeTooLarge, match="the limit is 1 MB"):
        runner.run(good(), BOXES, max_pixels=LIMIT, max_decode_bytes=MB)
    assert len(runner.run(good(), BOXES, max_pixels=LIMIT)) == 3


def test_a_job_over_the_deadline_is_killed_and_capacity_stays() -> None:
    runner = DecodeRunner(processes=1, memory_limit=320 * MB, timeout=0.5)
    try:
        bomb = hostile.scan_bomb()  # 5000 scans: ~4 s to decode once the scan limit allows it
        started = time.perf_counter()
        with pytest.raises(JobTimeout, match=r"processing took longer than 0.5 s"):
            runner.run(bomb, BOXES, max_pixels=LIMIT, max_scans=10_000)
        assert time.perf_counter() - started < 1.5
        assert len(runner.run(good(), BOXES, max_pixels=LIMIT)) == 3  # a fresh child
    finally:
        runner.close()


def test_a_job_over_the_memory_limit_ends_with_the_limit(runner: DecodeRunner) -> None:
    flat = hostile.flat_webp_lossless(hostile.SIDE, hostile.SIDE, (255, 1, 2, 3))  # 1.5 GB
    with pytest.raises(DecodeOutOfMemory, match=r"decoding needed more than 320 MB"):
        runner.run(flat, BOXES, max_pixels=LIMIT)
    assert len(runner.run(good(), BOXES, max_pixels=LIMIT)) == 3


def test_a_child_that_dies_is_reported_and_replaced(runner: DecodeRunner) -> None:
    runner.run(good(), BOXES, max_pixels=LIMIT)  # the child exists now
    child = runner._children[0]
    threading.Timer(0.3, child.process.kill).start()
    with pytest.raises(DecoderCrashed, match="SIGKILL"):
        runner.run(hostile.scan_bomb(), BOXES, max_pixels=LIMIT, max_scans=10_000)
    assert len(runner.run(good(), BOXES, max_pixels=LIMIT)) == 3


def test_jobs_run_side_by_side_in_separate_children() -> None:
    runner = DecodeRunner(processes=2, memory_limit=320 * MB, timeout=20)
    try:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(len(runner.run(good(), BOXES, max_pixels=LIMIT)))
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [3, 3, 3, 3]
        assert len(runner._children) <= 2
    finally:
        runner.close()


@pytest.mark.parametrize(
    "name", ["png_100mp_grey16", "png_12mp_rgba", "webp_12mp_lossy", "jpeg_12mp_444_progressive"]
)
def test_what_the_estimate_admits_fits_the_childs_address_space_cap(
    name: str, tmp_path: Path
) -> None:
    """RLIMIT_AS caps virtual memory, which runs above RSS: an image admitted against
    MAX_DECODE_MEMORY must still decode in a child capped at the same number."""
    from tests.test_hostile_imaging import CALIBRATION, MAX_DECODE_MEMORY

    path = tmp_path / name
    path.write_bytes(CALIBRATION[name]())
    assert imaging.estimate_decode_bytes(path, BOXES) <= MAX_DECODE_MEMORY
    runner = DecodeRunner(processes=1, memory_limit=MAX_DECODE_MEMORY, timeout=60)
    try:
        assert len(runner.run(path, BOXES, max_pixels=LIMIT)) == 3
    finally:
        runner.close()
