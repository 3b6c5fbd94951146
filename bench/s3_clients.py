"""Object-storage clients compared: our CPU per put and per get, aiobotocore vs obstore.

`python -m bench s3` (or `python -m bench.s3_clients`). A moto server runs in its own process on
a loopback port, so its CPU is not counted; what is counted is this process's CPU time (every
thread: obstore runs its requests on a Rust runtime's threads) per request, for the sizes the
service moves: a 60 KB thumbnail and a 2 MB original, 8 requests in flight as in a worker or an
API under load. Each client first warms up (connections, credential and endpoint resolution).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.common import machine, table

SIZES = {"thumbnail 60 KB": 60 * 1024, "original 2 MB": 2 * 1024 * 1024}
CONCURRENCY = 8
REGION = "us-east-1"
Op = Callable[[str, bytes], Awaitable[object]]


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


async def measure(put: Op, get: Op, size: int, count: int) -> dict[str, float]:
    data = os.urandom(size)
    keys = [f"bench/{uuid.uuid4().hex}" for _ in range(count)]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def bounded(op: Op, key: str) -> None:
        async with gate:
            await op(key, data)

    for key in keys[:CONCURRENCY]:  # warm-up: connections, endpoint and credential resolution
        await put(key, data)
        await get(key, data)
    figures: dict[str, float] = {}
    for name, op in (("put", put), ("get", get)):
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(bounded(op, key) for key in keys))
        figures[f"{name}_cpu_ms"] = (time.process_time() - cpu) * 1000 / count
        figures[f"{name}_wall_ms"] = (time.perf_counter() - wall) * 1000 / count
    return figures


async def with_aiobotocore(
    endpoint: str, bucket: str, size: int, count: int, checksums: str = "when_supported"
) -> dict[str, float]:
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    config = AioConfig(
        s3={"addressing_style": "path"},
        max_pool_connections=CONCURRENCY,
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )
    async with get_session().create_client(
        "s3", region_name=REGION, endpoint_url=endpoint, config=config
    ) as client:

        async def put(key: str, data: bytes) -> object:
            return await client.put_object(
                Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg"
            )

        async def get(key: str, data: bytes) -> object:
            response = await client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                got = await body.read()
            assert len(got) == len(data)
            return got

        return await measure(put, get, size, count)


async def with_obstore(endpoint: str, bucket: str, size: int, count: int) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        region=REGION,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    async def put(key: str, data: bytes) -> object:
        return await obstore.put_async(store, key, data, attributes={"Content-Type": "image/jpeg"})

    async def get(key: str, data: bytes) -> object:
        got = await (await obstore.get_async(store, key)).bytes_async()
        assert len(got) == len(data)
        return got

    return await measure(put, get, size, count)


async def with_aiobotocore_lean(
    endpoint: str, bucket: str, size: int, count: int
) -> dict[str, float]:
    """aiobotocore without the CRC32 of every body botocore adds by default since 1.36."""
    return await with_aiobotocore(endpoint, bucket, size, count, checksums="when_required")


CLIENTS = {
    "aiobotocore": with_aiobotocore,
    "aiobotocore, checksums when_required": with_aiobotocore_lean,
    "obstore": with_obstore,
}


def run(quick: bool, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    moto, endpoint = start_moto()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        httpx.put(f"{endpoint}/{bucket}").raise_for_status()
        rows: list[dict[str, Any]] = []
        for label, size in SIZES.items():
            count = (40 if quick else 200) if size < 1024 * 1024 else (16 if quick else 60)
            for client, measure_with in CLIENTS.items():
                figures = asyncio.run(measure_with(endpoint, bucket, size, count))
                rows.append({"client": client, "object": label, "requests": count, **figures})
    finally:
        moto.terminate()
        moto.wait(10)
    headers = ["client", "object", "requests", "put_cpu_ms", "get_cpu_ms", "put_wall_ms"]
    headers.append("get_wall_ms")
    markdown = "\n\n".join(
        [
            f"Our process's CPU per request against a moto server (another process), "
            f"{CONCURRENCY} in flight; {machine()}.",
            table(headers, [[row[h] for h in headers] for row in rows]),
        ]
    )
    ratios: dict[str, float] = {}
    for label in SIZES:
        by = {row["client"]: row for row in rows if row["object"] == label}
        for op in ("put", "get"):
            ratios[f"{op} CPU aiobotocore/obstore, {label}"] = round(
                by["aiobotocore"][f"{op}_cpu_ms"] / by["obstore"][f"{op}_cpu_ms"], 2
            )
    markdown += "\n\n" + table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    return {"rows": rows, "ratios": ratios, "markdown": markdown}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["markdown"])
