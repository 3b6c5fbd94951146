"""The end of an image's life, shared by DELETE, the retention sweep and the worker.

The row always goes first and the files after it: a crash in between leaves files no row points
at (the sweep removes them), never a row pointing at files that are gone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from thumbnailer.logging import get_logger
from thumbnailer.records import ImageRecord
from thumbnailer.store import Store, StoreError, image_prefixes

log = get_logger(__name__)


async def erase_files(store: Store, image_id: uuid.UUID, keys: Iterable[str] = ()) -> int:
    """Every file of the image: the named `keys` (its original) and its folders; how many went.

    Raises StoreError when the store fails; what is left then is the orphan sweep's.
    """
    folders = image_prefixes(str(image_id))
    singles = [key for key in keys if not any(key.startswith(f) for f in folders)]
    await asyncio.gather(*(store.delete(key) for key in singles))
    counts = await asyncio.gather(*(store.delete_prefix(folder) for folder in folders))
    return len(singles) + sum(counts)


async def erase_image_files(store: Store, row: ImageRecord) -> bool:
    """The files of a row already deleted; False (and a warning) when some were left behind."""
    try:
        await erase_files(store, row.id, [row.original_key])
    except StoreError as exc:
        log.warning("orphan_files_left", image_id=str(row.id), error=str(exc))
        return False
    return True
