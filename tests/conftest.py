"""Per-run isolation: a fresh database, queue names and storage directory, removed afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.preflight import ServerUnusable, arm_deadline, check_servers
from tests.s3_server import CREDENTIALS, MotoServer, free_moto
from tests.support import (
    ADMIN_DATABASE_URL,
    ARTIFACTS,
    RABBITMQ_URL,
    REDIS_KEY_PREFIX,
    REDIS_URL,
    ROOT,
    ServiceProcess,
    free_port,
    service_env,
    settings_env,
    unique_name,
    wait_until_ready,
)
from thumbnailer.api.app import create_app
from thumbnailer.broker import Topology
from thumbnailer.cli import migrate
from thumbnailer.config import Settings


def database_url_for(name: str) -> str:
    base = ADMIN_DATABASE_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session", autouse=True)
def redis_keys() -> Iterator[None]:
    """Remove this run's rate-limit counters from the shared Redis afterwards."""
    yield
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{REDIS_KEY_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture(scope="module")
def database_url(run_id: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database per test module: the relay claims stale rows table-wide, so rows one module
    left NEW or PROCESSING must never become another module's jobs (with another module's
    storage, so a retry the no-retry check would rightly flag)."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"thumbnailer_test_{run_id}_{module}"[:63]
    url = database_url_for(name)
    migrate(Settings(database_url=url))
    yield url
    asyncio.run(_drop_database(name))


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage")


def make_settings(base_database_url: str, storage: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": base_database_url,
        "rabbitmq_url": RABBITMQ_URL,
        "queue_name": unique_name("thumbnailer_test") + ".jobs",
        "storage_path": storage,
        "spool_path": storage.parent / f"{storage.name}-spool",
        # Test machines may run with little free disk; the reserve has its own test.
        "min_free_space": 0,
        "log_level": "INFO",
        "relay_interval": 1.0,
        "retry_base_delay": 0.2,
        "max_poll_wait": 5.0,
        "redis_url": REDIS_URL,
        "redis_key_prefix": REDIS_KEY_PREFIX,
        # Limits far above what the suite sends; the rate-limit tests set their own.
        "rate_limit_uploads": "100000/minute",
        "rate_limit_requests": "100000/minute",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(database_url, tmp_path / "storage")
    yield settings
    asyncio.run(delete_queues(settings))


async def delete_queues(settings: Settings) -> None:
    topology = Topology(settings.queue_name, settings.max_retries, settings.retry_base_delay)
    names = list(topology.queues())  # every queue the processes declare, lanes included
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """moto's S3 server, started on first use; the AWS credential chain finds test keys."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # read by obstore here and by the service subprocesses
    server = free_moto()
    yield server
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def s3_bucket(s3_server: MotoServer, run_id: str) -> str:
    bucket = f"thumbnailer-test-{run_id}"
    s3_server.create_bucket(bucket)
    return bucket


@pytest.fixture
def s3_settings(
    database_url: str, tmp_path: Path, s3_server: MotoServer, s3_bucket: str
) -> Iterator[Settings]:
    """STORAGE_BACKEND=s3 against moto, under a prefix of this test's own."""
    settings = make_settings(
        database_url, tmp_path / "storage", **s3_overrides(s3_server, s3_bucket)
    )
    yield settings
    asyncio.run(delete_queues(settings))


def s3_overrides(server: MotoServer, bucket: str, endpoint: str = "") -> dict[str, object]:
    return {
        "storage_backend": "s3",
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint or server.endpoint,
        "s3_prefix": unique_name("run") + "/",
    }


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        await asyncio.wait_for(application.state.services.broker.wait_connected(), 10)
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


class Services:
    """The real API and worker processes, as `make run` starts them, on free ports."""

    def __init__(self, settings: Settings, artifacts: Path) -> None:
        self.settings = settings
        self.api_port = free_port()
        self.worker_port = free_port()
        env = service_env(settings_environment(settings, self.api_port, self.worker_port))
        self.env = env
        self.api = ServiceProcess("api", env, artifacts / "api.log")
        self.workers: list[ServiceProcess] = []
        self.artifacts = artifacts
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.worker_url = f"http://127.0.0.1:{self.worker_port}"

    def start(self) -> None:
        self.api.start()
        self.start_worker()
        try:
            wait_until_ready(f"{self.base_url}/readyz")
        except BaseException:
            self.stop()  # a fixture that fails to start never reaches its teardown
            raise

    def start_worker(self, **env: str) -> ServiceProcess:
        index = len(self.workers)
        worker = ServiceProcess(
            "worker", {**self.env, **env}, self.artifacts / f"worker-{index}.log"
        )
        worker.start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            process.stop()

    def assert_workers_clean(self, retries_allowed: bool = False) -> None:
        """No worker crashed on a job; outside fault scenarios, none retried one either (a bug
        that passes on retry would otherwise hide behind the retry queue)."""
        banned = ["job_crashed"] + ([] if retries_allowed else ["job_retry_scheduled"])
        for worker in self.workers:
            logs = worker.logs()
            for event in banned:
                assert f'"event": "{event}"' not in logs, f"{worker.log_path}: {event}"


def settings_environment(settings: Settings, api_port: int, worker_port: int) -> dict[str, str]:
    """The process environment for `settings`, derived from every field, on the given ports."""
    env = settings_env(settings)
    env.update(
        {"API_HOST": "127.0.0.1", "API_PORT": str(api_port), "WORKER_HTTP_PORT": str(worker_port)}
    )
    return env


@pytest.fixture
def services(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Services]:
    artifacts = ARTIFACTS / request.node.name
    running = Services(settings, artifacts)
    running.start()
    yield running
    running.stop()
    running.assert_workers_clean()


@pytest.fixture
def jwt_services(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Services]:
    """The real processes in AUTH_MODE=jwt (HS256), /metrics on an internal port of its own."""
    from tests.auth_support import JWT_SETTINGS, SECRET

    values = {**JWT_SETTINGS, "public_base_url": "", "metrics_port": free_port()}
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **values)
    running = Services(settings, ARTIFACTS / request.node.name)
    running.start()
    yield running
    running.stop()
    running.assert_workers_clean()
    asyncio.run(delete_queues(settings))


# Reasons a browser test may be skipped in a CI run (CI=true); any other skip fails the run.
BROWSER_SKIPS_ALLOWED_IN_CI = ("browser tests turned off (BROWSER_TESTS=off)",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and item.get_closest_marker("browser")):
        return
    if os.environ.get("CI") != "true" or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    if reason not in BROWSER_SKIPS_ALLOWED_IN_CI:
        report.outcome = "failed"
        report.longrepr = (
            f"browser test skipped under CI=true: {reason!r}; "
            f"allowed skips: {BROWSER_SKIPS_ALLOWED_IN_CI}"
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail in seconds with the reason when a shared server is unusable, never hang."""
    arm_deadline()
    if os.environ.get("TEST_PREFLIGHT") == "off":
        return
    try:
        check_servers(ADMIN_DATABASE_URL, RABBITMQ_URL, REDIS_URL, ROOT)
    except ServerUnusable as exc:
        pytest.exit(f"preflight: {exc}", returncode=3)
