"""Rows of images: every status change a conditional UPDATE, every read a frozen record.

Driver failures leave this module as `RepoUnavailable` only, so no caller needs to know which
database library sits underneath.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Select,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, array
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from thumbnailer.records import (
    OPEN,
    ImageRecord,
    NewImage,
    NewSource,
    Original,
    Placeholder,
    Status,
    ThumbnailEntry,
)
from thumbnailer.repo.schema import STATUS_CHANNEL, ImageRow

if TYPE_CHECKING:
    from thumbnailer.repo.variants import VariantRepo


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
_ATTACH = (
    update(ImageRow)
    .where(
        ImageRow.id == bindparam("image_id"),
        ImageRow.status.in_(OPEN),
        ImageRow.original_key.is_(None),
    )
    .values(
        original_key=bindparam("key"),
        original_filename=func.coalesce(ImageRow.original_filename, bindparam("filename")),
        media_type=bindparam("media_type"),
        width=bindparam("width"),
        height=bindparam("height"),
        size_bytes=bindparam("size_bytes"),
        updated_at=func.now(),
    )
    .returning(ImageRow.id)
)
_RESTART = _transition_statement((Status.ERROR,), "status", "error")
# Thumbnails made again: the new set replaces the old in one statement (readers see one or the
# other), and the old set comes back so the caller can remove the files only it named.
_REPLACE_THUMBNAILS = text("""
    WITH old AS (
        SELECT id, thumbnails FROM images
        WHERE id = :image_id AND status IN ('NEW', 'PROCESSING', 'DONE') FOR UPDATE
    ), changed AS (
        UPDATE images SET status = 'DONE', thumbnails = :thumbnails, error = NULL,
                          updated_at = now()
        FROM old WHERE images.id = old.id
        RETURNING images.id, old.thumbnails AS previous
    )
    SELECT previous, pg_notify(:channel, CAST(id AS text)) FROM changed
    """).bindparams(bindparam("thumbnails", type_=JSONB), bindparam("channel", STATUS_CHANNEL))
_EXISTS = select(exists().where(ImageRow.id == bindparam("image_id")))


def _delete_statement(by_owner: bool) -> Select[Any]:
    """DELETE ... RETURNING the row, with a NOTIFY so long-polls wake to their 404 at once."""
    condition = ImageRow.id == bindparam("image_id")
    if by_owner:
        condition = and_(condition, ImageRow.owner == bindparam("owner"))
    gone = delete(ImageRow).where(condition).returning(*_COLUMNS).cte("gone")
    return select(*gone.c, func.pg_notify(STATUS_CHANNEL, cast(gone.c.id, Text)))


_DELETE_ANY = _delete_statement(by_owner=False)
_DELETE_OWNED = _delete_statement(by_owner=True)


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
        source_url=values["source_url"],
        callback_url=values["callback_url"],
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

    @functools.cached_property
    def variants(self) -> VariantRepo:
        """The variants' rows, on the same engine (the module imports this one's helpers)."""
        from thumbnailer.repo.variants import VariantRepo

        return VariantRepo(self.engine, self.autocommit)

    @classmethod
    def connect(cls, database_url: str, pool_size: int = 10) -> Repo:
        return cls(create_engine(database_url, pool_size))

    async def close(self) -> None:
        await self.engine.dispose()

    def _autocommit(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _translating(self.autocommit.connect())

    def _transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _translating(self.engine.begin())

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """One autocommit connection, for the other tables' modules in this package."""
        return self._autocommit()

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._transaction()

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
            "callback_url": new.callback_url,
        }
        # Core, not the ORM: the unit of work costs more CPU than the INSERT on the upload path.
        async with self._autocommit() as conn:
            await conn.execute(_INSERT, values)

    async def add_source(self, new: NewSource) -> None:
        """A row for an image still to be fetched from `source_url`; the fetch fills it in."""
        values = {
            "id": new.id,
            "status": Status.NEW.value,
            "source_url": new.source_url,
            "request_id": new.request_id,
            "owner": new.owner,
            "callback_url": new.callback_url,
        }
        async with self._autocommit() as conn:
            await conn.execute(_INSERT, values)

    async def attach_original(self, image_id: uuid.UUID, original: Original) -> bool:
        """The fetched bytes' key and probe, once: a row already holding an original keeps it."""
        params = {
            "image_id": image_id,
            "key": original.key,
            "filename": original.filename,
            "media_type": original.media_type,
            "width": original.width,
            "height": original.height,
            "size_bytes": original.size_bytes,
        }
        async with self._autocommit() as conn:
            return (await conn.execute(_ATTACH, params)).first() is not None

    async def get(self, image_id: uuid.UUID) -> ImageRecord | None:
        async with self._autocommit() as conn:
            row = (await conn.execute(_GET, {"image_id": image_id})).first()
        return _record(row) if row is not None else None

    async def exists(self, image_id: uuid.UUID) -> bool:
        async with self._autocommit() as conn:
            return bool((await conn.execute(_EXISTS, {"image_id": image_id})).scalar())

    async def delete(self, image_id: uuid.UUID, owner: str | None = None) -> ImageRecord | None:
        """Remove the row (only `owner`'s, when given); the record that was, None if none was.

        Rows of other tables about the image (variants...) go with it (ON DELETE CASCADE).
        """
        params: dict[str, object] = {"image_id": image_id}
        stmt = _DELETE_ANY
        if owner is not None:
            stmt, params = _DELETE_OWNED, {**params, "owner": owner}
        async with self._autocommit() as conn:
            row = (await conn.execute(stmt, params)).first()
        return _record(row) if row is not None else None

    async def delete_expired(
        self, older_than_days: float, error_older_than_days: float, limit: int
    ) -> list[ImageRecord]:
        """One batch of rows past retention, deleted; the records that were, oldest first.

        Past `older_than_days` since upload, or ERROR for `error_older_than_days` since it
        failed (0 turns either off). SKIP LOCKED and RETURNING: of two callers at once, each row
        goes to exactly one.
        """
        now = func.now()
        expired = []
        if older_than_days > 0:
            expired.append(ImageRow.created_at < now - _seconds(older_than_days * 86400))
        if error_older_than_days > 0:
            expired.append(
                and_(
                    ImageRow.status == Status.ERROR.value,
                    ImageRow.updated_at < now - _seconds(error_older_than_days * 86400),
                )
            )
        if not expired:
            return []
        pick = (
            select(ImageRow.id)
            .where(or_(*expired))
            .order_by(ImageRow.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = delete(ImageRow).where(ImageRow.id.in_(pick.scalar_subquery())).returning(*_COLUMNS)
        async with self._transaction() as conn:
            return [_record(row) for row in await conn.execute(stmt)]

    async def without_rows(self, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of `ids` no row has: their files are orphans."""
        wanted = set(ids)
        if not wanted:
            return set()
        stmt = select(ImageRow.id).where(ImageRow.id.in_(list(wanted)))
        async with self._autocommit() as conn:
            found = {row.id for row in await conn.execute(stmt)}
        return wanted - found

    @asynccontextmanager
    async def exclusive(self, lock_id: int) -> AsyncIterator[bool]:
        """A PostgreSQL advisory lock across every process on the database, if free: True
        inside when this caller holds it. A session lock on a connection held meanwhile, so a
        process that dies releases it with its connection."""
        conn = self.autocommit.connect()
        try:
            await conn.start()
        except (SQLAlchemyError, OSError) as exc:
            raise RepoUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            held = bool((await conn.execute(select(func.pg_try_advisory_lock(lock_id)))).scalar())
        except (SQLAlchemyError, OSError) as exc:
            await conn.close()
            raise RepoUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            yield held
        finally:
            with suppress(SQLAlchemyError, OSError):  # a lost connection released it anyway
                if held:
                    await conn.execute(select(func.pg_advisory_unlock(lock_id)))
            await conn.close()

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

    async def replace_thumbnails(
        self, image_id: uuid.UUID, thumbnails: Mapping[str, ThumbnailEntry]
    ) -> dict[str, ThumbnailEntry] | None:
        """Thumbnails made again: the row is DONE with these; the set it had before comes
        back. None when no row could take them (deleted, or ERROR meanwhile)."""
        as_json = {label: entry.to_json() for label, entry in thumbnails.items()}
        async with self._autocommit() as conn:
            found = (
                await conn.execute(
                    _REPLACE_THUMBNAILS, {"image_id": image_id, "thumbnails": as_json}
                )
            ).first()
        if found is None:
            return None
        return {label: ThumbnailEntry.from_json(entry) for label, entry in (found[0] or {}).items()}

    async def reprocess_candidates(
        self,
        statuses: tuple[Status, ...],
        limit: int,
        after: tuple[datetime, uuid.UUID] | None = None,
        older_than: float | None = None,
        lacking: tuple[str, ...] = (),
    ) -> list[ImageRecord]:
        """Oldest first from `after` (created_at, id): rows in `statuses`, uploaded more than
        `older_than` seconds ago, whose thumbnails lack one of the labels in `lacking`."""
        stmt = select(*_COLUMNS).where(ImageRow.status.in_([s.value for s in statuses]))
        if after is not None:
            stmt = stmt.where(tuple_(ImageRow.created_at, ImageRow.id) > tuple_(*after))
        if older_than is not None:
            stmt = stmt.where(ImageRow.created_at < func.now() - _seconds(older_than))
        if lacking:
            stmt = stmt.where(~ImageRow.thumbnails.has_all(array(lacking)))
        stmt = stmt.order_by(ImageRow.created_at, ImageRow.id).limit(limit)
        async with self._autocommit() as conn:
            return [_record(row) for row in await conn.execute(stmt)]

    async def mark_error(self, image_id: uuid.UUID, reason: str) -> bool:
        return await self._transition(
            _TO_ERROR, image_id, status=Status.ERROR.value, error=reason[:2000]
        )

    async def reopen(self, image_id: uuid.UUID) -> bool:
        """ERROR -> PROCESSING, for a job an operator sends round again."""
        return await self._transition(_REOPEN, image_id, status=Status.PROCESSING.value, error=None)

    async def restart(self, image_id: uuid.UUID) -> bool:
        """ERROR -> NEW, for an image sent round again: from here on it goes as an upload does
        (published, then PROCESSING; left NEW for the relay when the publish fails)."""
        return await self._transition(_RESTART, image_id, status=Status.NEW.value, error=None)

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
    ) -> list[tuple[uuid.UUID, str | None, bool]]:
        """Rows whose job may never have reached the broker (or was lost), oldest first:
        (id, request_id, whether its bytes are still to be fetched from its URL).

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
            .returning(ImageRow.id, ImageRow.request_id, ImageRow.original_key.is_(None))
        )
        async with self._transaction() as conn:
            return [(row[0], row[1], bool(row[2])) for row in await conn.execute(claim)]

    async def count_by_status(self) -> dict[str, int]:
        stmt = select(ImageRow.status, func.count()).group_by(ImageRow.status)
        async with self._autocommit() as conn:
            counts = {str(status): int(n) for status, n in await conn.execute(stmt)}
        return {status.value: counts.get(status.value, 0) for status in Status}

    async def ping(self) -> bool:
        async with self._autocommit() as conn:
            await conn.execute(select(1))
        return True
