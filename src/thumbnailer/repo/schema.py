"""The `images` table. Alembic owns the schema; this mirrors it for queries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from thumbnailer.records import Status

STATUS_CHANNEL = "thumbnailer_image_status"
STATUS_NAMES = ", ".join(f"'{status.value}'" for status in Status)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint(f"status IN ({STATUS_NAMES})", name="images_status_valid"),
        Index("ix_images_status_updated_at", "status", "updated_at"),
        Index("ix_images_created_at_id", "created_at", "id"),
        Index("ix_images_owner_created_at_id", "owner", "created_at", "id"),
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
    # {"hash", "color", "aspect_ratio"}, written with DONE (migration 0006); NULL before that.
    placeholder: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    request_id: Mapped[str | None] = mapped_column(String(128))
    # Token subject of the uploader (AUTH_MODE=jwt); NULL for rows from before, or from none mode.
    owner: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
