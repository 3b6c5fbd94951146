"""Records to the JSON contract: URLs from the store, ETags, polling headers."""

from __future__ import annotations

import hashlib

from thumbnailer.api.schemas import ImageOut, PlaceholderOut, Rendition
from thumbnailer.records import ImageRecord, Status
from thumbnailer.store import Store


def present(row: ImageRecord, base: str, boxes: list[tuple[int, int]], store: Store) -> ImageOut:
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
        original_url=store.url(row.original_key, base),
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


def etag(row: ImageRecord, base: str, store: Store) -> str:
    """Changes whenever the JSON would: status and update time, and the URLs handed out.

    The original's URL stands for all of them: it carries the base and, for private files, the
    signature window, so a client never keeps a 304'd copy whose URLs have expired.
    """
    seed = f"{row.status}|{row.updated_at.isoformat()}|{store.url(row.original_key, base)}"
    return f'W/"{hashlib.blake2b(seed.encode(), digest_size=10).hexdigest()}"'


def poll_headers(row: ImageRecord, base: str, store: Store) -> dict[str, str]:
    headers = {"ETag": etag(row, base, store), "Cache-Control": "no-cache"}
    if not row.finished:
        headers["Retry-After"] = "1"
    return headers
