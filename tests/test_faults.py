"""Fault injection: links cut, workers killed, a poison message; no accepted upload is lost.

Each scenario runs the real API and worker processes with their links to RabbitMQ and
PostgreSQL going through TCP proxies the test controls, then checks the same invariants:
every 2xx upload is DONE (ERROR for the corrupt one), one set of thumbnails per image, nothing
left NEW or PROCESSING, and the dead-letter queue holding exactly the poison message.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest
from PIL import Image

from tests.conftest import Services, make_settings
from tests.support import ARTIFACTS, RABBITMQ_URL, jpeg_bytes
from tests.tcp_proxy import TcpProxy
from thumbnailer.broker import Topology
from thumbnailer.config import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
UPLOADS = 200
SUMMARY = ARTIFACTS / "faults-summary.jsonl"


def photo_like(width: int, height: int, seed: int) -> bytes:
    """Noise over a gradient: costs the worker real decode and resize time, like a photo."""
    noise = Image.effect_noise((width // 4, height // 4), 40 + seed).convert("RGB")
    gradient = Image.linear_gradient("L").resize(noise.size).convert("RGB")
    image = Image.blend(noise, gradient, 0.6).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


IMAGES = [photo_like(1600 + 16 * i, 1200 - 8 * i, i) for i in range(8)]


@dataclass
class Run:
    services: Services
    broker_proxy: TcpProxy
    database_proxy: TcpProxy
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    faults: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0

    def fault(self, description: str) -> None:
        self.faults.append(description)
        self.last_fault_end = time.monotonic()

    @property
    def settings(self) -> Settings:
        return self.services.settings


@pytest.fixture
def run(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Run]:
    with TcpProxy("127.0.0.1", 5672) as broker, TcpProxy("127.0.0.1", 5432) as database:
        settings = make_settings(
            database.url(database_url),
            tmp_path / "storage",
            rabbitmq_url=broker.url(RABBITMQ_URL),
            relay_interval=0.5,
            processing_timeout=15.0,
            retry_base_delay=0.25,
            max_retries=8,
            shutdown_grace_period=10.0,
        )
        services = Services(settings, ARTIFACTS / request.node.name)
        services.start()
        try:
            yield Run(services, broker, database)
        finally:
            services.stop()


def upload_burst(run: Run, count: int, during: Callable[[int], None] | None = None) -> None:
    """Upload `count` images, 8 at a time; `during(n)` runs after the n-th response."""
    done = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal done
        data = IMAGES[index % len(IMAGES)]
        try:
            response = httpx.post(
                f"{run.services.base_url}/images", files={"file": ("i.jpg", data)}, timeout=30
            )
        except httpx.HTTPError:
            response = None
        with lock:
            if response is not None and response.status_code == 202:
                run.accepted.append(response.json()["id"])
            else:
                run.refused += 1
            done += 1
            current = done
        if during is not None:
            during(current)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


async def _statuses(database_url: str, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch("SELECT id::text, status FROM images WHERE id::text = ANY($1)", ids)
    finally:
        await conn.close()
    return {row["id"]: row["status"] for row in rows}


def statuses(run: Run, direct_database_url: str) -> dict[str, str]:
    return asyncio.run(_statuses(direct_database_url, run.accepted))


def wait_settled(run: Run, direct_database_url: str, timeout: float = 180) -> float:
    """Seconds from the end of the last fault until every accepted upload is DONE or ERROR."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        current = statuses(run, direct_database_url)
        if len(current) == len(run.accepted) and all(
            status in ("DONE", "ERROR") for status in current.values()
        ):
            return time.monotonic() - run.last_fault_end
        time.sleep(0.2)
    stuck = {
        k: v for k, v in statuses(run, direct_database_url).items() if v not in ("DONE", "ERROR")
    }
    raise AssertionError(f"{len(stuck)} uploads never finished: {list(stuck.items())[:5]}")


async def _dead_letters(settings: Settings) -> list[bytes]:
    topology = Topology(settings.queue_name, settings.max_retries, settings.retry_base_delay)
    connection = await aio_pika.connect(RABBITMQ_URL)
    bodies = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        # Held unacknowledged until the connection closes, which puts them back.
        while (message := await queue.get(fail=False, no_ack=False)) is not None:
            bodies.append(message.body)
    return bodies


