"""The retention sweep: what is past its time goes with its files, what is not stays, and two
sweepers at once remove each thing once."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import Services
from tests.support import ServiceProcess, free_port, jpeg_bytes, wait_until_ready
from thumbnailer import metrics
from thumbnailer.config import Settings
from thumbnailer.records import NewImage, Status, ThumbnailEntry
from thumbnailer.repo import IdempotencyKeys, KeyName, Repo
from thumbnailer.retention import LOCK_ID, Sweeper
from thumbnailer.store import LocalStore, image_prefixes, original_key, thumbnail_key

JPEG = jpeg_bytes(64, 48)


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def age(database_url: str, image_id: uuid.UUID, days: float) -> None:
    """Move the row's upload and last change `days` into the past."""
    conn = await asyncpg.connect(plain(database_url))
    try:
        await conn.execute(
            "UPDATE images SET created_at = now() - make_interval(days => $2),"
            " updated_at = now() - make_interval(days => $2) WHERE id = $1",
            image_id,
            int(days),
        )
    finally:
        await conn.close()


async def make_image(repo: Repo, store: LocalStore, status: Status = Status.DONE) -> uuid.UUID:
    """A row with its original and two thumbnails in the store."""
    image_id = uuid.uuid4()
    key = original_key(str(image_id), "JPEG")
    await store.put(key, JPEG, "image/jpeg")
    await repo.add(NewImage(image_id, key, "p.jpg", "image/jpeg", 64, 48, len(JPEG), None))
    entries = {}
    for label in ("100x100", "300x300"):
        entries[label] = ThumbnailEntry(
            thumbnail_key(str(image_id), label, "JPEG"), 64, 48, "image/jpeg"
        )
        await store.put(entries[label].key, JPEG, "image/jpeg")
    if status == Status.DONE:
        assert await repo.mark_done(image_id, entries)
    elif status == Status.ERROR:
        assert await repo.mark_error(image_id, "not an image we take")
    return image_id


def files_of(store: LocalStore, image_id: uuid.UUID) -> list[Path]:
    found = [p for p in store.root.rglob(f"*{image_id}*") if p.is_file()]
    for folder in image_prefixes(str(image_id)):
        found += [p for p in (store.root / folder).rglob("*") if p.is_file()]
    return sorted(set(found))


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[Repo, LocalStore]]:
    """The module's database emptied: each test counts what one sweep removes."""
    conn = await asyncpg.connect(plain(settings.database_url))
    try:
        await conn.execute("TRUNCATE images, idempotency_keys CASCADE")
    finally:
        await conn.close()
    repo = Repo.connect(settings.database_url, 4)
    yield repo, LocalStore(settings.storage_path)
    await repo.close()


def sweeper(repo: Repo, store: LocalStore, **options: object) -> Sweeper:
    values: dict[str, object] = {
        "retention_days": 0.0,
        "error_retention_days": 0.0,
        "interval": 3600.0,
        **options,
    }
    return Sweeper(repo, store, **values)  # type: ignore[arg-type]


def removed(kind: str) -> float:
    return float(metrics.RETENTION_REMOVED.labels(kind)._value.get())


async def test_images_past_retention_go_with_their_files(
    parts: tuple[Repo, LocalStore], settings: Settings
) -> None:
    repo, store = parts
    old = [await make_image(repo, store) for _ in range(5)]
    new = [await make_image(repo, store) for _ in range(2)]
    for image_id in old:
        await age(settings.database_url, image_id, 31)
    before = (removed("images"), removed("files"))

    swept = await sweeper(repo, store, retention_days=30, batch=2).sweep()

    assert swept is not None
    assert (swept.images, swept.files) == (5, 15)  # in three batches of at most two
    assert (removed("images"), removed("files")) == (before[0] + 5, before[1] + 15)
    for image_id in old:
        assert await repo.get(image_id) is None
        assert files_of(store, image_id) == []
    for image_id in new:
        assert await repo.get(image_id) is not None
        assert len(files_of(store, image_id)) == 3
    again = await sweeper(repo, store, retention_days=30).sweep()
    assert again is not None
    assert again.images == 0


async def test_nothing_goes_when_retention_is_off(
    parts: tuple[Repo, LocalStore], settings: Settings
) -> None:
    repo, store = parts
    image_id = await make_image(repo, store, Status.ERROR)
    await age(settings.database_url, image_id, 3650)
    swept = await sweeper(repo, store).sweep()
    assert swept is not None
    assert swept.images == 0
    assert len(files_of(store, image_id)) == 3


async def test_error_images_have_a_retention_of_their_own(
    parts: tuple[Repo, LocalStore], settings: Settings
) -> None:
    repo, store = parts
    failed, done = await make_image(repo, store, Status.ERROR), await make_image(repo, store)
    recent_failure = await make_image(repo, store, Status.ERROR)
    for image_id in (failed, done):
        await age(settings.database_url, image_id, 8)
    swept = await sweeper(repo, store, error_retention_days=7).sweep()
    assert swept is not None
    assert swept.images == 1
    assert await repo.get(failed) is None
    assert files_of(store, failed) == []
    for kept in (done, recent_failure):
        assert await repo.get(kept) is not None


