"""An S3-compatible bucket as a Store, through obstore (Rust object_store; see bench/s3_clients.py).

Every request runs on obstore's own Rust runtime and is awaited here, so nothing blocks the
event loop. Credentials come from the standard AWS chain as obstore reads it: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), web identity (AWS_WEB_IDENTITY_TOKEN_FILE and
AWS_ROLE_ARN: EKS IRSA), ECS task roles, then the EC2 instance profile.

Objects are written with their Content-Type and an immutable Cache-Control (keys never change
content); S3 puts are atomic, so readers see the old object or the whole new one. Clients get
presigned GET URLs (or plain ones under S3_PUBLIC_BASE_URL), and /files/{key} answers 307 to the
same URL, so URLs handed out by a local-disk deployment keep working after a move.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store as ObstoreS3
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp

from thumbnailer.formats import MEDIA_TYPE_BY_EXTENSION
from thumbnailer.logging import get_logger
from thumbnailer.store.base import ObjectMissing, StoredObject, StoreError, check_folder
from thumbnailer.store.keys import SERVED_PREFIXES
from thumbnailer.store.local_files import IMMUTABLE
from thumbnailer.store.signing import expiry as expires_at

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = get_logger(__name__)

# Uploads above this go up in parts of this size (S3's smallest part is 5 MiB).
MULTIPART_THRESHOLD = 8 * 1024 * 1024
# Presigned URLs kept per process, so the same object gets the same URL within a window.
SIGNED_CACHE_SIZE = 8192
# The health check lists this (empty) prefix: one small request that needs the bucket and the
# credentials to work, and that stays cheap however many objects the bucket holds.
HEALTH_PREFIX = "health-probe/"
# Keys per DeleteObjects request (S3's own maximum).
DELETE_BATCH = 1000
# How often the credentials are renewed off the request path (see `_keep_credentials_warm`).
CREDENTIAL_REFRESH_SECONDS = 60.0
_FAILURES: tuple[type[BaseException], ...] = (BaseError, OSError, TimeoutError)
# obstore raises the builtin for a missing object (its NotFoundError is deprecated).
_MISSING = FileNotFoundError

AddressingStyle = Literal["auto", "path", "virtual"]


def brief(exc: BaseException) -> str:
    """obstore's first line (its messages go on with a debug dump of the whole request)."""
    first = str(exc).strip().split("\n", 1)[0]
    return first[:300] or type(exc).__name__


