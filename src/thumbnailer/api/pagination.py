"""Opaque keyset cursors for listing newest first: (created_at, id) of the last row seen."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from thumbnailer.api import errors
from thumbnailer.records import ImageRecord


def encode_cursor(row: ImageRecord) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, image_id = raw.split("|")
        return datetime.fromisoformat(created), uuid.UUID(image_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.INVALID_CURSOR from exc
