"""Records to the JSON contract: URLs from the store, ETags, polling headers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from thumbnailer.api.schemas import ImageOut, PlaceholderOut, Rendition, VariantOut
from thumbnailer.records import ImageRecord, Status, VariantRecord
from thumbnailer.store import Store


def present(
    row: ImageRecord,
    base: str,
    boxes: list[tuple[int, int]],
    store: Store,
    variants: Sequence[VariantRecord] | None = None,
) -> ImageOut:
    """The status JSON; `variants` None (lists of images) leaves them out as null."""
    done = row.status == Status.DONE
    thumbnails: dict[str, str | None] = {}
    for width, height in sorted(boxes):
        label = f"{width}x{height}"
        entry = row.thumbnails.get(label)
        thumbnails[label] = store.url(entry.key, base) if done and entry else None
    renditions = _renditions(row, base, store) if done else []
    return ImageOut(
        id=row.id,
        status=row.status,
        original_url=store.url(row.original_key, base) if row.original_key else None,
        source_url=row.source_url,
        thumbnails=thumbnails,
        renditions=renditions,
        srcset=srcset(renditions) if renditions else None,
        placeholder=PlaceholderOut(**row.placeholder.to_json()) if row.placeholder else None,
        error=row.error,
        filename=row.original_filename,
        media_type=row.media_type,
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        updated_at=row.updated_at,
        variants=None if variants is None else present_variants(variants, base, store),
    )


def _renditions(row: ImageRecord, base: str, store: Store) -> list[Rendition]:
    """Every stored thumbnail, smallest first (the order srcset candidates are usually read)."""
    entries = sorted(row.thumbnails.items(), key=lambda item: (item[1].width, item[1].height))
    return [
        Rendition(
            label=label,
            url=store.url(entry.key, base),
            width=entry.width,
            height=entry.height,
            media_type=entry.media_type,
            bytes=entry.bytes,
        )
        for label, entry in entries
    ]


def srcset(renditions: list[Rendition]) -> str:
    """`<url> <width>w, ...`; a width two renditions share (a small original) is given once."""
    seen: set[int] = set()
    candidates = []
    for rendition in renditions:
        if rendition.width not in seen:
            seen.add(rendition.width)
            candidates.append(f"{rendition.url} {rendition.width}w")
    return ", ".join(candidates)


def present_variant(variant: VariantRecord, base: str, store: Store) -> VariantOut:
    done = variant.status == Status.DONE and variant.key is not None
    return VariantOut(
        id=variant.id,
        image_id=variant.image_id,
        status=variant.status,
        spec=dict(variant.spec),
        url=store.url(variant.key, base) if done and variant.key else None,
        width=variant.width if done else None,
        height=variant.height if done else None,
        media_type=variant.media_type if done else None,
        error=variant.error,
        created_at=variant.created_at,
        updated_at=variant.updated_at,
    )


def present_variants(
    variants: Sequence[VariantRecord], base: str, store: Store
) -> list[VariantOut]:
    return [present_variant(variant, base, store) for variant in variants]


def etag(row: ImageRecord, base: str, store: Store, variants: Sequence[VariantRecord] = ()) -> str:
    """Changes whenever the JSON would: status and update time, the variants' too, and the URLs
    handed out.

    The original's URL stands for all of them: it carries the base and, for private files, the
    signature window, so a client never keeps a 304'd copy whose URLs have expired.
    """
    original = store.url(row.original_key, base) if row.original_key else ""
    seed = f"{row.status}|{row.updated_at.isoformat()}|{original}"
    for variant in variants:
        seed += f"|{variant.id}:{variant.status}:{variant.updated_at.isoformat()}"
    return f'W/"{hashlib.blake2b(seed.encode(), digest_size=10).hexdigest()}"'


def poll_headers(
    row: ImageRecord, base: str, store: Store, variants: Sequence[VariantRecord] = ()
) -> dict[str, str]:
    headers = {"ETag": etag(row, base, store, variants), "Cache-Control": "no-cache"}
    if not row.finished:
        headers["Retry-After"] = "1"
    return headers
