"""Server-Sent Events over real HTTP: the API process (uvicorn) streams, PostgreSQL NOTIFY drives.

Most tests run the API alone, no worker: uploads stay PROCESSING until the test moves them
with the repo, so every change is the test's own and comes at a moment it chose. One test runs
the worker too and watches an upload go through on its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth_support import JWT_SETTINGS, SECRET, bearer, hs_token
from tests.conftest import Services, delete_queues, make_settings
from tests.support import ARTIFACTS, jpeg_bytes, wait_until_ready
from thumbnailer.config import Settings
from thumbnailer.repo import Repo

pytestmark = pytest.mark.e2e
JPEG = jpeg_bytes(64, 48)


@dataclass
class Event:
    id: str | None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


class EventReader:
    """Reads a text/event-stream as the WHATWG parser does: fields up to a blank line."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        self.lines = response.iter_lines()
        self.last_id: str | None = None
        self.comments: list[str] = []
        self.closed = False

    def next(self, timeout: float = 10) -> Event | None:
        """The next event with data (id-only ones only move last_id); None when closed."""
        deadline = time.monotonic() + timeout
        current = Event(id=None)
        for line in self.lines:
            assert time.monotonic() < deadline, "no event in time"
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line == "":
                if current.id is not None:
                    self.last_id = current.id
                if current.data:
                    current.id = self.last_id
                    return current
                current = Event(id=None)
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    current.data += ("\n" if current.data else "") + value
                elif name == "id":
                    current.id = value
                elif name == "event":
                    current.event = value
        self.closed = True
        return None

    def until(self, done: Callable[[list[Event]], bool], timeout: float = 15) -> list[Event]:
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            event = self.next(max(0.1, deadline - time.monotonic()))
            assert event is not None, f"stream closed after {[e.body['status'] for e in seen]}"
            seen.append(event)
        return seen


@pytest.fixture
def quick_settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(database_url, tmp_path / "storage", sse_heartbeat=0.5)
    yield settings
    asyncio.run(delete_queues(settings))


def api_alone(settings: Settings, name: str) -> Services:
    running = Services(settings, ARTIFACTS / name)
    running.api.start()
    wait_until_ready(f"{running.base_url}/readyz")
    return running


@pytest.fixture
def api(quick_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Services]:
    running = api_alone(quick_settings, request.node.name)
    yield running
    running.stop()


def change(settings: Settings, act: Callable[[Repo], Awaitable[bool]]) -> None:
    async def run() -> None:
        repo = Repo.connect(settings.database_url, 1)
        try:
            assert await act(repo)
        finally:
            await repo.close()

    asyncio.run(run())


def upload(client: httpx.Client, headers: dict[str, str] | None = None) -> str:
    response = client.post("/images", files={"file": ("e.jpg", JPEG)}, headers=headers or {})
    assert response.status_code == 202, response.text
    image_id: str = response.json()["id"]
    return image_id


def done(image_id: str) -> Callable[[Repo], Awaitable[bool]]:
    return lambda repo: repo.mark_done(uuid.UUID(image_id), {})


def test_one_image_stream_sends_each_change_then_closes(api: Services) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10) as client:
        image_id = upload(client)
        with client.stream("GET", f"/images/{image_id}/events") as response:
            assert response.headers["cache-control"] == "no-store"
            stream = EventReader(response)
            first = stream.next()
            assert first is not None
            assert (first.event, first.body["status"], first.body["id"]) == (
                "status", "PROCESSING", image_id,
            )  # fmt: skip
            assert first.body == client.get(f"/images/{image_id}").json()
            change(api.settings, done(image_id))
            second = stream.next()
            assert second is not None
            assert second.body["status"] == "DONE"
            assert second.body == client.get(f"/images/{image_id}").json()
            assert int(str(second.id)) > int(str(first.id))
            assert stream.next() is None  # closed after the terminal state
        assert client.get(f"/images/{uuid.uuid4()}/events").status_code == 404


def test_one_image_stream_resumes_without_losing_the_change(api: Services) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10) as client:
        image_id = upload(client)
        url = f"/images/{image_id}/events"
        with client.stream("GET", url) as response:
            first = EventReader(response).next()
        assert first is not None
        assert first.body["status"] == "PROCESSING"
        change(api.settings, done(image_id))  # while no one is connected
        with client.stream("GET", url, headers={"Last-Event-ID": str(first.id)}) as response:
            stream = EventReader(response)
            missed = stream.next()
            assert missed is not None
            assert missed.body["status"] == "DONE"
            assert stream.next() is None
        # Resuming from the final state: nothing more, and 204 stops an EventSource retrying.
        final = client.get(url, headers={"Last-Event-ID": str(missed.id)})
        assert final.status_code == 204


def test_idle_streams_send_heartbeats(api: Services) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10) as client:
        image_id = upload(client)
        with client.stream("GET", f"/images/{image_id}/events") as response:
            stream = EventReader(response)
            assert stream.next() is not None
            started = time.monotonic()
            for line in stream.lines:
                if line.startswith(":"):
                    break
            assert time.monotonic() - started < 3  # SSE_HEARTBEAT is 0.5 s here


