"""Part: the fixed cost of a job, from small images where the imaging is cheap.

Per 640x480 JPEG: the CPU the API and the worker (with its decode children) spend on one job,
minus the CPU our imaging takes for the same file measured in this process. What is left is
the pipeline's fixed cost (multipart, spool, probe, SQL, publish, store writes, logs, metrics).
Alongside: a bare Pillow thumbnail set (decode, three thumbnails, JPEG) at two threads, the
lower bound a service that uploads, records and queues nothing would reach on this machine.
"""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
from PIL import Image

from bench.common import corpus_file, encoded, ratios_table, table
from bench.pipeline import done_times, stack, sustained_rate, upload_all
from tests.support import photo_like
from thumbnailer.imaging import make_thumbnails

BOXES = [(100, 100), (300, 300), (1200, 1200)]
JPEG_QUALITY = 85
# Issue 19's target: half of the ~15 ms measured before it.
FIXED_COST_TARGET_MS = 7.5


def small_jpeg() -> bytes:
    path = corpus_file(
        "jpeg_640x480.jpg", lambda: encoded(photo_like(640, 480, 5), "JPEG", quality=90)
    )
    return path.read_bytes()


def bare_pillow_set(data: bytes) -> int:
    image = Image.open(io.BytesIO(data))
    image.load()
    size = 0
    for box in BOXES:
        copy = image.copy()
        copy.thumbnail(box)
        size += len(encoded(copy, "JPEG", quality=JPEG_QUALITY))
    return size


def cpu_ms_per_call(run: Any, data: bytes, calls: int) -> float:
    run(data)
    started = time.process_time()
    for _ in range(calls):
        run(data)
    return (time.process_time() - started) * 1000 / calls


def sets_per_second(data: bytes, threads: int, seconds: float) -> float:
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        done = 0
        while time.perf_counter() < deadline:
            bare_pillow_set(data)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: loop(), range(threads)))
    return total / (time.perf_counter() - started)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live children and the children it has reaped."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


def ours(data: bytes, count: int) -> dict[str, float]:
    with stack(workers=1, concurrency=2) as running:
        assert running.api.process is not None
        assert running.workers[0].process is not None
        api_pid, worker_pid = running.api.process.pid, running.workers[0].process.pid
        # Warm both processes (imports, pools, prepared statements) before counting.
        asyncio.run(upload_all(running.base_url, data, 20, 4))
        asyncio.run(done_times(running.database_url, 20, timeout=120))
        api_before, worker_before = process_tree_cpu(api_pid), process_tree_cpu(worker_pid)
        asyncio.run(upload_all(running.base_url, data, count, 8))
        times = asyncio.run(done_times(running.database_url, count + 20, timeout=300))
        api_cpu = process_tree_cpu(api_pid) - api_before
        worker_cpu = process_tree_cpu(worker_pid) - worker_before
    return {
        "api_cpu_ms_per_job": api_cpu * 1000 / count,
        "worker_cpu_ms_per_job": worker_cpu * 1000 / count,
        "done_per_s": sustained_rate(times[20:] if len(times) > 20 else times),
    }


def run(quick: bool = False, earlier: Any = None) -> dict[str, Any]:
    data = small_jpeg()
    calls = 100 if quick else 400
    imaging_ms = cpu_ms_per_call(
        lambda d: make_thumbnails(d, BOXES, max_pixels=10**8, jpeg_quality=JPEG_QUALITY),
        data,
        calls,
    )
    bare_ms = cpu_ms_per_call(bare_pillow_set, data, calls)
    bare_rate = sets_per_second(data, 2, 5 if quick else 15)
    measured = ours(data, 150 if quick else 500)
    per_job = measured["api_cpu_ms_per_job"] + measured["worker_cpu_ms_per_job"]
    fixed = per_job - imaging_ms
    ratios = {
        "fixed cost ms per job": round(fixed, 2),
        "fixed cost / target": round(fixed / FIXED_COST_TARGET_MS, 2),
        "DONE/s / bare Pillow sets/s (2 threads)": round(measured["done_per_s"] / bare_rate, 2),
    }
    targets = {
        "fixed cost ms per job": f"<= {FIXED_COST_TARGET_MS}",
        "fixed cost / target": "<= 1",
        "DONE/s / bare Pillow sets/s (2 threads)": ">= 1",
    }
    rows: list[list[object]] = [
        ["imaging, ours (CPU ms per image)", imaging_ms],
        ["bare Pillow thumbnail set (CPU ms per image)", bare_ms],
        ["bare Pillow thumbnail sets/s, 2 threads", bare_rate],
        ["API CPU ms per job", measured["api_cpu_ms_per_job"]],
        ["worker CPU ms per job (with its decode children)", measured["worker_cpu_ms_per_job"]],
        ["API + worker CPU ms per job", per_job],
        ["fixed cost ms per job (API + worker - imaging)", fixed],
        ["DONE/s (API + 1 worker x 2 threads, 8 clients)", measured["done_per_s"]],
    ]
    markdown = "\n\n".join(
        [
            "640x480 JPEG (quality 90), three thumbnails, one API and one worker process.",
            table(["measure", "value"], rows),
            ratios_table(ratios, targets),
        ]
    )
    return {
        "imaging_cpu_ms": imaging_ms,
        "bare_pillow_cpu_ms": bare_ms,
        "bare_pillow_sets_per_s": bare_rate,
        **measured,
        "fixed_cost_ms": fixed,
        "ratios": ratios,
        "markdown": markdown,
    }
