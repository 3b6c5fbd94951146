"""The key layout, in one place: keys are built from ids we generated, never from client input."""

from __future__ import annotations

from thumbnailer.formats import EXTENSIONS

ORIGINALS = "originals/"
THUMBNAILS = "thumbnails/"
VARIANTS = "variants/"
SERVED_PREFIXES = (ORIGINALS, THUMBNAILS, VARIANTS)


def original_key(image_id: str, fmt: str) -> str:
    return f"{ORIGINALS}{image_id[:2]}/{image_id}.{EXTENSIONS[fmt]}"


def thumbnail_key(image_id: str, label: str, fmt: str) -> str:
    return f"{THUMBNAILS}{image_id[:2]}/{image_id}/{label}.{EXTENSIONS[fmt]}"


def variant_prefix(image_id: str) -> str:
    """Every variant file of one image lies under this prefix: deleting it deletes them all."""
    return f"{VARIANTS}{image_id[:2]}/{image_id}/"


def variant_key(image_id: str, variant_id: str, fmt: str) -> str:
    return f"{variant_prefix(image_id)}{variant_id}.{EXTENSIONS[fmt]}"
