"""Parts 2 and 3: the whole pipeline and the upload path, with real processes and servers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bench.common import corpus_file, encoded, percentile, table
from tests.support import (
    ADMIN_DATABASE_URL,
    RABBITMQ_URL,
    ServiceProcess,
    free_port,
    photo_like,
    service_env,
    wait_until_ready,
)
from thumbnailer.cli import migrate
from thumbnailer.config import Settings

BARE_APP = "bench.bare_app:app"


class Stack:
    """A database, queue names and storage of its own, and the real processes on free ports."""

    def __init__(self, workdir: Path, concurrency: int = 2) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.database = f"thumbnailer_bench_{suffix}"
        self.database_url = ADMIN_DATABASE_URL.rsplit("/", 1)[0] + "/" + self.database
        self.api_port = free_port()
        self.env = service_env(
            {
                "DATABASE_URL": self.database_url,
                "RABBITMQ_URL": RABBITMQ_URL,
                "QUEUE_NAME": f"thumbnailer_bench_{suffix}.jobs",
                "STORAGE_PATH": str(workdir / "storage"),
                "API_HOST": "127.0.0.1",
                "API_PORT": str(self.api_port),
                "WORKER_HTTP_PORT": "0",
                "WORKER_CONCURRENCY": str(concurrency),
                "LOG_LEVEL": "WARNING",
                "MAX_FILE_SIZE": str(20 * 1024 * 1024),
                # The bench is one client at full speed: measure the pipeline, not the limiter.
                "RATE_LIMIT_UPLOADS": "100000000/minute",
                "RATE_LIMIT_REQUESTS": "100000000/minute",
            }
        )
        self.workdir = workdir
        self.api = ServiceProcess("api", self.env, workdir / "api.log")
        self.workers: list[ServiceProcess] = []
        self.base_url = f"http://127.0.0.1:{self.api_port}"

    def start(self, workers: int = 1) -> None:
        migrate(Settings(database_url=self.database_url))
        self.api.start()
        wait_until_ready(f"{self.base_url}/readyz")
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> ServiceProcess:
        worker = ServiceProcess("worker", self.env, self.workdir / f"worker{len(self.workers)}.log")
        worker.start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            process.stop()
        asyncio.run(_drop(self.database, self.env["QUEUE_NAME"]))


async def _drop(database: str, queue: str) -> None:
    import aio_pika

    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for name in [queue, f"{queue}.dead", *[f"{queue}.retry.{1000 * 2**n}ms" for n in range(5)]]:
            await channel.queue_delete(name)


@contextlib.contextmanager
def stack(workers: int = 1, concurrency: int = 2) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="thumbnailer-bench-") as tmp:
        running = Stack(Path(tmp), concurrency)
        try:
            running.start(workers)
            yield running
        finally:
            running.stop()


async def upload_all(base_url: str, data: bytes, count: int, concurrency: int) -> list[float]:
    """POST `count` uploads, `concurrency` at a time; returns each latency in seconds."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                started = time.perf_counter()
                response = await client.post("/images", files={"file": ("p.jpg", data)})
                latencies.append(time.perf_counter() - started)
                if response.status_code not in (200, 202):
                    raise RuntimeError(f"upload answered {response.status_code}")

        await asyncio.gather(*(one() for _ in range(count)))
    return latencies


