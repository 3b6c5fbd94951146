"""Stream a multipart upload to the local spool, counting bytes as they arrive.

Starlette's own form parser spools the whole body before the route runs, so a 1 GB body would be
read to the end before we could refuse it. Here the `file` part goes to a temp file chunk by chunk
and the request is refused the moment the byte count passes the limit.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiofiles
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from thumbnailer.api import errors
from thumbnailer.ingest import Spooled, discard_spool

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
# The small text fields read beside the file, with the most bytes each may have: the variant
# an upload asks for and the webhook to call. Others are ignored, as before.
VARIANT_FIELDS = frozenset({"transformations", "width", "height", "preserve_ratio"})
MAX_TEXT_FIELD_BYTES = 1024
MAX_URL_FIELD_BYTES = 4096
FIELD_LIMITS = {
    **dict.fromkeys(VARIANT_FIELDS, MAX_TEXT_FIELD_BYTES),
    "callback_url": MAX_URL_FIELD_BYTES,
}
TEXT_FIELDS = frozenset(FIELD_LIMITS)
MAX_FILENAME_CHARS = 255
WRITE_BATCH_BYTES = 1024 * 1024
# Room for the multipart framing and the small form fields beside the file.
FORM_ALLOWANCE = 64 * 1024


@dataclass
class _PartState:
    """What the synchronous parser callbacks have seen so far; drained after each chunk."""

    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    in_file: bool = False
    parts: int = 0
    max_parts: int = 16
    file_parts: int = 0
    filename: str | None = None
    pending: list[bytes] = field(default_factory=list)
    text_field: str | None = None
    texts: dict[str, bytearray] = field(default_factory=dict)
    # Fingerprinting: one hash of every part's digest and headers, one hash per part's data.
    request_digest: Any = None
    part_digest: Any = None

    def on_part_begin(self) -> None:
        self.headers = {}
        self.in_file = False
        self.text_field = None
        self.parts += 1
        if self.parts > self.max_parts:
            raise TooManyParts(self.max_parts)
        if self.request_digest is not None:
            self.part_digest = hashlib.sha256()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") == FILE_FIELD.encode():
            self.in_file = True
            self.file_parts += 1
            raw = options.get(b"filename")
            self.filename = clean_filename(raw.decode("utf-8", "replace")) if raw else None
            return
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name in TEXT_FIELDS:
            if name in self.texts:
                raise FieldProblem(name, f"the field {name!r} is sent more than once")
            self.text_field = name
            self.texts[name] = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part_digest is not None:
            self.part_digest.update(data[start:end])
        if self.in_file and self.file_parts == 1:
            self.pending.append(data[start:end])
        elif self.text_field is not None:
            text = self.texts[self.text_field]
            text += data[start:end]
            limit = FIELD_LIMITS[self.text_field]
            if len(text) > limit:
                raise FieldProblem(
                    self.text_field, f"the field {self.text_field!r} is longer than {limit} bytes"
                )

    def on_part_end(self) -> None:
        self.in_file = False
        self.text_field = None
        if self.request_digest is not None and self.part_digest is not None:
            # Length-prefixed, so no part's bytes can pass for another's headers.
            _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
            described = [
                options.get(b"name", b""),
                options.get(b"filename", b""),
                self.headers.get(b"content-type", b""),
                self.part_digest.digest(),
            ]
            for item in described:
                self.request_digest.update(len(item).to_bytes(8, "big") + item)
            self.part_digest = None

    def text_fields(self) -> dict[str, str]:
        fields = {}
        for name, value in self.texts.items():
            try:
                fields[name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FieldProblem(name, f"the field {name!r} is not UTF-8 text") from exc
        return fields


class FieldProblem(Exception):
    """A text field we read that cannot be taken (repeated, too long, not text)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name

    def as_api_error(self) -> errors.ApiError:
        if self.name in VARIANT_FIELDS:
            return errors.invalid_transformations(str(self))
        return errors.ApiError(422, "invalid_request", str(self))


class TooManyParts(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} parts")
        self.limit = limit


