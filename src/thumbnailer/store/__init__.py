"""Storage of originals and thumbnails behind the `Store` protocol."""

from thumbnailer.config import Settings
from thumbnailer.store.base import Store, StoreError
from thumbnailer.store.keys import original_key, thumbnail_key
from thumbnailer.store.local import LocalStore


def open_store(settings: Settings) -> Store:
    """The store the settings name (only local disk so far)."""
    return LocalStore(settings.storage_path)


__all__ = ["LocalStore", "Store", "StoreError", "open_store", "original_key", "thumbnail_key"]
