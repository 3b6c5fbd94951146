"""Routes: upload, status, health. Files are served by `files.ImmutableFiles`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from asgi_correlation_id import correlation_id
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from thumbnailer import imaging, metrics
from thumbnailer.api.errors import ApiError, error_responses
from thumbnailer.api.schemas import (
    HealthOut,
    ImageOut,
    ImagePage,
    ProbeOut,
    StatusName,
    UploadAccepted,
)
from thumbnailer.api.state import AppState, get_state
from thumbnailer.api.uploads import STORAGE_DOWN, ReceivedFile, receive_file
from thumbnailer.broker import BrokerUnavailable, Job
from thumbnailer.logging import get_logger
from thumbnailer.repo import TERMINAL, Image, NewImage, Status
from thumbnailer.store import StoreError, original_key

log = get_logger(__name__)
router = APIRouter()
State = Annotated[AppState, Depends(get_state)]

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
DATABASE_DOWN = ApiError(
    503, "database_unavailable", "the database is unavailable; retry shortly", {"Retry-After": "5"}
)


@router.post(
    "/images",
    status_code=202,
    response_model=UploadAccepted,
    responses=error_responses(413, 415, 422, 503),
    openapi_extra=UPLOAD_BODY,
    summary="Upload an image (multipart field `file`)",
)
async def upload_image(request: Request, response: Response, state: State) -> UploadAccepted:
    received = await receive_file(request, state.store, state.settings.max_file_size)
    try:
        info = await _probe(received, state.settings.max_image_pixels)
    except ApiError:
        await state.store.discard(received.path)
        raise
    image_id = uuid.uuid4()
    key = original_key(str(image_id), EXTENSIONS[info.format])
    try:
        await state.store.commit(received.path, key)
    except StoreError as exc:
        raise STORAGE_DOWN from exc
    request_id = _request_id(request)
    row = NewImage(
        image_id, key, received.filename, info.media_type, info.width, info.height,
        received.size, request_id,
    )  # fmt: skip
    await _record(state, row)
    metrics.UPLOAD_BYTES.inc(received.size)
    metrics.UPLOAD_SIZE.observe(received.size)
    status = await _enqueue(state, Job(image_id, request_id))
    response.headers["Location"] = f"/images/{image_id}"
    log.info("image_accepted", image_id=str(image_id), bytes=received.size, format=info.format)
    return UploadAccepted(
        id=image_id, status=status, message="Image accepted; poll the Location URL for thumbnails."
    )


async def _probe(received: ReceivedFile, max_pixels: int) -> imaging.ImageInfo:
    try:
        return await run_in_threadpool(imaging.probe, received.path, max_pixels)
    except imaging.ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc)) from exc
    except imaging.ImagingError as exc:
        raise ApiError(
            415, "unsupported_image", f"not a supported image (JPEG, PNG, WebP, GIF): {exc}"
        ) from exc
    except OSError as exc:
        # The temp file we just wrote cannot be read back: storage, not the image, is at fault.
        raise STORAGE_DOWN from exc


async def _record(state: AppState, row: NewImage) -> None:
    try:
        await state.repo.add(row)
    except (SQLAlchemyError, OSError) as exc:
        log.error("record_failed", image_id=str(row.id), error=str(exc))
        await _forget_original(state, row.original_key)
        raise DATABASE_DOWN from exc


async def _forget_original(state: AppState, key: str) -> None:
    try:
        await state.store.delete(key)
    except OSError as exc:
        log.warning("orphan_original", key=key, error=str(exc))


async def _enqueue(state: AppState, job: Job) -> Any:
    """Publish and mark PROCESSING; on failure the row stays NEW for the relay to publish."""
    try:
        await state.broker.publish(job)
    except BrokerUnavailable as exc:
        log.warning("publish_deferred", image_id=str(job.image_id), error=str(exc))
        metrics.PUBLISH_FAILURES.inc()
        return Status.NEW.value
    try:
        await state.repo.mark_processing(job.image_id)
    except (SQLAlchemyError, OSError) as exc:
        # The job is queued, so the worker will still finish it; the status lags for a moment.
        log.warning("mark_processing_failed", image_id=str(job.image_id), error=str(exc))
        return Status.NEW.value
    return Status.PROCESSING.value


def _request_id(request: Request) -> str | None:
    return correlation_id.get()


@router.get(
    "/images",
    response_model=ImagePage,
    responses=error_responses(422, 503),
    summary="Recent images, newest first",
)
async def list_images(
    request: Request,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[StatusName | None, Query(description="Only rows in this status")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> ImagePage:
    after = decode_cursor(cursor) if cursor else None
    try:
        rows = await state.repo.page(limit + 1, Status(status) if status else None, after)
    except (SQLAlchemyError, OSError) as exc:
        raise DATABASE_DOWN from exc
    base, boxes = state.url_base(request), state.settings.thumbnail_boxes
    more = len(rows) > limit
    rows = rows[:limit]
    return ImagePage(
        items=[present(row, base, boxes) for row in rows],
        next_cursor=encode_cursor(rows[-1]) if more else None,
    )


def encode_cursor(row: Image) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, image_id = raw.split("|")
        return datetime.fromisoformat(created), uuid.UUID(image_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_cursor", "cursor is not one this API handed out") from exc


@router.get(
    "/images/{image_id}",
    response_model=ImageOut,
    responses={
        304: {"description": "Not modified (If-None-Match)"},
        **error_responses(404, 422, 503),
    },
    summary="Status and URLs of one image",
)
async def get_image(
    request: Request,
    response: Response,
    state: State,
    image_id: Annotated[uuid.UUID, Path(description="The id returned by the upload")],
    wait: Annotated[
        float,
        Query(ge=0, le=300, description="Long-poll: seconds to wait for a change (capped)"),
    ] = 0,
) -> Any:
    # Subscribe before the first read: a change committed after it still wakes the wait.
    with state.notifier.watch(str(image_id)) as watch:
        row = await _load(state, image_id)
        known = request.headers.get("if-none-match")
        deadline = time.monotonic() + min(wait, state.settings.max_poll_wait)
        first = row
        while row.status not in TERMINAL and not _changed(first, row, known, request):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await watch.wait(remaining)
            row = await _load(state, image_id)
    headers = _poll_headers(row, request)
    if known is not None and known == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return present(row, state.url_base(request), state.settings.thumbnail_boxes)


async def _load(state: AppState, image_id: uuid.UUID) -> Image:
    try:
        row = await state.repo.get(image_id)
    except (SQLAlchemyError, OSError) as exc:
        raise DATABASE_DOWN from exc
    if row is None:
        raise ApiError(404, "image_not_found", f"no image with id {image_id}")
    return row


def etag(row: Image, request: Request) -> str:
    """Changes whenever the JSON would: status and update time, and the host URLs are built on."""
    seed = f"{row.status}|{row.updated_at.isoformat()}|{request.base_url}"
    return f'W/"{hashlib.blake2b(seed.encode(), digest_size=10).hexdigest()}"'


def _changed(first: Image, current: Image, known: str | None, request: Request) -> bool:
    """With If-None-Match, a change is a new ETag; without it, a new status."""
    if known is not None:
        return etag(current, request) != known
    return current.status != first.status


def _poll_headers(row: Image, request: Request) -> dict[str, str]:
    headers = {"ETag": etag(row, request), "Cache-Control": "no-cache"}
    if row.status not in TERMINAL:
        headers["Retry-After"] = "1"
    return headers


def present(row: Image, base: str, boxes: list[tuple[int, int]]) -> ImageOut:
    done = row.status == Status.DONE
    thumbnails: dict[str, str | None] = {}
    for width, height in sorted(boxes):
        label = f"{width}x{height}"
        entry = row.thumbnails.get(label)
        thumbnails[label] = f"{base}/files/{entry['key']}" if done and entry else None
    return ImageOut(
        id=row.id,
        status=row.status,
        original_url=f"{base}/files/{row.original_key}",
        thumbnails=thumbnails,
        error=row.error,
        filename=row.original_filename,
        media_type=row.media_type,
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def dependencies_up(state: AppState) -> dict[str, bool]:
    return {"database": await _database_up(state), "rabbitmq": state.broker.is_connected}


async def _database_up(state: AppState) -> bool:
    try:
        return await asyncio.wait_for(state.repo.ping(), timeout=2.0)
    except (SQLAlchemyError, OSError, TimeoutError):
        return False


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "A dependency is down"}},
    summary="Dependencies' health",
)
async def health(response: Response, state: State) -> HealthOut:
    services = await dependencies_up(state)
    healthy = all(services.values())
    response.status_code = 200 if healthy else 503
    return HealthOut(
        status="healthy" if healthy else "unhealthy",
        services=services,
        timestamp=datetime.now(UTC),
    )


@router.get("/livez", response_model=ProbeOut, summary="Liveness: the process answers")
async def livez() -> ProbeOut:
    return ProbeOut(status="ok")


@router.get(
    "/readyz",
    response_model=ProbeOut,
    responses={503: {"model": ProbeOut, "description": "Not ready"}},
    summary="Readiness: database and broker reachable",
)
async def readyz(response: Response, state: State) -> ProbeOut:
    ready = all((await dependencies_up(state)).values())
    response.status_code = 200 if ready else 503
    return ProbeOut(status="ok" if ready else "unavailable")
