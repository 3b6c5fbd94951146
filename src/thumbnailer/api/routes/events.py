"""Server-Sent Events: a `status` event, with the JSON of GET /images/{id}, per change.

Driven by the LISTEN connection the API already holds (repo.notify): a NOTIFY names the row,
the stream reads it and sends it. Each stream subscribes before it first reads, so a change
committed during that read still arrives (no lost wake-up, as for `?wait=`).

Event ids are the row's `updated_at` in microseconds since the epoch:
- one image: the id is that image's stamp; resuming with `Last-Event-ID` sends the row again
  unless it is exactly what the client saw, and answers 204 (which tells an EventSource to
  stop reconnecting) when what it saw was already the final state;
- every image: the id is the highest stamp sent so far. Resuming replays every row changed
  since REPLAY_MARGIN before it, then goes live. Timestamps are taken when a statement starts
  and rows become visible when it commits, so a change can carry a stamp a little older than
  one already sent; the margin covers that, at the price of resending the few events inside
  it (each carries its own `updated_at`, so a client can drop what it already has).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from thumbnailer.api.deps import (
    NotifierDep,
    PrincipalDep,
    RepoDep,
    SettingsDep,
    StoreDep,
    UrlBase,
    limit_requests,
)
from thumbnailer.api.errors import error_responses
from thumbnailer.api.presenters import present
from thumbnailer.api.routes.images import _load, private_headers
from thumbnailer.auth import Principal
from thumbnailer.config import Settings
from thumbnailer.records import ImageRecord
from thumbnailer.repo import Repo, StatusNotifier
from thumbnailer.store import Store

router = APIRouter(dependencies=[Depends(limit_requests)])
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
REPLAY_MARGIN = timedelta(seconds=2)
LOWEST_ID = uuid.UUID(int=0)
PAGE = 500
MAX_STAMP_DIGITS = 19  # microseconds until the year 318857: anything longer is not ours
STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "An event stream"}
}
LastEventId = Annotated[
    str | None, Header(alias="Last-Event-ID", description="Resume after this event id")
]


def stream_headers(settings: Settings) -> dict[str, str]:
    """No cache of any kind keeps a stream; in jwt mode it also varies with the token."""
    return {**private_headers(settings), "Cache-Control": "no-store"}


def stamp(moment: datetime) -> str:
    return str((moment - EPOCH) // MICROSECOND)


def parse_stamp(value: str | None) -> datetime | None:
    """The moment an event id stands for; None for no id or one we never handed out."""
    if value is None or not value.strip().isdigit() or len(value.strip()) > MAX_STAMP_DIGITS:
        return None
    try:
        return EPOCH + int(value.strip()) * MICROSECOND
    except OverflowError:
        return None


class Presenter:
    """A row as the `status` event a stream sends: the JSON of GET, the id given."""

    def __init__(self, settings: Settings, base: str, store: Store, repo: Repo) -> None:
        self.boxes = settings.thumbnail_boxes
        self.base = base
        self.store = store
        self.repo = repo

    async def __call__(self, row: ImageRecord, event_id: str) -> ServerSentEvent:
        variants = await self.repo.variants.for_image(row.id)
        body = present(row, self.base, self.boxes, self.store, variants).model_dump_json()
        return ServerSentEvent(data=body, id=event_id, event="status")


@router.get(
    "/images/{image_id}/events",
    responses={
        **STREAM,
        204: {"description": "Last-Event-ID was already the final state: nothing more"},
        **error_responses(401, 404, 422, 429, 503),
    },
    response_class=EventSourceResponse,
    summary="Server-Sent Events: one `status` event per change of this image, closed once "
    "it is DONE or ERROR",
)
async def image_events(
    settings: SettingsDep,
    repo: RepoDep,
    store: StoreDep,
    notifier: NotifierDep,
    base: UrlBase,
    principal: PrincipalDep,
    image_id: Annotated[uuid.UUID, Path(description="The id returned by the upload")],
    last_event_id: LastEventId = None,
) -> Response:
    row = await _load(repo, image_id, principal)  # 404 now, before any stream starts
    if row.finished and last_event_id == stamp(row.updated_at):
        return Response(status_code=204, headers=private_headers(settings))
    events = _image_stream(
        repo, notifier, principal, image_id, last_event_id, Presenter(settings, base, store, repo),
        settings.sse_heartbeat,
    )  # fmt: skip
    return EventSourceResponse(
        events, ping=settings.sse_heartbeat, headers=stream_headers(settings)
    )


async def _image_stream(
    repo: Repo,
    notifier: StatusNotifier,
    principal: Principal,
    image_id: uuid.UUID,
    seen: str | None,
    event: Presenter,
    heartbeat: float,
) -> AsyncIterator[ServerSentEvent]:
    with notifier.watch(str(image_id)) as watch:
        while True:
            row = await repo.get(image_id)  # re-read after subscribing and after each wake-up
            if row is None or not principal.can_see(row.owner):
                return  # removed meanwhile
            current = stamp(row.updated_at)
            if current != seen:
                yield await event(row, current)
                seen = current
            if row.finished:
                return
            await watch.wait(heartbeat)


@router.get(
    "/events",
    responses={**STREAM, **error_responses(401, 429, 503)},
    response_class=EventSourceResponse,
    summary="Server-Sent Events: one `status` event per change of any image the caller may "
    "see (their own in jwt mode)",
)
async def all_events(
    settings: SettingsDep,
    repo: RepoDep,
    store: StoreDep,
    notifier: NotifierDep,
    base: UrlBase,
    principal: PrincipalDep,
    last_event_id: LastEventId = None,
) -> Response:
    presenter = Presenter(settings, base, store, repo)
    resume = parse_stamp(last_event_id)
    events = _feed_stream(repo, notifier, principal, resume, presenter, settings.sse_heartbeat)
    return EventSourceResponse(
        events, ping=settings.sse_heartbeat, headers=stream_headers(settings)
    )


async def _feed_stream(
    repo: Repo,
    notifier: StatusNotifier,
    principal: Principal,
    resume: datetime | None,
    event: Presenter,
    heartbeat: float,
) -> AsyncIterator[ServerSentEvent]:
    with notifier.watch_all() as feed:
        catch_up = resume is not None
        mark = resume or await repo.now()
        if not catch_up:
            # An id-only event: the client's resume point, before any image has changed.
            yield ServerSentEvent(id=stamp(mark))
        sent: dict[uuid.UUID, datetime] = {}  # what this connection sent, inside the margin
        ids: list[str] = []
        while True:
            rows = await _changed(repo, principal, mark, catch_up, ids)
            for row in rows:
                if sent.get(row.id) == row.updated_at:
                    continue
                sent[row.id] = row.updated_at
                mark = max(mark, row.updated_at)
                yield await event(row, stamp(mark))
            sent = {key: moment for key, moment in sent.items() if moment >= mark - REPLAY_MARGIN}
            ids, catch_up = await feed.next(heartbeat)


async def _changed(
    repo: Repo, principal: Principal, mark: datetime, catch_up: bool, ids: list[str]
) -> list[ImageRecord]:
    """The rows to send: by time when ids may have been missed, else the ones NOTIFY named."""
    if catch_up:
        return await _since(repo, principal, mark - REPLAY_MARGIN)
    rows = []
    for image_id in dict.fromkeys(ids):  # each id once, in the order of its first NOTIFY
        row = await repo.get(uuid.UUID(image_id))
        if row is not None and principal.can_see(row.owner):
            rows.append(row)
    return rows


async def _since(repo: Repo, principal: Principal, since: datetime) -> list[ImageRecord]:
    rows: list[ImageRecord] = []
    after = (since, LOWEST_ID)
    while True:
        page = await repo.changed_after(after, principal.owner_filter, PAGE)
        rows += [row for row in page if principal.can_see(row.owner)]
        if len(page) < PAGE:
            return rows
        after = (page[-1].updated_at, page[-1].id)
