"""POST /images by URL (`{"url": ...}` or `imageUrl`, optionally `callback_url`), and the
SSRF guard's early word on the URLs an upload names: what it can refuse at once is a 422."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from thumbnailer.api import errors
from thumbnailer.api.schemas import UploadAccepted
from thumbnailer.auth import Principal
from thumbnailer.config import Settings
from thumbnailer.fetch import Policy, UrlNotAllowed, check_url
from thumbnailer.ingest import Ingest, Spooled, discard_spool

MAX_JSON_BYTES = 16 * 1024


class UrlUpload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    url: str | None = Field(None, max_length=4096, description="http(s) URL of the image.")
    image_url: str | None = Field(None, alias="imageUrl", max_length=4096)
    callback_url: str | None = Field(
        None, max_length=4096, description="Called with the status JSON on DONE or ERROR."
    )

    @property
    def source(self) -> str | None:
        return self.url or self.image_url


def is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def read_url_upload(request: Request) -> tuple[str, str | None]:
    """(source URL, callback URL) from a small JSON body; 422 for anything else."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise errors.ApiError(422, "invalid_request", "the JSON body is too large")
    try:
        upload = UrlUpload.model_validate_json(bytes(body))
    except ValidationError as exc:
        problems = "; ".join(str(error.get("msg")) for error in exc.errors())
        raise errors.ApiError(422, "invalid_request", f"malformed JSON body: {problems}") from exc
    if not upload.source:
        raise errors.ApiError(
            422, "invalid_request", 'send {"url": "https://..."} or upload a multipart "file"'
        )
    return upload.source, upload.callback_url


async def accept_url(
    request: Request,
    response: Response,
    settings: Settings,
    ingest: Ingest,
    request_id: str | None,
    principal: Principal,
) -> UploadAccepted:
    """JSON `{"url"}`: refused at once if the guard can tell, else a row and a fetch job."""
    source, callback = await read_url_upload(request)
    await _guard(source, settings)
    if callback is not None:
        await _guard_callback(callback, settings)
    await ingest.check_room()
    image_id, status = await ingest.submit_url(source, request_id, principal.subject, callback)
    response.headers["Location"] = f"/images/{image_id}"
    return UploadAccepted(
        id=image_id,
        status=status,
        message="URL accepted; the image is being fetched. Poll the Location URL.",
    )


async def _guard(url: str, settings: Settings) -> None:
    policy = Policy.of(settings.url_fetch_allowed_hosts)
    try:
        await check_url(url, policy, settings.url_fetch_timeout)
    except UrlNotAllowed as exc:
        raise errors.url_not_allowed(exc.reason) from exc


async def _guard_callback(url: str, settings: Settings) -> None:
    if not settings.webhook_secret:
        raise errors.ApiError(
            422, "webhooks_disabled", "callback_url needs the server's WEBHOOK_SECRET to be set"
        )
    await _guard(url, settings)


async def checked_callback(url: str | None, settings: Settings, spooled: Spooled) -> str | None:
    """The multipart callback_url, checked; a refused one discards the spooled upload."""
    if not url:
        return None
    try:
        await _guard_callback(url, settings)
    except errors.ApiError:
        await discard_spool(spooled.path)
        raise
    return url
