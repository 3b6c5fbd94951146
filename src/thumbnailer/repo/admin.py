"""Database administration for the CLI: create the database, apply migrations, redact URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url


class DatabaseUnreachable(Exception):
    def __init__(self, url: str, error: BaseException) -> None:
        super().__init__(f"PostgreSQL is unreachable at {url}: {error}")
        self.url, self.error = url, error


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an AMQP URL is not a SQLAlchemy URL; fall back to masking by hand
        scheme, sep, rest = url.partition("://")
        creds, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{creds.split(':')[0]}:***{at}{host}" if at else url


async def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist yet (needs CREATEDB)."""
    url = make_url(database_url)
    try:
        conn = await asyncpg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password,
            database="postgres", timeout=5,
        )  # fmt: skip
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnreachable(redact(database_url), exc) from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await conn.close()


def upgrade(database_url: str, root: Path) -> None:
    """Create the database if needed, then run Alembic to head from `root`'s alembic.ini."""
    from alembic import command
    from alembic.config import Config

    asyncio.run(ensure_database(database_url))
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
