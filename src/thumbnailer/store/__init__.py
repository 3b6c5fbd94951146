"""Storage of originals and thumbnails behind the `Store` protocol."""

from thumbnailer.config import Settings
from thumbnailer.store.base import Store, StoreError
from thumbnailer.store.keys import original_key, thumbnail_key
from thumbnailer.store.local import LocalStore
from thumbnailer.store.signing import UrlSigner


def open_store(settings: Settings) -> Store:
    """The store the settings name (only local disk so far); private URLs in jwt mode."""
    signer = None
    if settings.auth_mode == "jwt":
        signer = UrlSigner(settings.url_signing_key, settings.signed_url_ttl)
    return LocalStore(settings.storage_path, signer)


__all__ = [
    "LocalStore",
    "Store",
    "StoreError",
    "UrlSigner",
    "open_store",
    "original_key",
    "thumbnail_key",
]
