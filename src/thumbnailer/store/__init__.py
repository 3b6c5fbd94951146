"""Storage of originals and thumbnails behind the `Store` protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thumbnailer.config import Settings
from thumbnailer.store.base import ObjectMissing, Store, StoredObject, StoreError
from thumbnailer.store.keys import (
    image_prefixes,
    original_key,
    thumbnail_key,
    variant_key,
    variant_prefix,
)
from thumbnailer.store.local import LocalStore
from thumbnailer.store.signing import UrlSigner

if TYPE_CHECKING:  # obstore is imported only by deployments that use the bucket
    from thumbnailer.store.s3 import S3Store


def open_store(settings: Settings) -> Store:
    """The store STORAGE_BACKEND names; call `await store.open()` before use, `close()` after.

    In jwt mode files are private: local URLs are signed, bucket URLs presigned (both expire).
    """
    if settings.storage_backend == "s3":
        return s3_store(settings)
    signer = None
    if settings.auth_mode == "jwt":
        signer = UrlSigner(settings.url_signing_key, settings.signed_url_ttl)
    return LocalStore(settings.storage_path, signer)


def s3_store(settings: Settings) -> S3Store:
    from thumbnailer.store.s3 import S3Store

    return S3Store(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        prefix=settings.s3_prefix,
        addressing_style=settings.s3_addressing_style,
        public_base_url=settings.s3_public_base_url,
        signed_url_ttl=settings.signed_url_ttl,
    )


__all__ = [
    "LocalStore",
    "ObjectMissing",
    "Store",
    "StoreError",
    "StoredObject",
    "UrlSigner",
    "image_prefixes",
    "open_store",
    "original_key",
    "s3_store",
    "thumbnail_key",
    "variant_key",
    "variant_prefix",
]