def thumbnail_sets(storage: Path, image_id: str) -> list[str]:
    folder = storage / "thumbnails" / image_id[:2] / image_id
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def assert_nothing_lost(
    run: Run, direct_database_url: str, errors: set[str] = frozenset(), poison: bytes | None = None
) -> dict[str, object]:
    final = statuses(run, direct_database_url)
    assert len(final) == len(run.accepted), "an accepted upload has no row"
    assert len(set(run.accepted)) == len(run.accepted)
    wrong = {k: v for k, v in final.items() if v != ("ERROR" if k in errors else "DONE")}
    assert not wrong, wrong
    storage = run.settings.storage_path
    duplicated = 0
    for image_id in run.accepted:
        files = thumbnail_sets(storage, image_id)
        if image_id in errors:
            assert files == []
        else:
            assert files == ["100x100.jpg", "1200x1200.jpg", "300x300.jpg"], (image_id, files)
        duplicated += max(0, len(files) - 3)
    assert not list((storage / ".tmp").iterdir()), "temp files left behind"
    dead = asyncio.run(_dead_letters(run.settings))
    assert dead == ([poison] if poison is not None else [])
    return {"lost": 0, "duplicated": duplicated, "dead_letters": len(dead)}


def record(name: str, run: Run, recovery: float, extra: dict[str, object]) -> None:
    entry = {
        "scenario": name,
        "uploads": UPLOADS,
        "accepted": len(run.accepted),
        "refused": run.refused,
        "faults": run.faults,
        "recovery_seconds": round(recovery, 1),
        "redeliveries": redeliveries(run),
        **extra,
    }
    print(json.dumps(entry))
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    with SUMMARY.open("a") as summary:
        summary.write(json.dumps(entry) + "\n")


def redeliveries(run: Run) -> int:
    """Jobs a worker saw again after they were finished (work done twice, not results)."""
    return sum(worker.logs().count('"job_already_finished"') for worker in run.services.workers)


def test_broker_links_cut_twice_during_a_burst(run: Run, database_url: str) -> None:
    def cut_at(n: int) -> None:
        if n in (50, 130):
            run.broker_proxy.cut()
            time.sleep(2.0)
            run.broker_proxy.restore()
            run.fault(f"broker links cut for 2 s after {n} uploads")

    upload_burst(run, UPLOADS, cut_at)
    recovery = wait_settled(run, database_url)
    record("broker_cut_twice", run, recovery, assert_nothing_lost(run, database_url))


def test_worker_killed_three_times(run: Run, database_url: str) -> None:
    def kill_at(n: int) -> None:
        if n in (60, 120, 180):
            victim = run.services.workers[-1]
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            run.services.start_worker()
            run.fault(f"worker SIGKILLed mid-job after {n} uploads")

    upload_burst(run, UPLOADS, kill_at)
    recovery = wait_settled(run, database_url)
    record("worker_sigkill_x3", run, recovery, assert_nothing_lost(run, database_url))


def test_database_link_cut_for_five_seconds(run: Run, database_url: str) -> None:
    def cut_at(n: int) -> None:
        if n == 150:
            run.database_proxy.cut()
            time.sleep(5)
            run.database_proxy.restore()
            run.fault(f"database links cut for 5 s after {n} uploads, jobs running")

    upload_burst(run, UPLOADS, cut_at)
    recovery = wait_settled(run, database_url)
    record("database_cut_5s", run, recovery, assert_nothing_lost(run, database_url))


def test_sigterm_under_load_then_a_new_worker(run: Run, database_url: str) -> None:
    exit_codes: list[int] = []

    def stop_at(n: int) -> None:
        if n == 120:
            worker = run.services.workers[-1]
            worker.signal(signal.SIGTERM)
            exit_codes.append(worker.wait(run.settings.shutdown_grace_period + 10))
            run.services.start_worker()
            run.fault(f"worker SIGTERMed under load after {n} uploads, replaced")

    upload_burst(run, UPLOADS, stop_at)
    recovery = wait_settled(run, database_url)
    assert exit_codes == [0]
    assert '"worker_stopped"' in run.services.workers[0].logs()
    record("worker_sigterm", run, recovery, assert_nothing_lost(run, database_url))


async def _publish_poison(settings: Settings, body: bytes) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=settings.queue_name,
        )


def test_corrupt_image_and_poison_message_mid_burst(run: Run, database_url: str) -> None:
    poison = b'{"not": "a job"}'
    corrupt = jpeg_bytes(1200, 900, (10, 200, 30))[:1500]
    half = UPLOADS // 2
    upload_burst(run, half)
    response = httpx.post(f"{run.services.base_url}/images", files={"file": ("bad.jpg", corrupt)})
    assert response.status_code == 202
    corrupt_id = response.json()["id"]
    run.accepted.append(corrupt_id)
    asyncio.run(_publish_poison(run.settings, poison))
    run.fault("truncated JPEG and a malformed message mid-burst")
    upload_burst(run, UPLOADS - half - 1)
    recovery = wait_settled(run, database_url)
    outcome = assert_nothing_lost(run, database_url, errors={corrupt_id}, poison=poison)
    record("corrupt_and_poison", run, recovery, outcome)
    # The worker kept going: the next upload after the bad ones still finished.
    assert statuses(run, database_url)[run.accepted[-1]] == "DONE"
