"""Migration 0002 on a database that already has rows: they keep working, with no owner."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic import command
from alembic.config import Config

from tests.conftest import _drop_database, database_url_for
from tests.support import ROOT, unique_name
from thumbnailer.repo.admin import ensure_database


def alembic(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = url
    return config


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _insert_old_row(url: str, image_id: uuid.UUID) -> None:
    conn = await asyncpg.connect(plain(url))
    try:
        await conn.execute(
            "INSERT INTO images (id, status, original_key, media_type, width, height, size_bytes)"
            " VALUES ($1, 'DONE', 'originals/x.jpg', 'image/jpeg', 1, 1, 1)",
            image_id,
        )
    finally:
        await conn.close()


async def _owner_and_indexes(url: str, image_id: uuid.UUID) -> tuple[object, set[str]]:
    conn = await asyncpg.connect(plain(url))
    try:
        owner = await conn.fetchval("SELECT owner FROM images WHERE id = $1", image_id)
        rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'images'")
        return owner, {row["indexname"] for row in rows}
    finally:
        await conn.close()


def test_owner_migration_keeps_old_rows_ownerless_and_downgrades() -> None:
    name = unique_name("thumbnailer_migration")
    url = database_url_for(name).replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(ensure_database(url))
    try:
        command.upgrade(alembic(url), "0001")
        old = uuid.uuid4()
        asyncio.run(_insert_old_row(url, old))
        command.upgrade(alembic(url), "head")
        owner, indexes = asyncio.run(_owner_and_indexes(url, old))
        assert owner is None
        assert "ix_images_owner_created_at_id" in indexes
        command.downgrade(alembic(url), "0001")
        command.upgrade(alembic(url), "head")  # and back: idempotent both ways
    finally:
        asyncio.run(_drop_database(name))
