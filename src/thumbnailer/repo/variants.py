"""Rows of variants: every status change a conditional UPDATE, every read a frozen record.

A variant's status changes notify the channel of its image, so a client long-polling the image
(GET /images/{id}?wait=, which lists its variants) wakes for them too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import Select, Text, and_, bindparam, cast, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from thumbnailer.records import OPEN, Status, VariantRecord
from thumbnailer.repo.images import _seconds, _translating
from thumbnailer.repo.schema import STATUS_CHANNEL, ImageRow, VariantRow


class UnknownImage(LookupError):
    """The image a variant was asked for is not (or no longer) there."""


class TooManyVariants(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"an image may have at most {limit} variants")
        self.limit = limit


def _transition_statement(allowed: tuple[Status, ...], *columns: str) -> Select[Any]:
    changed = (
        update(VariantRow)
        .where(VariantRow.id == bindparam("variant_id"), VariantRow.status.in_(allowed))
        .values({column: bindparam(f"new_{column}") for column in columns})
        .values(updated_at=func.now())
        .returning(VariantRow.id, VariantRow.image_id)
        .cte("changed")
    )
    return select(changed.c.id, func.pg_notify(STATUS_CHANNEL, cast(changed.c.image_id, Text)))


_COLUMNS = VariantRow.__table__.c
_GET = select(*_COLUMNS).where(VariantRow.id == bindparam("variant_id"))
_FOR_IMAGE = (
    select(*_COLUMNS)
    .where(VariantRow.image_id == bindparam("image_id"))
    .order_by(VariantRow.created_at, VariantRow.id)
)
_LOCK_IMAGE = select(ImageRow.id).where(ImageRow.id == bindparam("image_id")).with_for_update()
_COUNT = select(func.count()).where(VariantRow.image_id == bindparam("image_id"))
_TO_PROCESSING = _transition_statement((Status.NEW,), "status")
_TO_DONE = _transition_statement(OPEN, "status", "key", "width", "height", "media_type")
_TO_ERROR = _transition_statement(OPEN, "status", "error")


def _record(row: Row[Any]) -> VariantRecord:
    values = row._mapping
    return VariantRecord(
        id=values["id"],
        image_id=values["image_id"],
        status=Status(values["status"]),
        spec=dict(values["spec"]),
        key=values["key"],
        width=values["width"],
        height=values["height"],
        media_type=values["media_type"],
        error=values["error"],
        request_id=values["request_id"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
    )


class VariantRepo:
    def __init__(self, engine: AsyncEngine, autocommit: AsyncEngine) -> None:
        self.engine, self.autocommit = engine, autocommit

    def _autocommit(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _translating(self.autocommit.connect())

    def _transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _translating(self.engine.begin())

    async def create(
        self,
        variant_id: uuid.UUID,
        image_id: uuid.UUID,
        spec: Mapping[str, Any],
        request_id: str | None,
        max_per_image: int,
    ) -> tuple[VariantRecord, bool]:
        """The variant row, and whether this call created it (NEW) or found it.

        The image row is locked while counting, so two requests at once cannot both take the
        last place. Raises UnknownImage, TooManyVariants.
        """
        async with self._transaction() as conn:
            if (await conn.execute(_LOCK_IMAGE, {"image_id": image_id})).first() is None:
                raise UnknownImage(str(image_id))
            existing = (await conn.execute(_GET, {"variant_id": variant_id})).first()
            if existing is not None:
                return _record(existing), False
            count = (await conn.execute(_COUNT, {"image_id": image_id})).scalar_one()
            if count >= max_per_image:
                raise TooManyVariants(max_per_image)
            values = {
                "id": variant_id,
                "image_id": image_id,
                "status": Status.NEW.value,
                "spec": dict(spec),
                "request_id": request_id,
            }
            row = (await conn.execute(insert(VariantRow).values(values).returning(*_COLUMNS))).one()
            return _record(row), True

    async def get(self, variant_id: uuid.UUID) -> VariantRecord | None:
        async with self._autocommit() as conn:
            row = (await conn.execute(_GET, {"variant_id": variant_id})).first()
        return _record(row) if row is not None else None

    async def for_image(self, image_id: uuid.UUID) -> list[VariantRecord]:
        """Oldest first: the order they were asked for."""
        async with self._autocommit() as conn:
            return [_record(row) for row in await conn.execute(_FOR_IMAGE, {"image_id": image_id})]

    async def mark_processing(self, variant_id: uuid.UUID) -> bool:
        return await self._transition(_TO_PROCESSING, variant_id, status=Status.PROCESSING.value)

    async def mark_done(
        self, variant_id: uuid.UUID, key: str, width: int, height: int, media_type: str
    ) -> bool:
        return await self._transition(
            _TO_DONE,
            variant_id,
            status=Status.DONE.value,
            key=key,
            width=width,
            height=height,
            media_type=media_type,
        )

    async def mark_error(self, variant_id: uuid.UUID, reason: str) -> bool:
        return await self._transition(
            _TO_ERROR, variant_id, status=Status.ERROR.value, error=reason[:2000]
        )

    async def _transition(self, stmt: Select[Any], variant_id: uuid.UUID, **values: Any) -> bool:
        params = {"variant_id": variant_id, **{f"new_{k}": v for k, v in values.items()}}
        async with self._autocommit() as conn:
            return (await conn.execute(stmt, params)).first() is not None

    async def claim_stale(
        self, new_after: float, processing_after: float, limit: int = 100
    ) -> list[tuple[uuid.UUID, uuid.UUID, str | None]]:
        """(variant id, image id, request id) of variants whose job may be lost; the same
        lease as images' (claiming bumps updated_at)."""
        now = func.now()
        stale = or_(
            and_(
                VariantRow.status == Status.NEW, VariantRow.updated_at < now - _seconds(new_after)
            ),
            and_(
                VariantRow.status == Status.PROCESSING,
                VariantRow.updated_at < now - _seconds(processing_after),
            ),
        )
        pick = (
            select(VariantRow.id)
            .where(stale)
            .order_by(VariantRow.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(VariantRow)
            .where(VariantRow.id.in_(pick.scalar_subquery()))
            .values(updated_at=now)
            .returning(VariantRow.id, VariantRow.image_id, VariantRow.request_id)
        )
        async with self._transaction() as conn:
            return [(row.id, row.image_id, row.request_id) for row in await conn.execute(claim)]
