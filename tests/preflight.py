"""Before the first test: are the shared servers usable, and a deadline for the whole run.

A server left unusable (a full disk, exhausted PostgreSQL connections, a RabbitMQ resource
alarm that blocks publishers) once made a CI run error on its first test and then hang until
CI's own limit killed it, printing nothing. Each check here answers in seconds and names what
is wrong; the deadline dumps every thread's stack and ends the run instead of hanging.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
import asyncpg
import redis

# The suite takes about ten minutes here; CI allows ninety.
DEFAULT_DEADLINE_SECONDS = 45 * 60
MIN_FREE_DISK = 1 << 30
# The API and worker processes of a test and its own pools hold a few dozen at most.
MIN_FREE_CONNECTIONS = 30
CHECK_TIMEOUT = 10.0


class ServerUnusable(Exception):
    """A shared server cannot serve this run; the message says which and why."""


def arm_deadline() -> None:
    seconds = float(os.environ.get("TEST_DEADLINE_SECONDS", DEFAULT_DEADLINE_SECONDS))
    if seconds > 0:
        faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)


def check_disk(*paths: Path) -> None:
    for path in paths:
        free = shutil.disk_usage(path).free
        if free < MIN_FREE_DISK:
            raise ServerUnusable(f"only {free >> 20} MiB free on {path}; the suite needs 1 GiB")


async def check_postgres(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=CHECK_TIMEOUT)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        used = int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity"))
    finally:
        await conn.close()
    if limit - used < MIN_FREE_CONNECTIONS:
        raise ServerUnusable(
            f"PostgreSQL has {used} of max_connections={limit} connections in use; "
            "a process of an earlier run probably still holds them"
        )


async def check_rabbitmq(url: str) -> None:
    """A confirmed publish: a resource alarm blocks it, where a connect alone still succeeds."""
    connection = await aio_pika.connect(url, timeout=CHECK_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            f"thumbnailer_preflight_{uuid.uuid4().hex}", exclusive=True
        )
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(b"preflight"), routing_key=queue.name, timeout=CHECK_TIMEOUT
            )
        except TimeoutError as exc:
            raise ServerUnusable(
                "RabbitMQ accepts connections but not publishes (a memory or disk alarm?)"
            ) from exc


def check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


def check_servers(database_url: str, rabbitmq_url: str, redis_url: str, root: Path) -> None:
    check_disk(root, Path(tempfile.gettempdir()))
    checks: tuple[tuple[str, Callable[[], None]], ...] = (
        ("PostgreSQL", lambda: asyncio.run(check_postgres(database_url))),
        ("RabbitMQ", lambda: asyncio.run(check_rabbitmq(rabbitmq_url))),
        ("Redis", lambda: check_redis(redis_url)),
    )
    for name, check in checks:
        try:
            check()
        except ServerUnusable:
            raise
        except Exception as exc:  # any failure here means the same: unusable
            raise ServerUnusable(f"{name} is not usable: {exc!r}") from exc
