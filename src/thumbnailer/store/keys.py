"""The key layout, in one place: keys are built from ids we generated, never from client input."""

from __future__ import annotations

import uuid

from thumbnailer.formats import EXTENSIONS

ORIGINALS = "originals/"
THUMBNAILS = "thumbnails/"
VARIANTS = "variants/"
SERVED_PREFIXES = (ORIGINALS, THUMBNAILS, VARIANTS)
# Every top-level folder that holds files of images, laid out `<root><id[:2]>/<id>...`.
# Deleting an image and the orphan sweep cover each: a new kind of file adds its root here.
IMAGE_ROOTS = (ORIGINALS, THUMBNAILS, VARIANTS)


def original_key(image_id: str, fmt: str) -> str:
    return f"{ORIGINALS}{image_id[:2]}/{image_id}.{EXTENSIONS[fmt]}"


def thumbnail_key(image_id: str, label: str, fmt: str) -> str:
    return f"{THUMBNAILS}{image_id[:2]}/{image_id}/{label}.{EXTENSIONS[fmt]}"


def variant_prefix(image_id: str) -> str:
    """Every variant file of one image lies under this prefix: deleting it deletes them all."""
    return f"{VARIANTS}{image_id[:2]}/{image_id}/"


def variant_key(image_id: str, variant_id: str, fmt: str) -> str:
    return f"{variant_prefix(image_id)}{variant_id}.{EXTENSIONS[fmt]}"


def thumbnail_generation_key(image_id: str, generation: str, label: str, fmt: str) -> str:
    """Thumbnails made again live under a folder of their own: a URL never changes content."""
    return f"{THUMBNAILS}{image_id[:2]}/{image_id}/{generation}/{label}.{EXTENSIONS[fmt]}"


def image_prefixes(image_id: str) -> list[str]:
    """The folders holding the image's files besides its original (a key of its own)."""
    return [f"{root}{image_id[:2]}/{image_id}/" for root in IMAGE_ROOTS]


def image_id_of(key: str) -> uuid.UUID | None:
    """The image a key under one of IMAGE_ROOTS belongs to; None for any other key."""
    parts = key.split("/")
    if len(parts) < 3 or f"{parts[0]}/" not in IMAGE_ROOTS:
        return None
    try:
        found = uuid.UUID(parts[2].split(".", 1)[0])
    except ValueError:
        return None
    return found if str(found)[:2] == parts[1] else None
