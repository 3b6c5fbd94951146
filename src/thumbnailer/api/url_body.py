"""The JSON form of POST /images: `{"url": ...}` (or `imageUrl`), optionally a callback_url."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from thumbnailer.api import errors

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
