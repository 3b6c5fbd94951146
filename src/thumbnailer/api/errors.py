"""One JSON error shape for every failure: {"detail": reason, "code": machine-readable}."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from thumbnailer.logging import get_logger

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


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, exc.headers)


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
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries documenting each error status with the shared error body."""
    descriptions = {
        400: "Malformed request",
        404: "No such image or file",
        413: "File or image dimensions over the limit",
        415: "Not a supported image (judged by content)",
        422: "Malformed request (e.g. no `file` field, bad id)",
        503: "A dependency is unavailable",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}