async def done_times(database_url: str, expected: int, timeout: float) -> list[tuple[float, float]]:
    """Wait for `expected` DONE rows; (created, updated) epoch seconds of each."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = await conn.fetchval("SELECT count(*) FROM images WHERE status = 'DONE'")
            if done >= expected:
                break
            await asyncio.sleep(0.2)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM created_at) AS c, extract(epoch FROM updated_at) AS u "
            "FROM images WHERE status = 'DONE'"
        )
    finally:
        await conn.close()
    return [(float(r["c"]), float(r["u"])) for r in rows]


def sustained_rate(times: list[tuple[float, float]]) -> float:
    finished = sorted(u for _, u in times)
    return (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else 0.0


def pipeline(data: bytes, count: int, concurrency: int) -> dict[str, Any]:
    with stack(workers=1, concurrency=2) as running:
        started = time.perf_counter()
        latencies = asyncio.run(upload_all(running.base_url, data, count, concurrency))
        upload_seconds = time.perf_counter() - started
        uploads_ended = time.time()
        times = asyncio.run(done_times(running.database_url, count, timeout=300))
    # Sustained: once the burst is in, only the worker runs; during the burst the API's
    # upload handling shares the same two cores.
    after_burst = [(c, u) for c, u in times if u >= uploads_ended]
    to_done = [u - c for c, u in times]
    return {
        "uploads": count,
        "concurrency": concurrency,
        "upload_p50_ms": percentile(latencies, 50) * 1000,
        "upload_p99_ms": percentile(latencies, 99) * 1000,
        "uploads_per_s": count / upload_seconds,
        "to_done_p50_ms": percentile(to_done, 50) * 1000,
        "to_done_p99_ms": percentile(to_done, 99) * 1000,
        "done_per_s_during_burst": sustained_rate(times),
        "done_per_s": sustained_rate(after_burst),
        "done_after_burst": len(after_burst),
        "done": len(times),
    }


def worker_scaling(data: bytes, count: int) -> dict[str, float]:
    """DONE/s with the queue pre-filled, then 1 or 2 worker processes of one thread each."""
    rates = {}
    for workers in (1, 2):
        with stack(workers=0, concurrency=1) as running:
            asyncio.run(upload_all(running.base_url, data, count, 8))
            for _ in range(workers):
                running.add_worker()
            rates[f"{workers}_worker_process"] = sustained_rate(
                asyncio.run(done_times(running.database_url, count, timeout=300))
            )
    return rates


def worker_rss(data: bytes, count: int) -> dict[str, float]:
    """Worker RSS sampled while it works through `count` jobs: does it grow?"""
    with stack(workers=0) as running:
        asyncio.run(upload_all(running.base_url, data, count, 16))
        worker = running.add_worker()
        assert worker.process is not None
        process = psutil.Process(worker.process.pid)
        samples = []
        conn_url = running.database_url

        async def sample() -> None:
            conn = await asyncpg.connect(conn_url)
            try:
                while True:
                    done = await conn.fetchval("SELECT count(*) FROM images WHERE status='DONE'")
                    samples.append((done, process.memory_info().rss / 2**20))
                    if done >= count:
                        return
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()

        asyncio.run(sample())
    after_warmup = [rss for done, rss in samples if done >= count // 10]
    return {
        "jobs": count,
        "rss_mb_at_10pct": after_warmup[0],
        "rss_mb_end": samples[-1][1],
        "rss_mb_max": max(rss for _, rss in samples),
    }


async def _stream_gigabyte(base_url: str, declared: bool) -> tuple[int, float]:
    boundary = "benchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    chunk = b"\xff" * (1 << 20)
    total = 1 << 30

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(total // len(chunk)):
            yield chunk

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    if declared:
        headers["content-length"] = str(len(head) + total)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        try:
            response = await client.post(f"{base_url}/images", content=body(), headers=headers)
            status = response.status_code
        except httpx.HTTPError:
            status = -1  # the server closed the link after answering 413 mid-body
    return status, time.perf_counter() - started


def api_rss_on_gigabyte() -> dict[str, Any]:
    with stack(workers=0) as running:
        assert running.api.process is not None
        process = psutil.Process(running.api.process.pid)
        before = process.memory_info().rss / 2**20
        results = {}
        for declared in (False, True):
            status, seconds = asyncio.run(_stream_gigabyte(running.base_url, declared))
            results["with_length" if declared else "chunked"] = {"status": status, "s": seconds}
        after = process.memory_info().rss / 2**20
    return {"rss_mb_before": before, "rss_mb_after": after, **results}


def bare_endpoint_rate(data: bytes, count: int, concurrency: int) -> dict[str, float]:
    port = free_port()
    env = service_env({})
    process = ServiceProcess("bare", env, Path(tempfile.gettempdir()) / "bare.log")
    process.process = __import__("subprocess").Popen(
        [sys.executable, "-m", "uvicorn", BARE_APP, "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/livez")
        started = time.perf_counter()
        latencies = asyncio.run(upload_all(f"http://127.0.0.1:{port}", data, count, concurrency))
        elapsed = time.perf_counter() - started
    finally:
        process.stop()
    return {"uploads_per_s": count / elapsed, "p99_ms": percentile(latencies, 99) * 1000}


def upload_path(data: bytes, count: int, concurrency: int) -> dict[str, Any]:
    bare = bare_endpoint_rate(data, count, concurrency)
    with stack(workers=0) as running:
        started = time.perf_counter()
        latencies = asyncio.run(upload_all(running.base_url, data, count, concurrency))
        elapsed = time.perf_counter() - started
    ours = {"uploads_per_s": count / elapsed, "p99_ms": percentile(latencies, 99) * 1000}
    return {"ours": ours, "bare": bare, "ratio": ours["uploads_per_s"] / bare["uploads_per_s"]}


def one_megabyte_jpeg() -> Path:
    return corpus_file(
        "jpeg_1mb.jpg", lambda: encoded(photo_like(1600, 1200, 9), "JPEG", quality=92)
    )


def run(imaging: dict[str, Any] | None, quick: bool = False) -> dict[str, Any]:
    twelve = corpus_file(
        "jpeg_12mp.jpg", lambda: encoded(photo_like(4000, 3000), "JPEG", quality=90)
    )
    small = corpus_file(
        "jpeg_640x480.jpg", lambda: encoded(photo_like(640, 480, 5), "JPEG", quality=90)
    )
    n = 80 if quick else 200
    flow = pipeline(twelve.read_bytes(), n, 8)
    raw = (imaging or {}).get("images_per_second_12mp", {}).get(2)
    flow["efficiency"] = flow["done_per_s"] / raw if raw else float("nan")
    mb = one_megabyte_jpeg().read_bytes()
    uploads = upload_path(mb, 200 if quick else 500, 16)
    scaling = worker_scaling(twelve.read_bytes(), 30 if quick else 60)
    rss = worker_rss(small.read_bytes(), 300 if quick else 1000)
    gigabyte = api_rss_on_gigabyte()
    ours, bare = uploads["ours"], uploads["bare"]
    upload_rows: list[list[object]] = [
        ["thumbnailer POST /images", ours["uploads_per_s"], ours["p99_ms"]],
        ["bare FastAPI endpoint", bare["uploads_per_s"], bare["p99_ms"]],
        ["ratio", uploads["ratio"], ""],
    ]
    markdown = "\n\n".join(
        [
            table(
                ["pipeline (12 MP JPEG, 1 worker x 2 threads)", "value"],
                [[k, v] for k, v in flow.items()],
            ),
            table(["upload path (1 MB JPEG, concurrency 16)", "uploads/s", "p99 ms"], upload_rows),
            table(
                ["worker processes (1 thread each)", "DONE/s"], [[k, v] for k, v in scaling.items()]
            ),
            table(["worker RSS over jobs", "value"], [[k, v] for k, v in rss.items()]),
            table(
                ["API rejecting 1 GB", "value"],
                [[k, v] for k, v in gigabyte.items()],
            ),
        ]
    )
    return {
        "pipeline": flow,
        "upload_path": uploads,
        "worker_scaling": scaling,
        "worker_rss": rss,
        "api_gigabyte": gigabyte,
        "markdown": markdown,
    }
