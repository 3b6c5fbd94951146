"""Fault injection: links cut, workers killed, a poison message; no accepted upload is lost.

Each scenario runs the real API and worker processes with their links to RabbitMQ and
PostgreSQL going through TCP proxies the test controls, in a database of their own, and counts
what happened rather than assuming it:
- lost: accepted ids (2xx) without a row in the expected final status, without their original,
  without their thumbnails or never processed by a worker (no `job_done` / `job_failed` line);
- duplicated: jobs processed more than once (more than one `job_done` / `job_failed` line for
  an id, over the logs of every worker of the run, killed ones included: a killed worker loses
  its metrics, not its log file; the surviving worker's `thumbnailer_jobs_total` must agree with
  its log);
- refused: every upload that did not get a 202, with its status and code;
- redelivered: jobs a worker received after they were finished (`job_already_finished`).
Each scenario also proves its fault took effect (links through the proxy were cut, readiness
503 or deferred publishes seen, a job was in flight at each kill, the SIGTERMed worker drained
with nothing unfinished) and that no worker crashed (`job_crashed`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest

from tests.conftest import Services, _drop_database, database_url_for, make_settings
from tests.support import (
    ARTIFACTS,
    RABBITMQ_URL,
    ROOT,
    jpeg_bytes,
    photo_jpeg,
    wait_until_ready,
)
from tests.tcp_proxy import TcpProxy
from thumbnailer.broker import Topology
from thumbnailer.cli import migrate
from thumbnailer.config import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
UPLOADS = 200
SUMMARY = ARTIFACTS / "faults-summary.jsonl"
# Lines that end a job's handling in a worker (one of them per delivery that was finished).
JOB_ENDS = (
    "job_done",
    "job_failed",
    "job_already_finished",
    "job_retry_scheduled",
    "job_dead_lettered",
    "retry_publish_failed",
)


IMAGES = [photo_jpeg(1600 + 16 * i, 1200 - 8 * i, i) for i in range(8)]


@dataclass
class Run:
    services: Services
    broker_proxy: TcpProxy
    database_proxy: TcpProxy
    direct_database_url: str
    accepted: list[str] = field(default_factory=list)
    accepted_as_new: int = 0
    refusals: list[tuple[object, object]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0

    def fault(self, description: str) -> None:
        self.faults.append(description)
        self.last_fault_end = time.monotonic()

    @property
    def settings(self) -> Settings:
        return self.services.settings


@pytest.fixture(scope="module")
def fault_database_url(run_id: str) -> Iterator[str]:
    """A database for the fault scenarios alone: the relay claims stale rows table-wide, so
    rows other modules left PROCESSING must not become these scenarios' jobs."""
    name = f"thumbnailer_faults_{run_id}"
    url = database_url_for(name)
    migrate(Settings(database_url=url))
    yield url
    asyncio.run(_drop_database(name))


@pytest.fixture
def run(fault_database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Run]:
    with TcpProxy("127.0.0.1", 5672) as broker, TcpProxy("127.0.0.1", 5432) as database:
        settings = make_settings(
            database.url(fault_database_url),
            tmp_path / "storage",
            rabbitmq_url=broker.url(RABBITMQ_URL),
            relay_interval=0.5,
            processing_timeout=15.0,
            retry_base_delay=0.25,
            max_retries=8,
            shutdown_grace_period=10.0,
        )
        asyncio.run(_truncate(fault_database_url))  # a scenario's rows are only its own
        artifacts = ARTIFACTS / request.node.name
        shutil.rmtree(artifacts, ignore_errors=True)  # no worker log of an earlier run
        services = Services(settings, artifacts)
        services.start()
        try:
            wait_until_ready(f"{services.worker_url}/readyz")  # its links are open now
            # Every link of both processes goes through the proxies, or the faults are fake.
            assert broker.connections >= 2, f"AMQP links through the proxy: {broker.connections}"
            assert database.connections >= 2, f"SQL links through the proxy: {database.connections}"
            yield Run(services, broker, database, fault_database_url)
        finally:
            services.stop()


