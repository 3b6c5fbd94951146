"""What the repo hands out: statuses and frozen records, free of any database type."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class Status(enum.StrEnum):
    NEW = "NEW"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    ERROR = "ERROR"


TERMINAL = frozenset({Status.DONE, Status.ERROR})
OPEN = (Status.NEW, Status.PROCESSING)


@dataclass(frozen=True)
class ThumbnailEntry:
    key: str
    width: int
    height: int
    media_type: str
    bytes: int | None = None  # size of the encoded file; None for rows written before it was kept

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "key": self.key,
            "width": self.width,
            "height": self.height,
            "media_type": self.media_type,
        }
        if self.bytes is not None:
            value["bytes"] = self.bytes
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ThumbnailEntry:
        return cls(
            key=str(value["key"]),
            width=int(value["width"]),
            height=int(value["height"]),
            media_type=str(value["media_type"]),
            bytes=int(value["bytes"]) if value.get("bytes") is not None else None,
        )


@dataclass(frozen=True)
class Placeholder:
    """What a page shows until a thumbnail loads (thumbnailer.placeholder makes it)."""

    hash: str  # BlurHash
    color: str  # dominant colour, "#rrggbb"
    aspect_ratio: float  # width / height as displayed

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "color": self.color, "aspect_ratio": self.aspect_ratio}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Placeholder:
        return cls(str(value["hash"]), str(value["color"]), float(value["aspect_ratio"]))


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
    owner: str | None = None  # the uploader's token subject; None in AUTH_MODE=none
    callback_url: str | None = None  # POSTed the status once the image is DONE or ERROR


@dataclass(frozen=True)
class NewSource:
    """An image to be fetched from a URL: a row before its bytes exist."""

    id: uuid.UUID
    source_url: str
    request_id: str | None
    owner: str | None = None
    callback_url: str | None = None


@dataclass(frozen=True)
class Original:
    """What the probe of fetched bytes found, filled into a row made from a URL."""

    key: str
    filename: str | None
    media_type: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class ImageRecord:
    id: uuid.UUID
    status: Status
    original_key: str | None  # None (like the sizes) until a URL's bytes are fetched
    original_filename: str | None
    media_type: str | None
    width: int | None
    height: int | None
    size_bytes: int | None
    thumbnails: Mapping[str, ThumbnailEntry]
    error: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    source_url: str | None = None
    callback_url: str | None = None
    placeholder: Placeholder | None = None

    @property
    def awaiting_fetch(self) -> bool:
        return self.original_key is None and self.source_url is not None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class VariantRecord:
    id: uuid.UUID
    image_id: uuid.UUID
    status: Status
    spec: Mapping[str, Any]  # the normalised spec, as variant_spec.VariantSpec.to_json gives it
    key: str | None
    width: int | None
    height: int | None
    media_type: str | None
    error: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL
