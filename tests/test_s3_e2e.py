"""STORAGE_BACKEND=s3 end to end: real API and worker processes, moto's S3 server, HTTP only.

Upload -> DONE -> every URL handed out downloads the right bytes and type (following the
redirect from /files/{key}); the objects are in the bucket under the prefix; faults on the link
to S3 lose nothing; `migrate-store` copies a local tree once, however often it runs.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Services, make_settings, s3_overrides
from tests.s3_server import MotoServer
from tests.support import (
    ARTIFACTS,
    ROOT,
    jpeg_bytes,
    png_bytes,
    service_env,
    settings_env,
    wait_until_ready,
)
from tests.tcp_proxy import TcpProxy
from tests.test_e2e import gif_bytes, wait_for_terminal, webp_bytes
from thumbnailer.config import Settings
from thumbnailer.store import LocalStore, original_key, thumbnail_key

pytestmark = pytest.mark.e2e
LABELS = ("100x100", "300x300", "1200x1200")
TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


@pytest.fixture
def s3_services(s3_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Services]:
    running = Services(s3_settings, ARTIFACTS / request.node.name)
    running.start()
    yield running
    running.stop()


def objects(server: MotoServer, settings: Settings) -> dict[str, int]:
    return server.objects(settings.s3_bucket, settings.s3_prefix)


def test_uploads_reach_done_and_every_url_serves_the_bucket_object(
    s3_services: Services, s3_server: MotoServer
) -> None:
    settings = s3_services.settings
    samples = {
        "photo.jpg": jpeg_bytes(1600, 1200),
        "alpha.png": png_bytes(400, 300),
        "anim.gif": gif_bytes(320, 200),
        "small.webp": webp_bytes(80, 60),
    }
    with httpx.Client(base_url=s3_services.base_url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["services"] == {
            "database": True,
            "rabbitmq": True,
            "storage": True,
            "redis": True,
        }
        ids = {}
        for name, data in samples.items():
            response = client.post("/images", files={"file": (name, data)})
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]
        for name, data in samples.items():
            body = wait_for_terminal(client, ids[name])
            assert body["status"] == "DONE", body
            ext = name.rsplit(".", 1)[1]
            original = client.get(str(body["original_url"]), follow_redirects=True)
            assert original.status_code == 200
            assert original.content == data
            assert original.headers["content-type"] == TYPES[ext]
            assert "immutable" in original.headers["cache-control"]
            # /files/{key}, as URLs handed out before said, redirects to the same object.
            key = original_key(ids[name], {"jpg": "JPEG"}.get(ext, ext.upper()))
            assert client.get(f"/files/{key}", follow_redirects=True).content == data
            thumbnails = body["thumbnails"]
            assert isinstance(thumbnails, dict)
            for label in LABELS:
                url = thumbnails[label]
                assert url.startswith(s3_server.endpoint), url  # presigned, straight to S3
                thumb = client.get(url, follow_redirects=True)
                assert thumb.status_code == 200, (name, label)
                assert thumb.headers["content-type"].startswith("image/")
    stored = objects(s3_server, settings)
    assert len(stored) == 4 * 4, sorted(stored)  # an original and three thumbnails each
    assert all(key.startswith(settings.s3_prefix) for key in stored)
    for image_id in ids.values():
        assert any(k.startswith(f"{settings.s3_prefix}originals/{image_id[:2]}/") for k in stored)
        for label in LABELS:
            assert any(f"thumbnails/{image_id[:2]}/{image_id}/{label}." in k for k in stored)
    assert not list(settings.storage_path.glob("**/*.jpg")), "nothing written to local disk"


def burst(base_url: str, count: int, during: dict[int, object]) -> tuple[list[str], list[int]]:
    """`count` uploads, 4 at a time; callables in `during` run after the n-th response."""
    accepted: list[str] = []
    codes: list[int] = []
    lock = threading.Lock()
    image = jpeg_bytes(640, 480)

    def one(_: int) -> None:
        try:
            response = httpx.post(
                f"{base_url}/images", files={"file": ("b.jpg", image)}, timeout=30
            )
            code = response.status_code
        except httpx.HTTPError:
            response, code = None, 0
        with lock:
            codes.append(code)
            if response is not None and code == 202:
                accepted.append(response.json()["id"])
            action = during.get(len(codes))
        if callable(action):
            action()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))
    return accepted, codes


def wait_all_done(base_url: str, ids: list[str], timeout: float = 90) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for image_id in ids:
            body = wait_for_terminal(client, image_id, timeout)
            assert body["status"] == "DONE", body


def thumbnail_count(server: MotoServer, settings: Settings, ids: list[str]) -> dict[str, int]:
    stored = objects(server, settings)
    return {i: sum(f"/{i}/" in key for key in stored) for i in ids}


@pytest.mark.faults
def test_s3_link_cut_during_a_burst_loses_nothing(
    database_url: str,
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    request: pytest.FixtureRequest,
) -> None:
    with TcpProxy("127.0.0.1", s3_server.port) as proxy:
        settings = make_settings(
            database_url,
            tmp_path / "storage",
            **s3_overrides(s3_server, s3_bucket, endpoint=f"http://127.0.0.1:{proxy.port}"),
            retry_base_delay=0.25,
            max_retries=8,
        )
        services = Services(settings, ARTIFACTS / request.node.name)
        services.start()
        try:

            def cut() -> None:
                proxy.cut()
                time.sleep(2.0)
                proxy.restore()

            accepted, codes = burst(services.base_url, 40, {10: cut})
            assert set(codes) <= {202, 503}, codes  # refused cleanly, never a 500
            assert len(accepted) >= 20
            wait_all_done(services.base_url, accepted)
        finally:
            services.stop()
    counts = thumbnail_count(s3_server, settings, accepted)
    assert all(n == 3 for n in counts.values()), counts  # every accepted image, 0 lost
    stored = objects(s3_server, settings)
    originals = {k.rsplit("/", 1)[1].split(".")[0] for k in stored if "/originals/" in f"/{k}"}
    assert set(accepted) <= originals
    # A put whose answer was lost with the link may have landed: the upload was refused (503)
    # and no row refers to the object, an orphan at most, never a lost image.
    orphans = len(originals) - len(accepted)
    assert orphans <= codes.count(503)
    print(
        f"s3 cut: {len(accepted)} accepted, {codes.count(503)} refused with 503, {orphans} orphans"
    )


@pytest.mark.faults
def test_s3_down_when_the_worker_runs_then_retries_until_done(
    s3_settings: Settings, s3_server: MotoServer, request: pytest.FixtureRequest
) -> None:
    settings = s3_settings.model_copy(update={"retry_base_delay": 0.25, "max_retries": 8})
    services = Services(settings, ARTIFACTS / request.node.name)
    with TcpProxy("127.0.0.1", s3_server.port) as proxy:
        services.api.start()
        worker = services.start_worker(S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
        try:
            wait_until_ready(f"{services.base_url}/readyz")
            proxy.cut()  # the worker cannot reach S3; the API can
            accepted, codes = burst(services.base_url, 6, {})
            assert codes == [202] * 6
            deadline = time.monotonic() + 20
            while '"job_retry_scheduled"' not in worker.logs() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert '"job_retry_scheduled"' in worker.logs()
            time.sleep(1.0)
            proxy.restore()
            wait_all_done(services.base_url, accepted)
        finally:
            services.stop()
    assert "StoreError" in worker.logs()
    counts = thumbnail_count(s3_server, settings, accepted)
    assert all(n == 3 for n in counts.values()), counts


def test_migrate_store_twice_copies_every_object_once(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str
) -> None:
    root = tmp_path / "storage"
    local = LocalStore(root)
    expected: dict[str, bytes] = {}
    for n in range(6):
        image_id = f"{n:02x}000000-0000-4000-8000-00000000000{n}"
        expected[original_key(image_id, "JPEG")] = jpeg_bytes(40 + n, 30)
        for label in LABELS:
            expected[thumbnail_key(image_id, label, "WEBP")] = bytes([n]) * (100 + n)
    import asyncio

    async def fill() -> None:
        for key, data in expected.items():
            media = "image/jpeg" if key.endswith(".jpg") else "image/webp"
            await local.put(key, data, media)

    asyncio.run(fill())
    (root / ".tmp" / "half-written").write_bytes(b"x")  # scratch: never migrated
    settings = Settings(
        _env_file=None,
        storage_path=root,
        **s3_overrides(s3_server, s3_bucket),  # type: ignore[arg-type]
    )
    env = service_env(settings_env(settings))
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "thumbnailer", "migrate-store", "--from", "local", "--to", "s3"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    assert f"copied {len(expected)}, already there 0, failed 0" in outputs[0]
    assert f"copied 0, already there {len(expected)}, failed 0" in outputs[1]
    stored = objects(s3_server, settings)
    assert stored == {settings.s3_prefix + key: len(data) for key, data in expected.items()}
    # What a client gets after the switch is the same bytes.
    from thumbnailer.store import s3_store

    async def read_back() -> None:
        store = s3_store(settings)
        for key, data in expected.items():
            assert await store.read(key) == data

    asyncio.run(read_back())
