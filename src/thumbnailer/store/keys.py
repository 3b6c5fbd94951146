"""The key layout, in one place: keys are built from ids we generated, never from client input."""

from __future__ import annotations

from thumbnailer.formats import EXTENSIONS

ORIGINALS = "originals/"
THUMBNAILS = "thumbnails/"
SERVED_PREFIXES = (ORIGINALS, THUMBNAILS)


def original_key(image_id: str, fmt: str) -> str:
    return f"{ORIGINALS}{image_id[:2]}/{image_id}.{EXTENSIONS[fmt]}"


def thumbnail_key(image_id: str, label: str, fmt: str) -> str:
    return f"{THUMBNAILS}{image_id[:2]}/{image_id}/{label}.{EXTENSIONS[fmt]}"
