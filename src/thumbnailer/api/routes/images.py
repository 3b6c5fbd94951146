"""The images resource: upload, list, status (with long-poll)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from thumbnailer.api import errors
from thumbnailer.api.deps import (
    IdempotencyDep,
    IngestDep,
    NotifierDep,
    PrincipalDep,
    RepoDep,
    ReprocessorDep,
    RequestId,
    SettingsDep,
    StoreDep,
    UploadsDep,
    UrlBase,
    VariantsDep,
    limit_requests,
    limit_uploads,
    visible_image,
)
from thumbnailer.api.errors import error_responses
from thumbnailer.api.multipart import ReceivedForm, receive_form
from thumbnailer.api.pagination import decode_cursor, encode_cursor
from thumbnailer.api.presenters import etag, poll_headers, present
from thumbnailer.api.schemas import ImageOut, ImagePage, UploadAccepted, VariantAccepted
from thumbnailer.api.url_ingest import UrlUpload, accept_url, checked_callback, is_json
from thumbnailer.auth import Principal
from thumbnailer.broker import BrokerUnavailable
from thumbnailer.config import Settings
from thumbnailer.ingest import Accepted, discard_spool
from thumbnailer.lifecycle import NotFinished, erase_image_files
from thumbnailer.records import ImageRecord, Status, VariantRecord
from thumbnailer.repo import Repo
from thumbnailer.repo.variants import TooManyVariants
from thumbnailer.store import Store
from thumbnailer.variant_spec import SpecError, VariantSpec, spec_from_form
from thumbnailer.variants import VariantRequests

# Every route here: a principal (401 in jwt mode without a valid token) and the request limit.
router = APIRouter(dependencies=[Depends(limit_requests)])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "callback_url": {"type": "string"},
                        "transformations": {
                            "type": "string",
                            "description": "One variant to make with the upload, e.g. "
                            "`resize:800x600,fit:cover,grayscale,format:webp,quality:80`",
                        },
                        "width": {"type": "integer", "description": "Variant width"},
                        "height": {"type": "integer", "description": "Variant height"},
                        "preserve_ratio": {
                            "type": "boolean",
                            "description": "false: stretch to width x height (fit fill)",
                        },
                    },
                }
            },
            "application/json": {"schema": UrlUpload.model_json_schema(by_alias=True)},
        },
    }
}


@router.post(
    "/images",
    status_code=202,
    response_model=UploadAccepted,
    response_model_exclude_none=True,  # `variant` only when the form asked for one
    responses=error_responses(401, 408, 409, 413, 415, 422, 429, 503, 507),
    openapi_extra=UPLOAD_BODY,
    summary='Upload an image (multipart field `file`), or have it fetched (JSON `{"url"}`); '
    "an Idempotency-Key makes retries safe",
    dependencies=[Depends(limit_uploads)],
)
async def upload_image(
    request: Request,
    response: Response,
    settings: SettingsDep,
    ingest: IngestDep,
    uploads: UploadsDep,
    request_id: RequestId,
    principal: PrincipalDep,
    variants: VariantsDep,
    idempotency: IdempotencyDep,
) -> Any:
    if is_json(request):
        return await accept_url(request, response, settings, ingest, request_id, principal)
    with uploads.admit():
        await ingest.check_room()
        try:
            async with asyncio.timeout(settings.upload_timeout):
                received = await receive_form(
                    request,
                    settings.spool_path,
                    settings.max_file_size,
                    settings.max_form_parts,
                    fingerprint=idempotency.name is not None,
                )
        except TimeoutError as exc:
            raise errors.upload_timeout(settings.upload_timeout) from exc
        spooled = received.spooled
        try:
            callback = await checked_callback(
                received.fields.get("callback_url"), settings, spooled
            )
            spec = await _asked_variant(received, variants)
            async with idempotency.claim(spooled.fingerprint) as claim:
                if claim.replay is not None:
                    return claim.replayed()  # the first upload's answer; nothing stored again
                accepted = await ingest(spooled, request_id, principal.subject, callback, spec)
                response.headers["Location"] = f"/images/{accepted.id}"
                body = _upload_accepted(accepted)
                claim.remember(
                    202, body.model_dump(mode="json", exclude_none=True), dict(response.headers)
                )
                return body
        finally:
            await discard_spool(spooled.path)  # ingest consumed it, unless it never ran


def _upload_accepted(accepted: Accepted) -> UploadAccepted:
    variant = accepted.variant
    return UploadAccepted(
        id=accepted.id,
        status=accepted.status,
        message="Image accepted; poll the Location URL for thumbnails.",
        variant=(
            VariantAccepted(
                id=variant.id,
                status=variant.status,
                location=f"/images/{accepted.id}/variants/{variant.id}",
            )
            if variant is not None
            else None
        ),
    )


async def _asked_variant(received: ReceivedForm, variants: VariantRequests) -> VariantSpec | None:
    """The variant the form's fields ask for; 422 (before anything is stored) when they
    cannot be read or ask for what no image may have."""
    fields = received.fields
    try:
        spec = spec_from_form(
            fields.get("transformations"),
            fields.get("width"),
            fields.get("height"),
            fields.get("preserve_ratio"),
        )
        if spec is not None:
            variants.check(spec)
    except SpecError as exc:
        await discard_spool(received.spooled.path)
        raise errors.invalid_transformations(str(exc)) from exc
    except TooManyVariants as exc:
        await discard_spool(received.spooled.path)
        raise errors.too_many_variants(exc.limit) from exc
    return spec


@router.get(
    "/images",
    response_model=ImagePage,
    responses=error_responses(401, 422, 429, 503),
    summary="Recent images, newest first (the caller's own; every image for an admin)",
)
async def list_images(
    response: Response,
    settings: SettingsDep,
    repo: RepoDep,
    store: StoreDep,
    base: UrlBase,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[Status | None, Query(description="Only rows in this status")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> ImagePage:
    response.headers.update(private_headers(settings))
    after = decode_cursor(cursor) if cursor else None
    rows = await repo.page(limit + 1, status, after, principal.owner_filter)
    more = len(rows) > limit
    rows = rows[:limit]
    return ImagePage(
        items=[present(row, base, settings.thumbnail_boxes, store) for row in rows],
        next_cursor=encode_cursor(rows[-1]) if more else None,
    )


@router.get(
    "/images/{image_id}",
    response_model=ImageOut,
    responses={
        304: {"description": "Not modified (If-None-Match)"},
        **error_responses(401, 404, 422, 429, 503),
    },
    summary="Status and URLs of one image (404 for another owner's, as for an unknown id)",
)
async def get_image(
    request: Request,
    response: Response,
    settings: SettingsDep,
    repo: RepoDep,
    store: StoreDep,
    notifier: NotifierDep,
    base: UrlBase,
    principal: PrincipalDep,
    image_id: Annotated[uuid.UUID, Path(description="The id returned by the upload")],
    wait: Annotated[
        float,
        Query(ge=0, le=300, description="Long-poll: seconds to wait for a change (capped)"),
    ] = 0,
) -> Any:
    # Subscribe before the first read: a change committed after it still wakes the wait.
    with notifier.watch(str(image_id)) as watch:
        row, variants = await _snapshot(repo, image_id, principal)
        known = request.headers.get("if-none-match")
        deadline = time.monotonic() + min(wait, settings.max_poll_wait)
        first = row
        while not row.finished and not _changed(first, row, variants, known, base, store):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await watch.wait(remaining)
            row, variants = await _snapshot(repo, image_id, principal)
    headers = {**poll_headers(row, base, store, variants), **private_headers(settings)}
    if known is not None and known == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return present(row, base, settings.thumbnail_boxes, store, variants)


@router.delete(
    "/images/{image_id}",
    status_code=204,
    responses=error_responses(401, 404, 422, 429, 503),
    summary="Delete the image, its thumbnails and every file made from it (owner or admin)",
)
async def delete_image(
    repo: RepoDep,
    store: StoreDep,
    principal: PrincipalDep,
    image_id: Annotated[uuid.UUID, Path(description="The id returned by the upload")],
) -> Response:
    row = await repo.delete(image_id, owner=principal.owner_filter)
    if row is None:
        raise errors.image_not_found(image_id)
    # After the row: a failure here leaves orphans for the sweep, and the delete has happened.
    await erase_image_files(store, row)
    return Response(status_code=204)


@router.post(
    "/images/{image_id}/reprocess",
    status_code=202,
    response_model=UploadAccepted,
    responses=error_responses(401, 404, 409, 422, 429, 503),
    summary="Make the thumbnails again, in the sizes now configured (owner or admin)",
    dependencies=[Depends(limit_uploads)],
)
async def reprocess_image(
    response: Response,
    repo: RepoDep,
    reprocess: ReprocessorDep,
    principal: PrincipalDep,
    request_id: RequestId,
    image_id: Annotated[uuid.UUID, Path(description="The id returned by the upload")],
) -> UploadAccepted:
    row = await _load(repo, image_id, principal)
    try:
        status = await reprocess(row, request_id)
    except NotFinished as exc:
        raise errors.IMAGE_NOT_FINISHED from exc
    except BrokerUnavailable as exc:
        raise errors.QUEUE_DOWN from exc
    response.headers["Location"] = f"/images/{image_id}"
    return UploadAccepted(
        id=row.id,
        status=status,
        message="Thumbnails are being made again; the current ones are served until then.",
    )


def private_headers(settings: Settings) -> dict[str, str]:
    """In jwt mode the JSON depends on the token: no shared cache may keep or mix it."""
    if settings.auth_mode != "jwt":
        return {}
    return {"Cache-Control": "private, no-cache", "Vary": "Authorization"}


async def _load(repo: Repo, image_id: uuid.UUID, principal: Principal) -> ImageRecord:
    return await visible_image(repo, image_id, principal)


async def _snapshot(
    repo: Repo, image_id: uuid.UUID, principal: Principal
) -> tuple[ImageRecord, list[VariantRecord]]:
    row = await _load(repo, image_id, principal)
    return row, await repo.variants.for_image(image_id)


def _changed(
    first: ImageRecord,
    current: ImageRecord,
    variants: list[VariantRecord],
    known: str | None,
    base: str,
    store: Store,
) -> bool:
    """With If-None-Match, a change is a new ETag; without it, a new status."""
    if known is not None:
        return etag(current, base, store, variants) != known
    return current.status != first.status
