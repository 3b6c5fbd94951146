"""Rows of images: every status change a conditional UPDATE, every read a frozen record.

Driver failures leave this module as `RepoUnavailable` only, so no caller needs to know which
database library sits underneath.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Select,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from thumbnailer.records import (
    OPEN,
    ImageRecord,
    NewImage,
    Placeholder,
    Status,
    ThumbnailEntry,
)
from thumbnailer.repo.schema import STATUS_CHANNEL, ImageRow


class RepoUnavailable(Exception):
    """The database could not be reached or refused the statement; callers treat it as transient."""


def create_engine(database_url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        # Fail fast when PostgreSQL is unreachable instead of hanging a request.
        connect_args={"timeout": 5, "command_timeout": 15},
    )


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


def _transition_statement(allowed: tuple[Status, ...], *columns: str) -> Select[Any]:
    """UPDATE ... WHERE status IN allowed, plus a NOTIFY that leaves with the same commit.

    Built once per transition with bind parameters, so SQLAlchemy compiles it once.
    Long-polling API processes wake on the notification instead of re-reading the row.
    """
    changed = (
        update(ImageRow)
        .where(ImageRow.id == bindparam("image_id"), ImageRow.status.in_(allowed))
        .values({column: bindparam(f"new_{column}") for column in columns})
        .values(updated_at=func.now())
        .returning(ImageRow.id)
        .cte("changed")
    )
    return select(changed.c.id, func.pg_notify(STATUS_CHANNEL, cast(changed.c.id, Text)))


_COLUMNS = ImageRow.__table__.c
_INSERT = insert(ImageRow)
_GET = select(*_COLUMNS).where(ImageRow.id == bindparam("image_id"))
_TO_PROCESSING = _transition_statement((Status.NEW,), "status")
_TO_DONE = _transition_statement(OPEN, "status", "thumbnails", "placeholder")
_TO_ERROR = _transition_statement(OPEN, "status", "error")
_REOPEN = _transition_statement((Status.ERROR,), "status", "error")


def _record(row: Row[Any]) -> ImageRecord:
    values = row._mapping
    return ImageRecord(
        id=values["id"],
        status=Status(values["status"]),
        original_key=values["original_key"],
        original_filename=values["original_filename"],
        media_type=values["media_type"],
        width=values["width"],
        height=values["height"],
        size_bytes=values["size_bytes"],
        thumbnails={
            label: ThumbnailEntry.from_json(entry)
            for label, entry in (values["thumbnails"] or {}).items()
        },
        error=values["error"],
        request_id=values["request_id"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        owner=values["owner"],
        placeholder=Placeholder.from_json(values["placeholder"]) if values["placeholder"] else None,
    )


@asynccontextmanager
async def _translating(
    opening: AbstractAsyncContextManager[AsyncConnection],
) -> AsyncIterator[AsyncConnection]:
    """A connection whose driver failures leave as RepoUnavailable."""
    try:
        async with opening as conn:
            yield conn
    except (SQLAlchemyError, OSError) as exc:
        raise RepoUnavailable(str(exc) or type(exc).__name__) from exc


class Repo:
    """Every write is one short statement; no connection outlives a call."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # A single statement is its own transaction: one round trip instead of BEGIN, the
        # statement and COMMIT, and just as durable.
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def connect(cls, database_url: str, pool_size: int = 10) -> Repo:
        return cls(create_engine(database_url, pool_size))

    async def close(self) -> None:
        await self.engine.dispose()

    def _autocommit(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _translating(self.autocommit.connect())

    def _transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _translating(self.engine.begin())

    async def add(self, new: NewImage) -> None:
        values = {
            "id": new.id,
            "status": Status.NEW.value,
            "original_key": new.original_key,
            "original_filename": new.original_filename,
            "media_type": new.media_type,
            "width": new.width,
            "height": new.height,
            "size_bytes": new.size_bytes,
            "request_id": new.request_id,
            "owner": new.owner,
        }
        # Core, not the ORM: the unit of work costs more CPU than the INSERT on the upload path.
        async with self._autocommit() as conn:
            await conn.execute(_INSERT, values)

    async def get(self, image_id: uuid.UUID) -> ImageRecord | None:
        async with self._autocommit() as conn:
            row = (await conn.execute(_GET, {"image_id": image_id})).first()
        return _record(row) if row is not None else None

    async def mark_processing(self, image_id: uuid.UUID) -> bool:
        """NEW -> PROCESSING only; a worker that already finished keeps its DONE."""
        return await self._transition(_TO_PROCESSING, image_id, status=Status.PROCESSING.value)

    async def mark_done(
        self,
        image_id: uuid.UUID,
        thumbnails: Mapping[str, ThumbnailEntry],
        placeholder: Placeholder | None = None,
    ) -> bool:
        as_json = {label: entry.to_json() for label, entry in thumbnails.items()}
        return await self._transition(
            _TO_DONE,
            image_id,
            status=Status.DONE.value,
            thumbnails=as_json,
            placeholder=placeholder.to_json() if placeholder else None,
        )

    async def mark_error(self, image_id: uuid.UUID, reason: str) -> bool:
        return await self._transition(
            _TO_ERROR, image_id, status=Status.ERROR.value, error=reason[:2000]
        )

    async def reopen(self, image_id: uuid.UUID) -> bool:
        """ERROR -> PROCESSING, for a job an operator sends round again."""
        return await self._transition(_REOPEN, image_id, status=Status.PROCESSING.value, error=None)

    async def _transition(self, stmt: Select[Any], image_id: uuid.UUID, **values: Any) -> bool:
        params = {"image_id": image_id, **{f"new_{k}": v for k, v in values.items()}}
        async with self._autocommit() as conn:
            return (await conn.execute(stmt, params)).first() is not None

    async def page(
        self,
        limit: int,
        status: Status | None = None,
        after: tuple[datetime, uuid.UUID] | None = None,
        owner: str | None = None,
    ) -> list[ImageRecord]:
        """Newest first; `after` is the (created_at, id) of the last row already seen.

        With `owner`, only that owner's rows; without, every row (rows with no owner included).
        """
        stmt = select(*_COLUMNS).order_by(ImageRow.created_at.desc(), ImageRow.id.desc())
        stmt = stmt.limit(limit)
        if owner is not None:
            stmt = stmt.where(ImageRow.owner == owner)
        if status is not None:
            stmt = stmt.where(ImageRow.status == status.value)
        if after is not None:
            stmt = stmt.where(tuple_(ImageRow.created_at, ImageRow.id) < tuple_(*after))
        async with self._autocommit() as conn:
            return [_record(row) for row in await conn.execute(stmt)]

    async def now(self) -> datetime:
        """The database's clock: the one every updated_at is written with."""
        async with self._autocommit() as conn:
            moment: datetime = (await conn.execute(select(func.now()))).scalar_one()
        return moment

    async def changed_after(
        self, after: tuple[datetime, uuid.UUID], owner: str | None = None, limit: int = 500
    ) -> list[ImageRecord]:
        """Rows whose (updated_at, id) is after `after`, oldest change first (event streams
        catching up); page on with the last row's (updated_at, id).

        With `owner`, only that owner's rows. The status list is every status: it lets the
        (status, updated_at) index serve the range instead of a scan of the whole table.
        """
        stmt = (
            select(*_COLUMNS)
            .where(
                ImageRow.status.in_([s.value for s in Status]),
                ImageRow.updated_at >= after[0],
                tuple_(ImageRow.updated_at, ImageRow.id) > tuple_(*after),
            )
            .order_by(ImageRow.updated_at, ImageRow.id)
            .limit(limit)
        )
        if owner is not None:
            stmt = stmt.where(ImageRow.owner == owner)
        async with self._autocommit() as conn:
            return [_record(row) for row in await conn.execute(stmt)]

    async def claim_stale(
        self, new_after: float, processing_after: float, limit: int = 100
    ) -> list[tuple[uuid.UUID, str | None]]:
        """Rows whose job may never have reached the broker (or was lost), oldest first.

        Claiming bumps `updated_at`, a lease: another relay skips them (SKIP LOCKED now, the age
        test later) until the lease runs out, and a row whose publish fails comes round again.
        """
        now = func.now()
        stale = or_(
            and_(ImageRow.status == Status.NEW, ImageRow.updated_at < now - _seconds(new_after)),
            and_(
                ImageRow.status == Status.PROCESSING,
                ImageRow.updated_at < now - _seconds(processing_after),
            ),
        )
        pick = (
            select(ImageRow.id)
            .where(stale)
            .order_by(ImageRow.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(ImageRow)
            .where(ImageRow.id.in_(pick.scalar_subquery()))
            .values(updated_at=now)
            .returning(ImageRow.id, ImageRow.request_id)
        )
        async with self._transaction() as conn:
            return [(row.id, row.request_id) for row in await conn.execute(claim)]

    async def count_by_status(self) -> dict[str, int]:
        stmt = select(ImageRow.status, func.count()).group_by(ImageRow.status)
        async with self._autocommit() as conn:
            counts = {str(status): int(n) for status, n in await conn.execute(stmt)}
        return {status.value: counts.get(status.value, 0) for status in Status}

    async def ping(self) -> bool:
        async with self._autocommit() as conn:
            await conn.execute(select(1))
        return True