def test_every_image_stream_resumes_with_last_event_id_and_loses_nothing(api: Services) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10) as client:
        with client.stream("GET", "/events") as response:
            stream = EventReader(response)
            ids = [upload(client) for _ in range(3)]
            seen = stream.until(lambda got: {e.body["id"] for e in got} >= set(ids))
            assert {e.body["status"] for e in seen} == {"PROCESSING"}
            resume_at = stream.last_id
        assert resume_at is not None
        # Changes while disconnected, and one more after the client is back.
        change(api.settings, done(ids[0]))
        change(api.settings, lambda repo: repo.mark_error(uuid.UUID(ids[1]), "broken"))
        with client.stream("GET", "/events", headers={"Last-Event-ID": resume_at}) as response:
            stream = EventReader(response)
            missed = stream.until(
                lambda got: {(e.body["id"], e.body["status"]) for e in got}
                >= {(ids[0], "DONE"), (ids[1], "ERROR")}
            )
            change(api.settings, done(ids[2]))
            live = stream.until(lambda got: any(e.body["id"] == ids[2] for e in got))
        statuses = [(e.body["id"], e.body["status"]) for e in missed + live]
        assert (ids[2], "DONE") in statuses
        # Within the replay margin an event may come again; a change is never missing.
        assert set(statuses) <= {(i, s) for i in ids for s in ("PROCESSING", "DONE", "ERROR")}
        stamps = [int(str(e.id)) for e in missed + live]
        assert stamps == sorted(stamps)


def test_every_image_stream_of_a_fresh_client_gives_a_resume_point_first(api: Services) -> None:
    """Connected, nothing changed yet, disconnected: a change meanwhile is still delivered."""
    with httpx.Client(base_url=api.base_url, timeout=10) as client:
        image_id = upload(client)
        with client.stream("GET", "/events") as response:
            lines = response.iter_lines()
            first = [next(lines), next(lines)]
        assert first[0].startswith("id: ")
        assert first[1] == ""  # an event with an id and no data: it only sets the resume point
        change(api.settings, done(image_id))
        headers = {"Last-Event-ID": first[0].removeprefix("id: ")}
        with client.stream("GET", "/events", headers=headers) as response:
            # Other tests' images share the feed (none mode): wait for this one's DONE.
            got = EventReader(response).until(
                lambda seen: any(
                    e.body["id"] == image_id and e.body["status"] == "DONE" for e in seen
                )
            )
        assert got[-1].body["id"] == image_id


@pytest.fixture
def jwt_api(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Services]:
    values = {**JWT_SETTINGS, "public_base_url": "", "metrics_port": 0, "sse_heartbeat": 0.5}
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **values)
    running = api_alone(settings, request.node.name)
    yield running
    running.stop()
    asyncio.run(delete_queues(settings))


def test_streams_show_only_the_callers_images_in_jwt_mode(jwt_api: Services) -> None:
    alice, bob = bearer(hs_token("alice")), bearer(hs_token("bob"))
    admin = bearer(hs_token("root", scope="images:admin"))
    with httpx.Client(base_url=jwt_api.base_url, timeout=10) as client:
        assert client.get("/events").status_code == 401
        with (
            client.stream("GET", "/events", headers=bob) as bobs,
            client.stream("GET", "/events", headers=admin) as admins,
        ):
            bob_stream, admin_stream = EventReader(bobs), EventReader(admins)
            assert "Authorization" in bobs.headers["vary"]
            assert bobs.headers["cache-control"] == "no-store"
            alices_image = upload(client, alice)
            change(jwt_api.settings, done(alices_image))
            bobs_image = upload(client, bob)  # NOTIFY comes in commit order: after alice's
            got = bob_stream.until(lambda seen: any(e.body["id"] == bobs_image for e in seen))
            assert {e.body["id"] for e in got} == {bobs_image}
            everyone = admin_stream.until(
                lambda seen: {e.body["id"] for e in seen} >= {alices_image, bobs_image}
            )
            assert alices_image in {e.body["id"] for e in everyone}
        assert client.get(f"/images/{alices_image}/events", headers=bob).status_code == 404
        with client.stream("GET", f"/images/{alices_image}/events", headers=alice) as response:
            own = EventReader(response).next()
        assert own is not None
        assert own.body["status"] == "DONE"
        assert own.body["original_url"].startswith("/files/")
        assert "sig=" in own.body["original_url"]


def test_a_real_upload_streams_processing_then_done(services: Services) -> None:
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        with client.stream("GET", "/events") as response:
            stream = EventReader(response)
            image_id = upload(client)
            got = stream.until(
                lambda seen: any(
                    e.body["id"] == image_id and e.body["status"] == "DONE" for e in seen
                ),
                timeout=60,
            )
        statuses = [e.body["status"] for e in got if e.body["id"] == image_id]
        assert statuses == ["PROCESSING", "DONE"]
        assert got[-1].body["thumbnails"]["100x100"]
        assert got[-1].body["placeholder"]["color"].startswith("#")