def normalized_prefix(prefix: str) -> str:
    """'a/b', '/a/b/' -> 'a/b/'; '' stays ''."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


def uses_virtual_host(style: AddressingStyle, endpoint_url: str) -> bool:
    """auto: virtual-hosted on AWS (its default), path style on a custom endpoint (MinIO...)."""
    if style == "auto":
        return not endpoint_url
    return style == "virtual"


def _with_bucket_host(endpoint_url: str, bucket: str) -> str:
    parts = urlsplit(endpoint_url)
    return urlunsplit(parts._replace(netloc=f"{bucket}.{parts.netloc}"))


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str = "",
        region: str = "us-east-1",
        prefix: str = "",
        addressing_style: AddressingStyle = "auto",
        public_base_url: str = "",
        signed_url_ttl: int = 3600,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.prefix = normalized_prefix(prefix)
        self.public_base_url = public_base_url.rstrip("/")
        self.signed_url_ttl = signed_url_ttl
        self.multipart_threshold = multipart_threshold
        self._clock = clock
        self._signed: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._warmer: asyncio.Task[None] | None = None
        virtual = uses_virtual_host(addressing_style, endpoint_url)
        config: S3Config = {"region": region, "virtual_hosted_style_request": virtual}
        if endpoint_url:
            endpoint = _with_bucket_host(endpoint_url, bucket) if virtual else endpoint_url
            config["endpoint"] = endpoint.rstrip("/")
        client: ClientConfig = {
            "connect_timeout": timedelta(seconds=3),
            "timeout": timedelta(seconds=30),
            "allow_http": endpoint_url.startswith("http://"),
        }
        # Few, quick retries: a request that still fails is a StoreError, which the API answers
        # with 503 and the worker retries with its own back-off, so nothing waits for minutes.
        retry: RetryConfig = {
            "max_retries": 2,
            "retry_timeout": timedelta(seconds=8),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        self._store = ObstoreS3(
            bucket,
            prefix=self.prefix.rstrip("/") or None,
            config=config,
            client_options=client,
            retry_config=retry,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        if not self.public_base_url and self._warmer is None:
            self._warmer = asyncio.create_task(self._keep_credentials_warm())

    async def close(self) -> None:
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer
            self._warmer = None

    async def _keep_credentials_warm(self) -> None:
        """Sign once a minute from here, asynchronously.

        `url()` is synchronous and signs with obstore's cached credentials. Static keys never
        expire; temporary ones (web identity, instance profile) are renewed by obstore a few
        minutes before they expire, on the first signature after that point. Signing here every
        minute makes that first signature this task's, so `url()` never waits on a renewal.
        """
        while True:
            try:
                await obstore.sign_async(
                    self._store, "GET", HEALTH_PREFIX + "warm", timedelta(seconds=60)
                )
            except _FAILURES as exc:
                log.warning("storage_credentials_unavailable", error=brief(exc))
            await asyncio.sleep(CREDENTIAL_REFRESH_SECONDS)

    # --- objects --------------------------------------------------------------------------------

    def _attributes(self, media_type: str) -> dict[str, str]:
        return {"Content-Type": media_type, "Cache-Control": IMMUTABLE}

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        try:
            await obstore.put_async(
                self._store, key, data, attributes=self._attributes(media_type), use_multipart=False
            )
        except _FAILURES as exc:
            raise StoreError(f"could not write {key}: {brief(exc)}") from exc

    async def put_file(self, key: str, path: Path, media_type: str) -> None:
        try:
            await self.upload(key, path, media_type)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.remove, path)

    async def upload(self, key: str, path: Path, media_type: str) -> None:
        """Upload a local file, leaving it in place; in parts when it is over the threshold."""
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            await obstore.put_async(
                self._store,
                key,
                path,
                attributes=self._attributes(media_type),
                use_multipart=size > self.multipart_threshold,
                chunk_size=self.multipart_threshold,
                max_concurrency=4,
            )
        except _FAILURES as exc:
            raise StoreError(f"could not store {key}: {brief(exc)}") from exc

    async def read(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except _MISSING as exc:
            raise ObjectMissing(f"could not read {key}: {brief(exc)}") from exc
        except _FAILURES as exc:
            raise StoreError(f"could not read {key}: {brief(exc)}") from exc

    async def stat(self, key: str) -> tuple[int, str | None] | None:
        """(size, ETag) of the object, None when there is none."""
        try:
            meta = await obstore.head_async(self._store, key)
        except _MISSING:
            return None
        except _FAILURES as exc:
            raise StoreError(f"could not look up {key}: {brief(exc)}") from exc
        return meta["size"], meta["e_tag"]

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._store, key)
        except _MISSING:
            pass
        except _FAILURES as exc:
            raise StoreError(f"could not delete {key}: {brief(exc)}") from exc

    async def delete_prefix(self, prefix: str) -> int:
        removed = 0
        batch: list[str] = []
        async for found in self.list_objects(prefix):
            batch.append(found.key)
            if len(batch) >= DELETE_BATCH:
                removed += await self._delete_many(batch)
                batch = []
        if batch:
            removed += await self._delete_many(batch)
        return removed

    async def _delete_many(self, keys: list[str]) -> int:
        """One DeleteObjects request per batch (up to 1000 keys) instead of one per object."""
        try:
            await obstore.delete_async(self._store, keys)
        except _FAILURES as exc:
            raise StoreError(f"could not delete {keys[0]} and others: {brief(exc)}") from exc
        return len(keys)

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        check_folder(prefix)
        try:
            async for chunk in obstore.list(self._store, prefix, chunk_size=1000):
                for meta in chunk:
                    yield StoredObject(meta["path"], meta["last_modified"])
        except _FAILURES as exc:
            raise StoreError(f"could not list {prefix}: {brief(exc)}") from exc

    # --- URLs -----------------------------------------------------------------------------------

    def url(self, key: str, base: str) -> str:
        """A plain URL under S3_PUBLIC_BASE_URL, else a presigned GET; `base` is not used."""
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(self.prefix + key)}"
        now = self._clock()
        expiry = expires_at(now, self.signed_url_ttl)
        cached = self._signed.get(key)
        if cached is not None and cached[0] == expiry:
            self._signed.move_to_end(key)
            return cached[1]
        # Synchronous, and no network: obstore signs with credentials it holds (kept fresh by
        # `_keep_credentials_warm`). Valid until the window's end, the same for every caller.
        signed = obstore.sign(
            self._store, "GET", key, timedelta(seconds=max(1, round(expiry - now)))
        )
        self._signed[key] = (expiry, signed)
        if len(self._signed) > SIGNED_CACHE_SIZE:
            self._signed.popitem(last=False)
        return signed

    async def free_bytes(self) -> int | None:
        return None  # a bucket has no practical limit; its quota is the provider's

    async def healthy(self) -> bool:
        try:
            await asyncio.wait_for(
                obstore.list_with_delimiter_async(self._store, prefix=HEALTH_PREFIX), timeout=3.0
            )
        except _FAILURES as exc:
            log.warning("storage_unhealthy", bucket=self.bucket, error=brief(exc))
            return False
        return True

    def file_server(self) -> ASGIApp:
        """/files/{key}: 307 to where the object is now, for our keys only."""

        async def redirect(request: Request) -> Response:
            key: str = request.path_params["key"]
            extension = os.path.splitext(key)[1].lower()
            segments = key.split("/")
            if (
                not key.startswith(SERVED_PREFIXES)
                or extension not in MEDIA_TYPE_BY_EXTENSION
                or any(part in ("", ".", "..") for part in segments)
            ):
                return Response("no such file", status_code=404)
            # Short-lived in caches: the target is signed and expires.
            headers = {"Cache-Control": "private, max-age=60"}
            return RedirectResponse(self.url(key, str(request.base_url)), 307, headers=headers)

        return Router([Route("/{key:path}", redirect, methods=["GET", "HEAD"])])
