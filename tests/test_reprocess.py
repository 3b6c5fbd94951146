"""Reprocess: thumbnails made again in the sizes now configured, one image through the API or
many through `thumbnailer reprocess` at a bounded rate; the old set is served until the new
one replaces it."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.auth_support import JWT_SETTINGS, SECRET, bearer, hs_token
from tests.conftest import make_settings
from tests.lifecycle_support import Barrier, eventually, running_worker, wait_for_status
from tests.support import ROOT, jpeg_bytes, service_env, settings_env
from thumbnailer.api.app import create_app
from thumbnailer.config import Settings
from thumbnailer.records import Status
from thumbnailer.reprocess import Selection, parse_duration, parse_rate

JPEG = jpeg_bytes(640, 480)


def upload(data: bytes = JPEG) -> dict[str, object]:
    return {"files": {"file": ("photo.jpg", data, "image/jpeg")}}


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        await asyncio.wait_for(app.state.services.broker.wait_connected(), 10)
        yield app, client


def test_durations_rates_and_selections() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    assert (parse_rate("20/s").amount, parse_rate("20/s").get_expiry()) == (20, 1)
    assert (parse_rate("600/minute").amount, parse_rate("600/minute").get_expiry()) == (600, 60)
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("fast")
    boxes = [(300, 300), (100, 100)]
    assert Selection.of(None, None, True, boxes) == Selection(
        (Status.DONE,), None, ("300x300", "100x100")
    )
    assert Selection.of(None, "1h", False, boxes) == Selection((Status.DONE, Status.ERROR), 3600)
    assert Selection.of("ERROR", None, False, boxes).statuses == (Status.ERROR,)


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = service_env({**settings_env(settings), "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "thumbnailer", "reprocess", *args,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def enqueued_at(stdout: str) -> dict[str, float]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith("{") and '"reprocess_enqueued"' in line:
            entry = json.loads(line)
            found[entry["image_id"]] = float(entry["at"])
    return found


async def test_missing_sizes_are_made_at_a_bounded_rate(settings: Settings) -> None:
    before = settings.model_copy(update={"thumbnail_sizes": [100, 300]})
    after = settings.model_copy(update={"thumbnail_sizes": [100, 200, 300]})
    count, rate = 12, 5
    async with api(before) as (_, client), running_worker(before):
        ids = [(await client.post("/images", **upload())).json()["id"] for _ in range(count)]  # type: ignore[arg-type]
        first = {i: await wait_for_status(client, i) for i in ids}
    assert all(set(body["thumbnails"]) == {"100x100", "300x300"} for body in first.values())  # type: ignore[call-overload]

    async with api(after) as (_, client), running_worker(after):
        # The sizes now configured are listed at once, a new one null until made.
        listed = (await client.get(f"/images/{ids[0]}")).json()["thumbnails"]
        assert list(listed) == ["100x100", "200x200", "300x300"]
        assert listed["200x200"] is None
        assert listed["100x100"] == first[ids[0]]["thumbnails"]["100x100"]  # type: ignore[index]

        code, out, err = await run_cli(after, "--missing-sizes", "--rate", f"{rate}/s")
        assert code == 0, err
        assert f"reprocess: {count} images enqueued" in out
        times = enqueued_at(out)
        assert set(times) == set(ids)
        # The bound, measured: never more than `rate` enqueued within any one second (less a
        # few ms of slack between the limiter's clock and the logged time).
        assert most_in_any_window(list(times.values()), 0.98) <= rate

        async def all_made() -> bool:
            bodies = [(await client.get(f"/images/{i}")).json() for i in ids]
            return all(None not in body["thumbnails"].values() for body in bodies)

        await eventually(all_made, timeout=60)
        for image_id in ids:
            body = (await client.get(f"/images/{image_id}")).json()
            assert body["status"] == "DONE"
            for label, url in body["thumbnails"].items():
                answer = await client.get(url)
                assert answer.status_code == 200, (label, url)
            old = first[image_id]["thumbnails"]["100x100"]  # type: ignore[index]
            assert body["thumbnails"]["100x100"] != old  # a new URL: the old one never changes
            assert (await client.get(old)).status_code == 404  # and is gone with its set

        code, out, _ = await run_cli(after, "--missing-sizes")
        assert (code, "reprocess: 0 images enqueued" in out) == (0, True)


async def test_reprocess_one_image_through_the_api(settings: Settings) -> None:
    async with api(settings) as (app, client):
        repo = app.state.services.repo
        busy = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
        failed = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
        # No worker yet: both PROCESSING; one ends ERROR as after a failure since fixed.
        refused = await client.post(f"/images/{busy}/reprocess")
        assert (refused.status_code, refused.json()["code"]) == (409, "image_not_finished")
        assert await repo.mark_error(uuid.UUID(failed), "decoder crashed (since fixed)")
        unknown = await client.post(f"/images/{uuid.uuid4()}/reprocess")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "image_not_found")

        async with running_worker(settings) as (_, store):
            again = await client.post(f"/images/{failed}/reprocess")
            assert again.status_code == 202
            assert again.json()["status"] == "PROCESSING"
            assert again.headers["location"] == f"/images/{failed}"
            body = await wait_for_status(client, failed)
            assert body["error"] is None
            assert None not in dict(body["thumbnails"]).values()  # type: ignore[call-overload]

            # A DONE image is served its old set until the new one replaces it.
            old = await wait_for_status(client, busy)
            store.before_put = barrier = Barrier()
            answer = await client.post(f"/images/{busy}/reprocess")
            assert (answer.status_code, answer.json()["status"]) == (202, "DONE")
            await asyncio.wait_for(barrier.reached.wait(), 20)
            meanwhile = (await client.get(f"/images/{busy}")).json()
            assert meanwhile["status"] == "DONE"
            assert meanwhile["thumbnails"] == old["thumbnails"]
            for url in meanwhile["thumbnails"].values():
                assert (await client.get(url)).status_code == 200
            barrier.opened.set()

            async def replaced() -> bool:
                now = (await client.get(f"/images/{busy}")).json()
                return bool(now["thumbnails"] != old["thumbnails"])

            await eventually(replaced)
            now = (await client.get(f"/images/{busy}")).json()
            for label, url in now["thumbnails"].items():
                assert (await client.get(url)).status_code == 200
                assert (await client.get(old["thumbnails"][label])).status_code == 404  # type: ignore[index]


async def test_only_the_owner_or_an_admin_may_reprocess(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "storage", jwt_secret=SECRET, **JWT_SETTINGS)
    alice, bob = bearer(hs_token("alice")), bearer(hs_token("bob"))
    admin = bearer(hs_token("ops", scope="images:admin"))
    async with api(settings) as (app, client):
        repo = app.state.services.repo
        mine = [
            (await client.post("/images", headers=alice, **upload())).json()["id"]  # type: ignore[arg-type]
            for _ in range(2)
        ]
        for image_id in mine:
            assert await repo.mark_error(uuid.UUID(image_id), "failed")
        refused = await client.post(f"/images/{mine[0]}/reprocess", headers=bob)
        assert (refused.status_code, refused.json()["code"]) == (404, "image_not_found")
        assert (await client.post(f"/images/{mine[0]}/reprocess")).status_code == 401
        assert (await client.post(f"/images/{mine[0]}/reprocess", headers=alice)).status_code == 202
        assert (await client.post(f"/images/{mine[1]}/reprocess", headers=admin)).status_code == 202


async def test_an_error_image_sent_round_while_the_broker_is_down_is_left_to_the_relay(
    settings: Settings,
) -> None:
    """Committed NEW, as an upload whose publish failed: the relay publishes it, it ends DONE."""
    from thumbnailer.broker import Broker, BrokerUnavailable, Topology
    from thumbnailer.lifecycle import Reprocessor

    async with api(settings) as (app, client):
        repo = app.state.services.repo
        image_id = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
        assert await repo.mark_error(uuid.UUID(image_id), "failed")
        done = (await client.post("/images", **upload())).json()["id"]  # type: ignore[arg-type]
        never = Broker("amqp://guest:guest@127.0.0.1:1/", Topology.from_settings(settings))
        offline = Reprocessor(repo, never)

        row = await repo.get(uuid.UUID(image_id))
        assert await offline(row) == Status.NEW
        assert (await client.get(f"/images/{image_id}")).json()["status"] == "NEW"
        async with running_worker(settings):
            body = await wait_for_status(client, image_id)
            assert None not in dict(body["thumbnails"]).values()  # type: ignore[call-overload]
            finished = await wait_for_status(client, done)
            # A DONE image is not changed when its job cannot be sent: the caller hears so.
            with pytest.raises(BrokerUnavailable):
                await offline(await repo.get(uuid.UUID(done)))
            assert (await client.get(f"/images/{done}")).json() == finished