def clean_filename(name: str) -> str | None:
    """A display-only name: no directories, no control characters, bounded length."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    trimmed = printable.strip().strip(".")[:MAX_FILENAME_CHARS]
    return trimmed or None


def multipart_boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise errors.not_multipart(bool(content_type))
    return params[b"boundary"]


def declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class ReceivedForm:
    spooled: Spooled
    fields: dict[str, str]  # the TEXT_FIELDS that were sent


async def receive_file(
    request: Request,
    spool: Path,
    max_size: int,
    max_parts: int = 16,
    fingerprint: bool = False,
) -> Spooled:
    """Stream field `file` into a new file under `spool`; ingest consumes it."""
    return (await receive_form(request, spool, max_size, max_parts, fingerprint)).spooled


async def receive_form(
    request: Request,
    spool: Path,
    max_size: int,
    max_parts: int = 16,
    fingerprint: bool = False,
) -> ReceivedForm:
    """Stream field `file` into a new file under `spool` (ingest consumes it) and keep the
    small TEXT_FIELDS beside it.

    Every byte of the body counts: the file against `max_size`, the whole body against
    `max_size` plus a small allowance for framing and other fields. With `fingerprint`, every
    part is hashed on the way (the boundary is the client's random choice, so not the raw body).
    """
    boundary = multipart_boundary(request)
    # A body declared past the limit is refused without being stored (read and dropped if it
    # is small enough for the client to see the 413).
    length = declared_length(request)
    if length is not None and length > max_size + FORM_ALLOWANCE:
        if length <= 2 * max_size:
            await _drain(request.stream(), length)
        raise errors.file_too_large(max_size)
    state = _PartState(max_parts=max_parts)
    if fingerprint:
        state.request_digest = hashlib.sha256()
    parser = MultipartParser(boundary, _callbacks(state))
    tmp = spool / secrets.token_hex(16)
    try:
        size = await _stream_to(tmp, request, parser, state, max_size)
    except TooManyParts as exc:
        await discard_spool(tmp)
        raise errors.too_many_parts(exc.limit) from exc
    except FieldProblem as exc:
        await discard_spool(tmp)
        raise exc.as_api_error() from exc
    except MultipartParseError as exc:
        await discard_spool(tmp)
        raise errors.malformed_multipart(exc) from exc
    except OSError as exc:
        await discard_spool(tmp)
        raise errors.STORAGE_DOWN from exc
    except BaseException:
        await discard_spool(tmp)
        raise
    if state.file_parts != 1:
        await discard_spool(tmp)
        raise errors.file_parts(state.file_parts)
    try:
        fields = state.text_fields()
    except FieldProblem as exc:
        await discard_spool(tmp)
        raise exc.as_api_error() from exc
    digest = state.request_digest.hexdigest() if state.request_digest is not None else None
    spooled = Spooled(path=tmp, size=size, filename=state.filename, fingerprint=digest)
    return ReceivedForm(spooled, fields)


async def _stream_to(
    tmp: Path, request: Request, parser: MultipartParser, state: _PartState, max_size: int
) -> int:
    """Feed the parser and write the file part in batches, one thread hop per batch."""
    size = 0
    received = 0
    batch: list[bytes] = []
    batched = 0
    body = request.stream()
    async with aiofiles.open(tmp, "wb") as sink:
        async for chunk in body:
            received += len(chunk)
            if received > max_size + FORM_ALLOWANCE:
                await _drain(body, max_size)
                raise errors.file_too_large(max_size)
            parser.write(chunk)
            for piece in state.pending:
                size += len(piece)
                if size > max_size:
                    await _drain(body, max_size)
                    raise errors.file_too_large(max_size)
                batch.append(piece)
                batched += len(piece)
            state.pending.clear()
            if batched >= WRITE_BATCH_BYTES:
                await sink.write(b"".join(batch))
                batch, batched = [], 0
        parser.finalize()
        if batch:
            await sink.write(b"".join(batch))
    return size


async def _drain(body: AsyncIterator[bytes], budget: int) -> None:
    """Read and drop up to `budget` more bytes of an oversized body before answering 413.

    A server that answers while the client is still sending must close the connection, and most
    clients (browsers included) then report a network error instead of our 413. Slightly
    oversized uploads, the usual case, are read to the end so the 413 arrives; a body far past
    the limit is cut off once the budget is spent. Nothing is kept, so memory stays flat.
    """
    drained = 0
    async for chunk in body:
        drained += len(chunk)
        if drained > budget:
            return


def _callbacks(state: _PartState) -> MultipartCallbacks:
    return {
        "on_part_begin": state.on_part_begin,
        "on_header_field": state.on_header_field,
        "on_header_value": state.on_header_value,
        "on_header_end": state.on_header_end,
        "on_headers_finished": state.on_headers_finished,
        "on_part_data": state.on_part_data,
        "on_part_end": state.on_part_end,
    }
