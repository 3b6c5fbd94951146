"""Every error the API answers with, and one JSON shape for all: {"detail", "code"}.

Failures of the parts below the API (database, storage, an image we do not take) are mapped to
their HTTP answer here, once, instead of being caught in each route.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from thumbnailer import imaging
from thumbnailer.formats import ACCEPTED
from thumbnailer.ingest import StorageFull
from thumbnailer.logging import get_logger
from thumbnailer.repo import RepoUnavailable
from thumbnailer.store import StoreError

log = get_logger(__name__)


class ErrorBody(BaseModel):
    detail: str
    code: str


class ApiError(Exception):
    """An expected failure with its HTTP status, code and a reason fit for the client."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


DATABASE_DOWN = ApiError(
    503, "database_unavailable", "the database is unavailable; retry shortly", {"Retry-After": "5"}
)
STORAGE_DOWN = ApiError(
    503, "storage_unavailable", "storage is unavailable; retry shortly", {"Retry-After": "5"}
)


def file_too_large(limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"the file is larger than the limit of {limit} bytes")


def image_too_large(exc: imaging.ImageTooLarge) -> ApiError:
    return ApiError(413, "image_too_large", str(exc))


def unsupported_image(exc: imaging.ImagingError) -> ApiError:
    return ApiError(415, "unsupported_image", f"not a supported image ({ACCEPTED}): {exc}")


def not_multipart(has_content_type: bool) -> ApiError:
    return ApiError(
        415 if has_content_type else 422,
        "not_multipart",
        "send the image as multipart/form-data with a field named 'file'",
    )


def malformed_multipart(exc: Exception) -> ApiError:
    return ApiError(422, "malformed_multipart", f"malformed multipart body: {exc}")


def file_parts(count: int) -> ApiError:
    problem = "no field named 'file'" if count == 0 else "more than one 'file'"
    return ApiError(422, "invalid_request", f"{problem}: send exactly one image as 'file'")


def too_many_parts(limit: int) -> ApiError:
    return ApiError(
        422, "too_many_parts", f"the form has more than {limit} parts; send the image as 'file'"
    )


TOO_MANY_UPLOADS = ApiError(
    503,
    "too_many_uploads",
    "this server is taking as many uploads as it can; retry shortly",
    {"Retry-After": "2"},
)


def upload_timeout(seconds: float) -> ApiError:
    return ApiError(
        408, "upload_timeout", f"the upload took longer than {seconds:g} s; send it again"
    )


def insufficient_storage(free: int) -> ApiError:
    return ApiError(
        507,
        "insufficient_storage",
        f"storage is nearly full ({free // 2**20} MiB free); retry later",
        {"Retry-After": "60"},
    )


def url_not_allowed(reason: str) -> ApiError:
    return ApiError(422, "url_not_allowed", reason)


def image_not_found(image_id: uuid.UUID) -> ApiError:
    return ApiError(404, "image_not_found", f"no image with id {image_id}")


def variant_not_found(variant_id: uuid.UUID) -> ApiError:
    return ApiError(404, "variant_not_found", f"no variant with id {variant_id} of this image")


def invalid_variant(reason: str) -> ApiError:
    return ApiError(422, "invalid_variant", reason)


def invalid_transformations(reason: str) -> ApiError:
    return ApiError(422, "invalid_transformations", reason)


def too_many_variants(limit: int) -> ApiError:
    return ApiError(
        422, "too_many_variants", f"this image already has the most variants allowed ({limit})"
    )


QUEUE_DOWN = ApiError(
    503, "queue_unavailable", "the job queue is unavailable; retry shortly", {"Retry-After": "5"}
)
IMAGE_NOT_FINISHED = ApiError(
    409,
    "image_not_finished",
    "the image is still being processed; its thumbnails will have the sizes now configured",
)

INVALID_IDEMPOTENCY_KEY = ApiError(
    422,
    "invalid_idempotency_key",
    "Idempotency-Key must be 1-255 visible ASCII characters (a UUID is a good key)",
)
IDEMPOTENCY_KEY_REUSED = ApiError(
    422,
    "idempotency_key_reused",
    "this Idempotency-Key was used for a different request; send a new key for a new request",
)
IDEMPOTENCY_KEY_IN_PROGRESS = ApiError(
    409,
    "idempotency_key_in_progress",
    "a request with this Idempotency-Key is still in progress; retry shortly",
    {"Retry-After": "1"},
)

INVALID_CURSOR = ApiError(422, "invalid_cursor", "cursor is not one this API handed out")

AUTH_UNAVAILABLE = ApiError(
    503,
    "auth_unavailable",
    "the keys to check tokens with are unavailable; retry shortly",
    {"Retry-After": "5"},
)


def invalid_token(reason: str, missing: bool) -> ApiError:
    """401 per RFC 6750: no error code when no credentials were sent, invalid_token otherwise."""
    if missing:
        return ApiError(401, "missing_token", reason, {"WWW-Authenticate": 'Bearer realm="api"'})
    description = reason.replace("\\", "").replace('"', "'")
    challenge = f'Bearer realm="api", error="invalid_token", error_description="{description}"'
    return ApiError(401, "invalid_token", reason, {"WWW-Authenticate": challenge})


def rate_limited(name: str, limit: int, window: int, retry_after: int, policy: str) -> ApiError:
    headers = {
        "Retry-After": str(retry_after),
        "RateLimit-Policy": policy,
        "RateLimit": f'"{name}";r=0;t={retry_after}',
    }
    detail = f"rate limit of {limit} {name} per {window} s exceeded; retry in {retry_after} s"
    return ApiError(429, "rate_limited", detail, headers)


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    403: "invalid_signature",  # only /files answers 403: a missing, bad or expired signature
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _answer(error: ApiError) -> JSONResponse:
    return error_response(error.status, error.code, error.detail, error.headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _answer(exc)


async def _repo_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database_unavailable", path=request.url.path, error=str(exc))
    return _answer(DATABASE_DOWN)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("storage_unavailable", path=request.url.path, error=str(exc))
    return _answer(STORAGE_DOWN)


async def _storage_full(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StorageFull)
    return _answer(insufficient_storage(exc.free))


async def _imaging_error(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, imaging.ImageTooLarge):
        return _answer(image_too_large(exc))
    assert isinstance(exc, imaging.ImagingError)
    return _answer(unsupported_image(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_describe(error) for error in exc.errors()]
    return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The trace goes to the log with the request id; the client gets no internals.
    log.exception("unhandled_error", path=request.url.path)
    return error_response(500, "internal_error", "internal error; quote the X-Request-ID")


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RepoUnavailable, _repo_unavailable)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(imaging.ImagingError, _imaging_error)
    app.add_exception_handler(StorageFull, _storage_full)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries documenting each error status with the shared error body."""
    descriptions = {
        400: "Malformed request",
        401: "No valid bearer token (AUTH_MODE=jwt)",
        429: "Rate limit exceeded (Retry-After, RateLimit-Policy, RateLimit)",
        404: "No such image or file",
        409: "A request with this Idempotency-Key is still in progress, or the image is busy",
        413: "File or image dimensions over the limit",
        408: "The upload took longer than UPLOAD_TIMEOUT",
        415: "Not a supported image (judged by content)",
        422: "Malformed request (e.g. no `file` field, bad id)",
        503: "A dependency is unavailable, or too many uploads at once",
        507: "Storage is nearly full",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}
