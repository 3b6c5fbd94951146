"""Response bodies: the JSON contract front ends code against."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from thumbnailer.records import Status


class VariantIn(BaseModel):
    """POST /images/{id}/variants: what to make. Give a width, a height or both."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(None, ge=1, description="Pixels; omit to follow the height.")
    height: int | None = Field(None, ge=1, description="Pixels; omit to follow the width.")
    fit: Literal["contain", "cover", "fill"] = Field(
        "contain",
        description="contain: inside width x height, never enlarged; cover: exactly width x "
        "height, cropped around the centre; fill: exactly width x height, stretched.",
    )
    grayscale: bool = False
    format: Literal["jpeg", "png", "webp", "avif"] = "jpeg"
    quality: int | None = Field(
        None, ge=1, le=100, description="Encoder quality (not for png); 80 when omitted."
    )


class VariantOut(BaseModel):
    id: uuid.UUID
    image_id: uuid.UUID
    status: Status
    spec: dict[str, Any] = Field(description="The normalised spec the id was derived from.")
    url: str | None = Field(None, description="The variant's file; null until DONE.")
    width: int | None = None
    height: int | None = None
    media_type: str | None = None
    error: str | None = Field(None, description="Why it could not be made, when ERROR.")
    created_at: datetime
    updated_at: datetime


class VariantAccepted(BaseModel):
    id: uuid.UUID
    status: Status
    location: str = Field(examples=["/images/ID/variants/VARIANT_ID"])


class UploadAccepted(BaseModel):
    id: uuid.UUID
    status: Status
    message: str = Field(examples=["Image accepted; poll the Location URL for thumbnails."])
    variant: VariantAccepted | None = Field(
        None, description="The variant the form's `transformations` asked for, if any."
    )


class Rendition(BaseModel):
    """One thumbnail with what a page needs before it loads: its size (no layout shift)."""

    label: str = Field(examples=["300x300"])
    url: str
    width: int
    height: int
    media_type: str = Field(examples=["image/jpeg"])
    bytes: int | None = Field(None, description="File size; null for images made before 0.2.")


class PlaceholderOut(BaseModel):
    """What to paint before the thumbnails load: a BlurHash and the dominant colour."""

    hash: str = Field(description="BlurHash (https://blurha.sh) of the image.")
    color: str = Field(pattern=r"^#[0-9a-f]{6}$", examples=["#c85028"])
    aspect_ratio: float = Field(description="Width / height as displayed.", examples=[1.5])


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
    renditions: list[Rendition] = Field(
        default_factory=list, description="The thumbnails, smallest first; empty until DONE."
    )
    srcset: str | None = Field(
        None,
        description="`<url> <width>w, ...` of the renditions, for `<img srcset>`; null until DONE.",
    )
    placeholder: PlaceholderOut | None = Field(
        None, description="Null until DONE, and for images made before placeholders existed."
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
    variants: list[VariantOut] | None = Field(
        None, description="The image's variants, oldest first (GET /images/{id} only)."
    )


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
