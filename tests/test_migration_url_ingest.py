"""Migration 0004 (URL ingest): rows may wait for their bytes; down again without them."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from alembic import command

from tests.conftest import _drop_database, database_url_for
from tests.support import unique_name
from tests.test_migrations import alembic, plain
from thumbnailer.repo.admin import ensure_database

OLD_ROW = (
    "INSERT INTO images (id, status, original_key, media_type, width, height, size_bytes)"
    " VALUES ($1, 'DONE', 'originals/x.jpg', 'image/jpeg', 1, 1, 1)"
)
URL_ROW = "INSERT INTO images (id, status, source_url) VALUES ($1, 'NEW', 'https://a.example/x')"


async def _execute(url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(plain(url))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _ids(url: str) -> set[uuid.UUID]:
    conn = await asyncpg.connect(plain(url))
    try:
        return {row["id"] for row in await conn.fetch("SELECT id FROM images")}
    finally:
        await conn.close()


def test_url_rows_need_a_source_and_are_dropped_on_downgrade() -> None:
    name = unique_name("thumbnailer_migration")
    url = database_url_for(name).replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(ensure_database(url))
    try:
        command.upgrade(alembic(url), "0002")
        old, fetched = uuid.uuid4(), uuid.uuid4()
        asyncio.run(_execute(url, OLD_ROW, old))
        command.upgrade(alembic(url), "head")
        asyncio.run(_execute(url, URL_ROW, fetched))
        with pytest.raises(asyncpg.CheckViolationError):
            asyncio.run(
                _execute(url, "INSERT INTO images (id, status) VALUES ($1, 'NEW')", uuid.uuid4())
            )
        assert asyncio.run(_ids(url)) == {old, fetched}
        command.downgrade(alembic(url), "0002")
        assert asyncio.run(_ids(url)) == {old}  # a row without bytes has no place there
        command.upgrade(alembic(url), "head")
    finally:
        asyncio.run(_drop_database(name))
