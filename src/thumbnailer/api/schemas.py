"""Response bodies: the JSON contract front ends code against."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from thumbnailer.records import Status


class UploadAccepted(BaseModel):
    id: uuid.UUID
    status: Status
    message: str = Field(examples=["Image accepted; poll the Location URL for thumbnails."])


class ImageOut(BaseModel):
    id: uuid.UUID
    status: Status
    original_url: str | None = Field(
        description="The stored original; null while an image given by URL is being fetched."
    )
    thumbnails: dict[str, str | None] = Field(
        description="URL per box label (e.g. `300x300`); null until the image is DONE.",
        examples=[{"100x100": "http://host/files/thumbnails/ab/id/100x100.jpg"}],
    )
    error: str | None = Field(None, description="Why processing failed, when status is ERROR.")
    filename: str | None = Field(None, description="The client's file name, for display only.")
    media_type: str | None
    width: int | None
    height: int | None
    size_bytes: int | None
    source_url: str | None = Field(None, description="The URL an image was fetched from.")
    created_at: datetime
    updated_at: datetime


class HealthOut(BaseModel):
    status: Literal["healthy", "unhealthy"]
    services: dict[str, bool]
    timestamp: datetime


class ProbeOut(BaseModel):
    status: Literal["ok", "unavailable"]


class ImagePage(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )
