"""Local disk vs an S3 bucket, same run: the upload path and DONE/s through the real processes.

`python -m bench storage`. The bucket is moto's S3 server on loopback (bench/s3_clients.py starts
it), so it shares the machine's two cores with the API and the worker: the s3 figures carry the
server's CPU too, which a real bucket would not, and no network latency, which it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import corpus_file, encoded, percentile, table
from bench.pipeline import Stack, done_times, one_megabyte_jpeg, sustained_rate, upload_all
from bench.s3_clients import start_moto
from tests.support import photo_like


@contextlib.contextmanager
def backend_stack(backend: str, endpoint: str, workers: int) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="thumbnailer-bench-") as tmp:
        running = Stack(Path(tmp), concurrency=2)
        if backend == "s3":
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            httpx.put(f"{endpoint}/{bucket}").raise_for_status()
            # The processes share this dict: set before they start.
            running.env.update(
                {"STORAGE_BACKEND": "s3", "S3_BUCKET": bucket, "S3_ENDPOINT_URL": endpoint}
            )
        try:
            running.start(workers)
            yield running
        finally:
            running.stop()


def upload_rate(backend: str, endpoint: str, data: bytes, count: int) -> dict[str, float]:
    with backend_stack(backend, endpoint, workers=0) as running:
        started = time.perf_counter()
        latencies = asyncio.run(upload_all(running.base_url, data, count, 16))
        elapsed = time.perf_counter() - started
    return {"uploads_per_s": count / elapsed, "upload_p99_ms": percentile(latencies, 99) * 1000}


def done_rate(backend: str, endpoint: str, data: bytes, count: int) -> dict[str, float]:
    """Upload `count` first with no worker, then start one and time it draining the queue."""
    with backend_stack(backend, endpoint, workers=0) as running:
        asyncio.run(upload_all(running.base_url, data, count, 8))
        running.add_worker()
        times = asyncio.run(done_times(running.database_url, count, timeout=300))
    return {"done_per_s": sustained_rate(times), "done": float(len(times))}


def run(quick: bool, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    twelve = corpus_file(
        "jpeg_12mp.jpg", lambda: encoded(photo_like(4000, 3000), "JPEG", quality=90)
    ).read_bytes()
    megabyte = one_megabyte_jpeg().read_bytes()
    moto, endpoint = start_moto()
    rows: list[dict[str, Any]] = []
    try:
        for backend in ("local", "s3"):
            uploads = upload_rate(backend, endpoint, megabyte, 100 if quick else 300)
            done = done_rate(backend, endpoint, twelve, 20 if quick else 60)
            rows.append({"backend": backend, **uploads, **done})
    finally:
        moto.terminate()
        moto.wait(10)
    headers = ["backend", "uploads_per_s", "upload_p99_ms", "done_per_s", "done"]
    ratios = {
        "uploads_per_s s3/local": round(rows[1]["uploads_per_s"] / rows[0]["uploads_per_s"], 2),
        "done_per_s s3/local": round(rows[1]["done_per_s"] / rows[0]["done_per_s"], 2),
    }
    markdown = "\n\n".join(
        [
            "Upload path: 1 MB JPEG, 16 at a time, no worker. DONE/s: 12 MP JPEGs queued first, "
            "then one worker (2 threads) drains them. s3 = moto's server on the same two cores.",
            table(headers, [[row[h] for h in headers] for row in rows]),
            table(["ratio", "value"], [[k, v] for k, v in ratios.items()]),
        ]
    )
    return {"rows": rows, "ratios": ratios, "markdown": markdown}
