"""Part: load held. Many long-polls during an upload burst, then a soak of small uploads.

Waiters: images are uploaded with no worker running (they stay PROCESSING), one `?wait=`
long-poll is opened on each, then a worker starts and a burst of uploads runs beside them. We
report the API's RSS, open descriptors and PostgreSQL connections while they wait, the burst's
p99 against the same burst with nobody waiting, and how late each waiter heard of its DONE
(its answer's arrival minus the row's updated_at, one clock).

Soak: many small uploads through one API and one worker; counts lost and stuck rows, RSS and
descriptors of both processes after warm-up and at the end, and files left in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bench.common import percentile, ratios_table, table
from bench.fixed_cost import small_jpeg
from bench.pipeline import Stack, done_times, upload_all

POLL_WAIT = 60  # longer than the whole backlog takes, so each waiter answers once, on DONE
P99_TARGET = 1.5
LATE_TARGET_S = 1.0


@contextlib.contextmanager
def load_stack(workers: int) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="thumbnailer-load-") as tmp:
        running = Stack(Path(tmp))
        # The services read env at start: their own spool, so leftovers are theirs alone.
        running.env["SPOOL_PATH"] = str(Path(tmp) / "spool")
        running.env["MAX_POLL_WAIT"] = str(POLL_WAIT)
        running.env["MAX_CONCURRENT_UPLOADS"] = "64"
        try:
            running.start(workers)
            yield running
        finally:
            running.stop()


def process_figures(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    return {"rss_mb": process.memory_info().rss / 2**20, "fds": process.num_fds()}


async def database_connections(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
        )
    finally:
        await conn.close()
    return count - 1  # this very connection


async def upload_ids(base_url: str, data: bytes, count: int) -> list[str]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        semaphore = asyncio.Semaphore(16)

        async def one() -> str:
            async with semaphore:
                response = await client.post("/images", files={"file": ("p.jpg", data)})
                response.raise_for_status()
                return str(response.json()["id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def updated_at(database_url: str) -> dict[str, float]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, extract(epoch FROM updated_at) AS u FROM images "
            "WHERE status = 'DONE'"
        )
    finally:
        await conn.close()
    return {r["id"]: float(r["u"]) for r in rows}


async def hold_waiters(running: Stack, ids: list[str], data: bytes, burst: int) -> dict[str, Any]:
    answered: dict[str, float] = {}
    limits = httpx.Limits(max_connections=len(ids) + 16, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=running.base_url, timeout=POLL_WAIT + 30, limits=limits
    ) as client:

        async def wait_for(image_id: str) -> None:
            response = await client.get(f"/images/{image_id}", params={"wait": POLL_WAIT})
            if response.json().get("status") == "DONE":
                answered[image_id] = time.time()

        waiters = [asyncio.create_task(wait_for(image_id)) for image_id in ids]
        await asyncio.sleep(3)  # every long-poll is registered and holding
        assert running.api.process is not None
        held = process_figures(running.api.process.pid)
        held["database_connections"] = await database_connections(running.database_url)
        running.add_worker()
        started = time.perf_counter()
        latencies = await upload_all(running.base_url, data, burst, 8)
        burst_seconds = time.perf_counter() - started
        await asyncio.gather(*waiters)
    after = process_figures(running.api.process.pid)
    changed = await updated_at(running.database_url)
    late = [answered[i] - changed[i] for i in answered if i in changed]
    return {
        "waiters": len(ids),
        "answered_done": len(answered),
        "api_while_holding": held,
        "api_after": after,
        "burst_p99_ms": percentile(latencies, 99) * 1000,
        "burst_uploads_per_s": burst / burst_seconds,
        "answer_late_p50_ms": percentile(late, 50) * 1000,
        "answer_late_max_ms": max(late) * 1000 if late else float("nan"),
    }


def waiters_part(data: bytes, waiters: int, burst: int) -> dict[str, Any]:
    with load_stack(workers=1) as running:
        alone = asyncio.run(upload_all(running.base_url, data, burst, 8))
        asyncio.run(done_times(running.database_url, burst, timeout=300))
    with load_stack(workers=0) as running:
        ids = asyncio.run(upload_ids(running.base_url, data, waiters))
        held = asyncio.run(hold_waiters(running, ids, data, burst))
    held["burst_alone_p99_ms"] = percentile(alone, 99) * 1000
    return held


async def stuck_and_lost(database_url: str, accepted: int) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        counts = dict(await conn.fetch("SELECT status, count(*) FROM images GROUP BY status"))
    finally:
        await conn.close()
    done = int(counts.get("DONE", 0))
    return {
        "done": done,
        "stuck": int(counts.get("NEW", 0)) + int(counts.get("PROCESSING", 0)),
        "error": int(counts.get("ERROR", 0)),
        "lost": accepted - sum(int(v) for v in counts.values()),
    }


def soak_part(data: bytes, uploads: int) -> dict[str, Any]:
    with load_stack(workers=1) as running:
        assert running.api.process is not None
        worker = running.workers[0].process
        assert worker is not None
        warm = uploads // 10
        asyncio.run(upload_all(running.base_url, data, warm, 8))
        asyncio.run(done_times(running.database_url, warm, timeout=300))
        api_warm, worker_warm = (
            process_figures(running.api.process.pid),
            process_figures(worker.pid),
        )
        asyncio.run(upload_all(running.base_url, data, uploads - warm, 8))
        asyncio.run(done_times(running.database_url, uploads, timeout=1800))
        time.sleep(2)  # let the last acks and spool removals land
        api_end, worker_end = process_figures(running.api.process.pid), process_figures(worker.pid)
        rows = asyncio.run(stuck_and_lost(running.database_url, uploads))
        spool = Path(running.env["SPOOL_PATH"])
        left_in_spool = sum(1 for _ in spool.iterdir()) if spool.exists() else 0
    return {
        "uploads": uploads,
        **rows,
        "spool_files_left": left_in_spool,
        "api_rss_mb_warm": api_warm["rss_mb"],
        "api_rss_mb_end": api_end["rss_mb"],
        "worker_rss_mb_warm": worker_warm["rss_mb"],
        "worker_rss_mb_end": worker_end["rss_mb"],
        "api_fds_warm": api_warm["fds"],
        "api_fds_end": api_end["fds"],
        "worker_fds_warm": worker_warm["fds"],
        "worker_fds_end": worker_end["fds"],
    }


def run(quick: bool = False, earlier: Any = None) -> dict[str, Any]:
    data = small_jpeg()
    waiting = waiters_part(data, 200 if quick else 1000, 200)
    soak = soak_part(data, 1000 if quick else 10_000)
    ratios = {
        "burst p99 with waiters / alone": round(
            waiting["burst_p99_ms"] / waiting["burst_alone_p99_ms"], 2
        ),
        "latest waiter answer after its change, s": round(waiting["answer_late_max_ms"] / 1000, 3),
        "soak lost + stuck": soak["lost"] + soak["stuck"],
        "soak API RSS end / warm": round(soak["api_rss_mb_end"] / soak["api_rss_mb_warm"], 3),
        "soak worker RSS end / warm": round(
            soak["worker_rss_mb_end"] / soak["worker_rss_mb_warm"], 3
        ),
        "soak spool files left": soak["spool_files_left"],
    }
    targets = {
        "burst p99 with waiters / alone": f"<= {P99_TARGET}",
        "latest waiter answer after its change, s": f"<= {LATE_TARGET_S}",
        "soak lost + stuck": "0",
        "soak API RSS end / warm": "<= 1.1",
        "soak worker RSS end / warm": "<= 1.1",
        "soak spool files left": "0",
    }
    held, after = waiting["api_while_holding"], waiting["api_after"]
    waiter_rows: list[list[object]] = [
        ["long-polls held", waiting["waiters"]],
        ["answered with DONE", waiting["answered_done"]],
        ["API RSS MB while holding / after", f"{held['rss_mb']:.1f} / {after['rss_mb']:.1f}"],
        ["API open descriptors while holding / after", f"{held['fds']} / {after['fds']}"],
        ["PostgreSQL connections of the database while holding", held["database_connections"]],
        ["burst of 200: p99 ms alone", waiting["burst_alone_p99_ms"]],
        ["burst of 200: p99 ms with waiters", waiting["burst_p99_ms"]],
        ["waiter answer after its change: p50 ms", waiting["answer_late_p50_ms"]],
        ["waiter answer after its change: max ms", waiting["answer_late_max_ms"]],
    ]
    markdown = "\n\n".join(
        [
            "640x480 JPEGs; one API process and one worker (2 threads).",
            table(["long-polls during a burst", "value"], waiter_rows),
            table(["soak", "value"], [[k, v] for k, v in soak.items()]),
            ratios_table(ratios, targets),
        ]
    )
    return {
        "waiters": waiting,
        "soak": soak,
        "ratios": ratios,
        "markdown": markdown,
    }
