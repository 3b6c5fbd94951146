"""The `images` table and its status transitions, each one a conditional UPDATE."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Status(enum.StrEnum):
    NEW = "NEW"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    ERROR = "ERROR"


TERMINAL = (Status.DONE, Status.ERROR)
STATUS_CHANNEL = "thumbnailer_image_status"
OPEN = (Status.NEW, Status.PROCESSING)


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint(
            "status IN ('NEW', 'PROCESSING', 'DONE', 'ERROR')", name="images_status_valid"
        ),
        Index("ix_images_status_updated_at", "status", "updated_at"),
        Index("ix_images_created_at_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    original_key: Mapped[str] = mapped_column(Text, nullable=False)
    original_filename: Mapped[str | None] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(String(64), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    thumbnails: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    error: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


@dataclass(frozen=True)
class NewImage:
    id: uuid.UUID
    original_key: str
    original_filename: str | None
    media_type: str
    width: int
    height: int
    size_bytes: int
    request_id: str | None


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
        update(Image)
        .where(Image.id == bindparam("image_id"), Image.status.in_(allowed))
        .values({column: bindparam(f"new_{column}") for column in columns})
        .values(updated_at=func.now())
        .returning(Image.id)
        .cte("changed")
    )
    return select(changed.c.id, func.pg_notify(STATUS_CHANNEL, cast(changed.c.id, Text)))


_INSERT = insert(Image)
_TO_PROCESSING = _transition_statement((Status.NEW,), "status")
_TO_DONE = _transition_statement(OPEN, "status", "thumbnails")
_TO_ERROR = _transition_statement(OPEN, "status", "error")


class Repo:
    """Rows of images. Every write is one short transaction; no session outlives a call."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # A single statement is its own transaction: one round trip instead of BEGIN, the
        # statement and COMMIT, and just as durable.
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

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
        }
        # Core, not the ORM: the unit of work costs more CPU than the INSERT on the upload path.
        async with self.autocommit.connect() as conn:
            await conn.execute(_INSERT, values)

    async def get(self, image_id: uuid.UUID) -> Image | None:
        async with self.sessions() as session:
            return await session.get(Image, image_id)

    async def mark_processing(self, image_id: uuid.UUID) -> bool:
        """NEW -> PROCESSING only; a worker that already finished keeps its DONE."""
        return await self._transition(_TO_PROCESSING, image_id, status=Status.PROCESSING.value)

    async def mark_done(self, image_id: uuid.UUID, thumbnails: dict[str, Any]) -> bool:
        return await self._transition(
            _TO_DONE, image_id, status=Status.DONE.value, thumbnails=thumbnails
        )

    async def mark_error(self, image_id: uuid.UUID, reason: str) -> bool:
        return await self._transition(
            _TO_ERROR, image_id, status=Status.ERROR.value, error=reason[:2000]
        )

    async def _transition(self, stmt: Select[Any], image_id: uuid.UUID, **values: Any) -> bool:
        params = {"image_id": image_id, **{f"new_{k}": v for k, v in values.items()}}
        async with self.autocommit.connect() as conn:
            return (await conn.execute(stmt, params)).first() is not None

    async def page(
        self,
        limit: int,
        status: Status | None = None,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[Image]:
        """Newest first; `after` is the (created_at, id) of the last row already seen."""
        stmt = select(Image).order_by(Image.created_at.desc(), Image.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(Image.status == status)
        if after is not None:
            stmt = stmt.where(tuple_(Image.created_at, Image.id) < tuple_(*after))
        async with self.sessions() as session:
            return list((await session.scalars(stmt)).all())

    async def claim_stale(
        self, new_after: float, processing_after: float, limit: int = 100
    ) -> list[tuple[uuid.UUID, str | None]]:
        """Rows whose job may never have reached the broker (or was lost), oldest first.

        Claiming bumps `updated_at`, a lease: another relay skips them (SKIP LOCKED now, the age
        test later) until the lease runs out, and a row whose publish fails comes round again.
        """
        now = func.now()
        stale = or_(
            and_(Image.status == Status.NEW, Image.updated_at < now - _seconds(new_after)),
            and_(
                Image.status == Status.PROCESSING,
                Image.updated_at < now - _seconds(processing_after),
            ),
        )
        pick = (
            select(Image.id)
            .where(stale)
            .order_by(Image.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(Image)
            .where(Image.id.in_(pick.scalar_subquery()))
            .values(updated_at=now)
            .returning(Image.id, Image.request_id)
        )
        async with self.sessions.begin() as session:
            return [(row.id, row.request_id) for row in await session.execute(claim)]

    async def count_by_status(self) -> dict[str, int]:
        stmt = select(Image.status, func.count()).group_by(Image.status)
        async with self.sessions() as session:
            counts = {str(status): int(n) for status, n in await session.execute(stmt)}
        return {status.value: counts.get(status.value, 0) for status in Status}

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))
        return True
