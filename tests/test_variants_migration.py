"""Migration 0003: the variants table, its cascade from images, and the way back."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic import command

from tests.conftest import _drop_database, database_url_for
from tests.support import unique_name
from tests.test_migrations import alembic, plain
from thumbnailer.repo.admin import ensure_database


async def _cascade(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(plain(url))
    try:
        image_id, variant_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO images (id, status, original_key, media_type, width, height, size_bytes)"
            " VALUES ($1, 'DONE', 'originals/x.jpg', 'image/jpeg', 1, 1, 1)",
            image_id,
        )
        await conn.execute(
            "INSERT INTO variants (id, image_id, status, spec) VALUES ($1, $2, 'NEW', '{}')",
            variant_id,
            image_id,
        )
        before = await conn.fetchval("SELECT count(*) FROM variants WHERE id = $1", variant_id)
        await conn.execute("DELETE FROM images WHERE id = $1", image_id)
        after = await conn.fetchval("SELECT count(*) FROM variants WHERE id = $1", variant_id)
        return int(before), int(after)
    finally:
        await conn.close()


async def _has_variants(url: str) -> bool:
    conn = await asyncpg.connect(plain(url))
    try:
        return bool(await conn.fetchval("SELECT to_regclass('variants') IS NOT NULL"))
    finally:
        await conn.close()


def test_variants_cascade_with_their_image_and_the_migration_goes_back() -> None:
    name = unique_name("thumbnailer_migration")
    url = database_url_for(name).replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(ensure_database(url))
    try:
        command.upgrade(alembic(url), "0003")
        assert asyncio.run(_cascade(url)) == (1, 0)
        command.downgrade(alembic(url), "0002")
        assert not asyncio.run(_has_variants(url))
        command.upgrade(alembic(url), "0003")
        assert asyncio.run(_has_variants(url))
    finally:
        asyncio.run(_drop_database(name))