def backdate(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


async def test_orphan_files_a_day_old_go_and_nothing_else(parts: tuple[Repo, LocalStore]) -> None:
    repo, store = parts
    orphan, young_orphan = uuid.uuid4(), uuid.uuid4()
    for image_id in (orphan, young_orphan):
        await store.put(original_key(str(image_id), "PNG"), JPEG, "image/png")
        await store.put(thumbnail_key(str(image_id), "100x100", "PNG"), JPEG, "image/png")
    kept = await make_image(repo, store)
    for path in files_of(store, orphan) + files_of(store, kept):
        backdate(path, 2)
    stray = store.root / "thumbnails" / "not-an-image.txt"
    stray.write_bytes(b"x")
    backdate(stray, 2)
    before = removed("orphan_files")

    swept = await sweeper(repo, store).sweep()

    assert swept is not None
    assert swept.orphan_files == 2
    assert removed("orphan_files") == before + 2
    assert files_of(store, orphan) == []
    assert not (store.root / image_prefixes(str(orphan))[1]).exists()  # its folder too
    assert len(files_of(store, young_orphan)) == 2  # maybe an upload still in flight
    assert len(files_of(store, kept)) == 3
    assert stray.exists()  # not laid out as an image's file: not ours to judge


async def test_expired_idempotency_keys_go(parts: tuple[Repo, LocalStore]) -> None:
    repo, store = parts
    keys = IdempotencyKeys(repo)
    expired, live = KeyName("", "POST /images", "old"), KeyName("", "POST /images", "live")
    assert await keys.claim(expired, "f" * 64, ttl=0.01, lease=60) is None
    assert await keys.claim(live, "f" * 64, ttl=3600, lease=60) is None
    await asyncio.sleep(0.05)
    swept = await sweeper(repo, store).sweep()
    assert swept is not None
    assert swept.idempotency_keys == 1
    # The live key is still held (409 material); the expired one is free for anyone.
    held = await keys.claim(live, "f" * 64, ttl=3600, lease=60)
    assert held is not None
    assert held.in_progress
    assert await keys.claim(expired, "e" * 64, ttl=3600, lease=60) is None


async def test_a_sweep_skips_its_turn_while_another_process_sweeps(
    parts: tuple[Repo, LocalStore], settings: Settings
) -> None:
    repo, store = parts
    other = Repo.connect(settings.database_url, 1)  # another process's own connections
    try:
        async with other.exclusive(LOCK_ID) as held:
            assert held
            assert await sweeper(repo, store, retention_days=1).sweep() is None
        assert await sweeper(repo, store, retention_days=1).sweep() is not None
    finally:
        await other.close()


def scrape(base_url: str, kind: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    found = re.search(rf'^thumbnailer_retention_removed_total{{kind="{kind}"}} (\S+)$', text, re.M)
    assert found, f"no retention metric for {kind}"
    return float(found.group(1))


async def count_rows(database_url: str) -> int:
    conn = await asyncpg.connect(plain(database_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM images"))
    finally:
        await conn.close()


def test_two_api_processes_sweeping_at_once_remove_each_thing_once(
    services: Services,
) -> None:
    """Real uploads made by the real worker; then two more API processes with a retention
    window start sweeping every 0.2 s against the same database and storage."""
    ids = []
    for _ in range(6):
        answer = httpx.post(f"{services.base_url}/images", files={"file": ("p.jpg", JPEG)})
        ids.append(answer.json()["id"])
    deadline = time.monotonic() + 30
    while any(httpx.get(f"{services.base_url}/images/{i}").json()["status"] != "DONE" for i in ids):
        assert time.monotonic() < deadline, "uploads not DONE in time"
        time.sleep(0.2)
    old, new = ids[:4], ids[4:]
    url = services.settings.database_url
    for image_id in old:
        asyncio.run(age(url, uuid.UUID(image_id), 40))
    storage = services.settings.storage_path
    per_image = len(list((storage / "thumbnails" / new[0][:2] / new[0]).iterdir())) + 1

    sweepers = []
    for index in range(2):
        port = free_port()
        env = {
            **services.env,
            "API_PORT": str(port),
            "RETENTION_DAYS": "30",
            "RETENTION_INTERVAL": "0.2",
        }
        process = ServiceProcess("api", env, services.artifacts / f"sweeper-{index}.log")
        process.start()
        sweepers.append((process, f"http://127.0.0.1:{port}"))
    try:
        for _, base in sweepers:
            wait_until_ready(f"{base}/readyz")
        deadline = time.monotonic() + 30
        while asyncio.run(count_rows(url)) > len(new):
            assert time.monotonic() < deadline, "old rows not swept in time"
            time.sleep(0.2)
        time.sleep(1.0)  # a few more sweeps each: none may find anything again
        images = [scrape(base, "images") for _, base in sweepers]
        files = [scrape(base, "files") for _, base in sweepers]
    finally:
        for process, _ in sweepers:
            process.stop()
    assert sum(images) == len(old)
    assert sum(files) == len(old) * per_image
    for image_id in old:
        assert httpx.get(f"{services.base_url}/images/{image_id}").status_code == 404
        assert not list(storage.rglob(f"*{image_id}*"))
    for image_id in new:
        body = httpx.get(f"{services.base_url}/images/{image_id}").json()
        assert body["status"] == "DONE"
        for link in [body["original_url"], *body["thumbnails"].values()]:
            assert httpx.get(link).status_code == 200
