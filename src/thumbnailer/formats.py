"""The image formats we accept and write: one table, read by imaging, keys and file serving."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # Pillow's format name
    media_type: str
    extension: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("JPEG", "image/jpeg", "jpg"),
        Format("PNG", "image/png", "png"),
        Format("WEBP", "image/webp", "webp"),
        Format("GIF", "image/gif", "gif"),
        Format("AVIF", "image/avif", "avif"),
        # HEIC (HEVC in HEIF) is what phones write; read only, never written.
        Format("HEIF", "image/heic", "heic"),
    )
}
MEDIA_TYPES = {name: f.media_type for name, f in FORMATS.items()}
EXTENSIONS = {name: f.extension for name, f in FORMATS.items()}
MEDIA_TYPE_BY_EXTENSION = {f".{f.extension}": f.media_type for f in FORMATS.values()}
ACCEPTED = ", ".join({"WEBP": "WebP", "HEIF": "HEIC/HEIF"}.get(name, name) for name in FORMATS)