async def _truncate(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE images CASCADE")
    finally:
        await conn.close()


def upload_burst(run: Run, count: int, during: Callable[[int], None] | None = None) -> None:
    """Upload `count` images, 8 at a time; `during(n)` runs after the n-th response."""
    done = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal done
        data = IMAGES[index % len(IMAGES)]
        refusal: tuple[object, object] | None = None
        try:
            response = httpx.post(
                f"{run.services.base_url}/images", files={"file": ("i.jpg", data)}, timeout=30
            )
        except httpx.HTTPError as exc:
            refusal = (type(exc).__name__, None)
        else:
            if response.status_code != 202:
                refusal = (response.status_code, _code(response))
        with lock:
            if refusal is None:
                run.accepted.append(response.json()["id"])
                run.accepted_as_new += response.json()["status"] == "NEW"
            else:
                run.refusals.append(refusal)
            done += 1
            current = done
        if during is not None:
            during(current)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def _code(response: httpx.Response) -> object:
    try:
        return response.json().get("code")
    except ValueError:
        return response.text[:100]


def readiness_during(run: Run, seconds: float) -> dict[str, set[int | str]]:
    """Poll both processes' /readyz for `seconds`; the statuses each answered."""
    seen: dict[str, set[int | str]] = {"api": set(), "worker": set()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, base in (("api", run.services.base_url), ("worker", run.services.worker_url)):
            try:
                seen[name].add(httpx.get(f"{base}/readyz", timeout=1).status_code)
            except httpx.HTTPError as exc:
                seen[name].add(type(exc).__name__)
        time.sleep(0.1)
    return seen


async def _statuses(database_url: str, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch("SELECT id::text, status FROM images WHERE id::text = ANY($1)", ids)
    finally:
        await conn.close()
    return {row["id"]: row["status"] for row in rows}


def statuses(run: Run) -> dict[str, str]:
    return asyncio.run(_statuses(run.direct_database_url, run.accepted))


async def _row_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM images"))
    finally:
        await conn.close()


def wait_settled(run: Run, timeout: float = 180) -> float:
    """Seconds from the end of the last fault until every accepted upload is DONE or ERROR."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        current = statuses(run)
        if len(current) == len(run.accepted) and all(
            status in ("DONE", "ERROR") for status in current.values()
        ):
            return time.monotonic() - run.last_fault_end
        time.sleep(0.2)
    stuck = {k: v for k, v in statuses(run).items() if v not in ("DONE", "ERROR")}
    raise AssertionError(f"{len(stuck)} uploads never finished: {list(stuck.items())[:5]}")


async def _queued(settings: Settings) -> int:
    """Messages ready in the work queue and its retry queues."""
    topology = Topology(settings.queue_name, settings.max_retries, settings.retry_base_delay)
    names = [topology.queue] + [topology.retry_queue(n) for n in range(1, topology.max_retries + 1)]
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        total = 0
        for name in names:
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
    return total


def wait_drained(run: Run, timeout: float = 120) -> None:
    """Every row may be final while copies of jobs (redeliveries, relay republishes) are still
    queued: count duplicates only once the queues are empty and the worker is idle."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:
        assert time.monotonic() < deadline, "queues never drained"
        text = httpx.get(f"{run.services.worker_url}/metrics", timeout=5).text
        idle = "\nthumbnailer_jobs_in_flight 0.0" in text
        quiet = quiet + 1 if idle and asyncio.run(_queued(run.settings)) == 0 else 0
        time.sleep(0.3)


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


def original_ids(storage: Path) -> list[str]:
    return [path.name.split(".")[0] for path in (storage / "originals").glob("*/*")]


def log_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by SIGKILL
    return lines


def events(worker_log: Path, *names: str) -> Counter[str]:
    """How many lines of each image id carry one of the events `names`."""
    return Counter(
        str(line.get("image_id")) for line in log_lines(worker_log) if line["event"] in names
    )


def unfinished(worker_log: Path) -> list[str]:
    """Image ids whose job this worker started and never finished (in flight when it died)."""
    started, ended = events(worker_log, "job_started"), events(worker_log, *JOB_ENDS)
    return [image_id for image_id, n in started.items() if n > ended[image_id]]


def worker_logs(run: Run) -> list[Path]:
    return [worker.log_path for worker in run.services.workers]


def count_events(run: Run, name: str) -> int:
    return sum(events(path, name).total() for path in worker_logs(run))


def jobs_done_metric(run: Run) -> float:
    """`thumbnailer_jobs_total{outcome="done"}` of the worker answering on the port now."""
    text = httpx.get(f"{run.services.worker_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('thumbnailer_jobs_total{outcome="done"}'):
            return float(line.split()[-1])
    raise AssertionError("thumbnailer_jobs_total{outcome=done} missing from the worker's /metrics")


def measure(
    run: Run,
    errors: frozenset[str] = frozenset(),
    poison: bytes | None = None,
    killed: frozenset[int] = frozenset(),
) -> dict[str, object]:
    """Lost, duplicated and redelivered jobs, counted from rows, files and worker logs."""
    wait_drained(run)
    final = statuses(run)
    storage = run.settings.storage_path
    assert len(set(run.accepted)) == len(run.accepted), "one id handed out twice"
    processed: Counter[str] = Counter()
    cut_off: set[str] = set()  # started by a worker that died before its job's last line
    for path in worker_logs(run):
        processed += events(path, "job_done", "job_failed")
        cut_off |= set(unfinished(path))
    lost = []
    for image_id in run.accepted:
        expected = "ERROR" if image_id in errors else "DONE"
        files = thumbnail_sets(storage, image_id)
        thumbs_ok = files == (
            [] if image_id in errors else ["100x100.jpg", "1200x1200.jpg", "300x300.jpg"]
        )
        # A worker killed between its commit and its `job_done` line finished the job unlogged.
        finished = processed[image_id] > 0 or image_id in cut_off
        if final.get(image_id) != expected or not thumbs_ok or not finished:
            lost.append((image_id, final.get(image_id), files, processed[image_id]))
    assert not lost, f"{len(lost)} accepted uploads lost: {lost[:5]}"
    # Nothing processed or stored that was not accepted; one original per accepted id.
    assert set(processed) <= set(run.accepted), set(processed) - set(run.accepted)
    originals = original_ids(storage)
    assert sorted(originals) == sorted(run.accepted), "originals are not exactly the accepted ids"
    assert asyncio.run(_row_count(run.direct_database_url)) == len(run.accepted), "foreign rows"
    # A SIGKILL mid-write leaves that writer's scratch file (named by its pid) for the store's
    # sweep; any other leftover is a write that failed to clean up after itself.
    leftovers = [p.name for p in (storage / ".tmp").iterdir()]
    assert all(int(name.split("-")[0]) in killed for name in leftovers), leftovers
    # The surviving worker's counter agrees with its log (the log count is the one to trust).
    last = run.services.workers[-1].log_path
    assert jobs_done_metric(run) == events(last, "job_done").total()
    assert count_events(run, "job_crashed") == 0, "a worker crashed on a job"
    dead = asyncio.run(_dead_letters(run.settings))
    assert dead == ([poison] if poison is not None else [])
    return {
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in processed.values() if n > 1),
        "finished_by_a_killed_worker": sum(
            1 for image_id in run.accepted if processed[image_id] == 0 and image_id in cut_off
        ),
        "redelivered": count_events(run, "job_already_finished"),
        "broker_redeliveries": sum(
            1
            for path in worker_logs(run)
            for line in log_lines(path)
            if line["event"] == "job_started" and line.get("redelivered") is True
        ),
        "relay_republished": sum(
            int(str(line["count"]))
            for line in log_lines(run.services.api.log_path)
            if line["event"] == "relay_republished"
        ),
        "retried": count_events(run, "job_retry_scheduled"),
        "dead_letters": len(dead),
    }


def record(
    name: str, run: Run, recovery: float, measured: dict[str, object], **extra: object
) -> None:
    entry = {
        "scenario": name,
        "commit": _commit(),
        "uploads": UPLOADS,
        "accepted": len(run.accepted),
        "accepted_as_new": run.accepted_as_new,
        "refused": len(run.refusals),
        "refusals": sorted({f"{status} {code}" for status, code in run.refusals}),
        "faults": run.faults,
        "recovery_seconds": round(recovery, 1),
        **measured,
        **extra,
    }
    print(json.dumps(entry))
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    with SUMMARY.open("a") as summary:
        summary.write(json.dumps(entry) + "\n")


def _commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() or "unknown"


def test_broker_links_cut_twice_during_a_burst(run: Run) -> None:
    cut: list[int] = []
    seen: list[dict[str, set[int | str]]] = []

    def cut_at(n: int) -> None:
        if n in (50, 130):
            # Uploads outrun a reconnect: the second cut must find both links back first.
            run.broker_proxy.wait_for_clients(2, timeout=20)
            cut.append(run.broker_proxy.cut())
            seen.append(readiness_during(run, 2.0))
            run.broker_proxy.restore()
            run.fault(f"broker links cut for 2 s after {n} uploads")

    upload_burst(run, UPLOADS, cut_at)
    recovery = wait_settled(run)
    # Each cut dropped the API's and the worker's AMQP links, and both noticed.
    assert len(cut) == 2
    assert all(n >= 2 for n in cut), cut
    assert all(503 in s["api"] and 503 in s["worker"] for s in seen), seen
    # The broker being down refuses nothing: uploads are kept NEW and the relay publishes them.
    assert run.refusals == []
    assert run.accepted_as_new >= 1, "no upload saw its publish deferred"
    measured = measure(run)
    record("broker_cut_twice", run, recovery, measured, links_cut=cut)


def test_worker_killed_three_times(run: Run) -> None:
    in_flight: list[list[str]] = []
    killed: set[int] = set()

    def kill_at(n: int) -> None:
        if n in (60, 120, 180):
            victim = run.services.workers[-1]
            assert victim.process is not None
            killed.add(victim.process.pid)
            deadline = time.monotonic() + 10
            while not unfinished(victim.log_path) and time.monotonic() < deadline:
                time.sleep(0.01)  # kill it mid-job, not between two jobs
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            in_flight.append(unfinished(victim.log_path))
            run.services.start_worker()
            run.fault(f"worker SIGKILLed mid-job after {n} uploads")

    upload_burst(run, UPLOADS, kill_at)
    recovery = wait_settled(run)
    # Read after its death, each victim's log shows a job it started and never finished.
    assert len(in_flight) == 3
    assert all(in_flight), in_flight
    assert run.refusals == []
    measured = measure(run, killed=frozenset(killed))
    record(
        "worker_sigkill_x3", run, recovery, measured, in_flight_at_kill=[len(j) for j in in_flight]
    )


def test_database_link_cut_for_five_seconds(run: Run) -> None:
    cut: list[int] = []
    seen: list[dict[str, set[int | str]]] = []

    def cut_at(n: int) -> None:
        if n == 150:
            cut.append(run.database_proxy.cut())
            seen.append(readiness_during(run, 5.0))
            run.database_proxy.restore()
            run.fault(f"database links cut for 5 s after {n} uploads, jobs running")

    upload_burst(run, UPLOADS, cut_at)
    recovery = wait_settled(run)
    assert len(cut) == 1
    assert cut[0] >= 2, cut  # the API's and the worker's connections were open
    assert 503 in seen[0]["api"], seen
    # Uploads during the cut are refused, each one with a clean 503, and only those.
    assert run.refusals, "no upload was refused while the database was cut"
    assert set(run.refusals) == {(503, "database_unavailable")}, run.refusals
    assert len(run.accepted) >= 150
    measured = measure(run)
    record("database_cut_5s", run, recovery, measured, links_cut=cut)


def test_sigterm_under_load_then_a_new_worker(run: Run) -> None:
    exit_codes: list[int] = []

    def stop_at(n: int) -> None:
        if n == 120:
            worker = run.services.workers[-1]
            worker.signal(signal.SIGTERM)
            exit_codes.append(worker.wait(run.settings.shutdown_grace_period + 10))
            run.services.start_worker()
            run.fault(f"worker SIGTERMed under load after {n} uploads, replaced")

    upload_burst(run, UPLOADS, stop_at)
    recovery = wait_settled(run)
    assert exit_codes == [0]
    stopped = log_lines(run.services.workers[0].log_path)
    stopping = [line for line in stopped if line["event"] == "worker_stopping"]
    drained = [line for line in stopped if line["event"] == "worker_drained"]
    # It had jobs in flight when told to stop, and finished every one of them before exiting.
    assert len(stopping) == 1
    assert int(str(stopping[0]["in_flight"])) >= 1, stopping
    assert [line["unfinished"] for line in drained] == [0], drained
    assert unfinished(run.services.workers[0].log_path) == []
    assert stopped[-1]["event"] == "worker_stopped"
    assert run.refusals == []
    measured = measure(run)
    record("worker_sigterm", run, recovery, measured, in_flight_at_sigterm=stopping[0]["in_flight"])


async def _publish_poison(settings: Settings, body: bytes) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=settings.queue_name,
        )


def test_corrupt_image_and_poison_message_mid_burst(run: Run) -> None:
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
    recovery = wait_settled(run)
    assert run.refusals == []
    measured = measure(run, errors=frozenset({corrupt_id}), poison=poison)
    # Bad input is settled at once (ERROR, dead letter), never retried; no link fault here.
    assert measured["retried"] == 0
    assert count_events(run, "job_dead_lettered") == 1
    record("corrupt_and_poison", run, recovery, measured)
    # The worker kept going: the next upload after the bad ones still finished.
    assert statuses(run)[run.accepted[-1]] == "DONE"
