"""Signed webhooks on DONE and ERROR: real API and worker processes, local receivers.

The receivers run in this process on 127.0.0.1, named in URL_FETCH_ALLOWED_HOSTS; a receiver
anywhere else on loopback is refused by the SSRF guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import aio_pika
import httpx
import pytest

from tests.conftest import Services, delete_queues, make_settings
from tests.source_server import CountingServer, Route, body_route, send, serving, trap
from tests.support import ARTIFACTS, jpeg_bytes
from thumbnailer.broker import WEBHOOK, Job, Topology
from thumbnailer.config import Settings
from thumbnailer.worker.webhooks import sign

pytestmark = pytest.mark.e2e
SECRET = "whsec-test-0123456789abcdef0123456789"
WEBHOOK_TIMEOUT = 2.0
MAX_RETRIES = 3
TOLERANCE = 300  # seconds a receiver accepts between the signed time and now


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """What the README tells receivers to do, written from the header's definition."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    timestamp, received = parts["t"], parts["v1"]
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), received)


class Flaky:
    """Answers 503 to the first `failures` calls, 200 after."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.failures
        send(handler, 503 if failing else 200, b"busy" if failing else b"ok", "text/plain")


def hang(handler: BaseHTTPRequestHandler) -> None:
    """Never answers within any timeout the service uses."""
    time.sleep(60)


@pytest.fixture(scope="module")
def flaky() -> Flaky:
    return Flaky(failures=2)


@pytest.fixture(scope="module")
def receiver(flaky: Flaky) -> Iterator[CountingServer]:
    ok = body_route(b"ok", "text/plain")
    routes: dict[str, Route] = {"/flaky": flaky, "/hang": hang, "/ok": ok, "/global": ok}
    with serving(routes) as server:
        yield server


@pytest.fixture(scope="module")
def hook_settings(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, receiver: CountingServer
) -> Iterator[Settings]:
    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("webhooks") / "storage",
        url_fetch_allowed_hosts=[f"127.0.0.1:{receiver.port}"],
        webhook_secret=SECRET,
        webhook_url=f"{receiver.base}/global",
        webhook_timeout=WEBHOOK_TIMEOUT,
        max_retries=MAX_RETRIES,
    )
    yield settings
    asyncio.run(delete_queues(settings))


@pytest.fixture(scope="module")
def hook_services(hook_settings: Settings) -> Iterator[Services]:
    running = Services(hook_settings, ARTIFACTS / "test_webhooks")
    running.start()
    yield running
    running.stop()
    # Receivers that fail are retried on purpose; a crash would still be a bug.
    running.assert_workers_clean(retries_allowed=True)


@pytest.fixture
def api(hook_services: Services) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hook_services.base_url, timeout=30) as client:
        yield client


def upload(api: httpx.Client, callback: str, data: bytes | None = None) -> str:
    image = data if data is not None else jpeg_bytes(640, 480)
    response = api.post(
        "/images", files={"file": ("a.jpg", image)}, data={"callback_url": callback}
    )
    assert response.status_code == 202, response.text
    image_id: str = response.json()["id"]
    return image_id


def final(api: httpx.Client, image_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/images/{image_id}", params={"wait": 5}).json()
        if body["status"] in {"DONE", "ERROR"}:
            return body
    raise AssertionError(f"image {image_id} not finished after {timeout}s")


def calls_to(
    server: CountingServer, path: str, image_id: str
) -> list[tuple[dict[str, str], bytes]]:
    with server.lock:
        requests = list(server.requests)
    return [
        (headers, body)
        for method, at, headers, body in requests
        if method == "POST" and at == path and json.loads(body)["id"] == image_id
    ]


def wait_for_calls(
    server: CountingServer, path: str, image_id: str, count: int, timeout: float = 20
) -> list[tuple[dict[str, str], bytes]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = calls_to(server, path, image_id)
        if len(calls) >= count:
            return calls
        time.sleep(0.1)
    raise AssertionError(f"{path} got {len(calls_to(server, path, image_id))} calls, not {count}")


def test_a_receiver_failing_twice_gets_the_third_call_signed(
    api: httpx.Client, receiver: CountingServer, flaky: Flaky
) -> None:
    image_id = upload(api, f"{receiver.base}/flaky")
    status = final(api, image_id)
    assert status["status"] == "DONE"
    calls = wait_for_calls(receiver, "/flaky", image_id, 3)
    time.sleep(1.0)  # a fourth call would come within the back-off: there must be none
    calls = calls_to(receiver, "/flaky", image_id)
    assert len(calls) == 3
    assert flaky.calls == 3
    for headers, body in calls:
        assert verify(SECRET, headers["Thumbnailer-Signature"], body)
        assert not verify("another-secret", headers["Thumbnailer-Signature"], body)
        assert headers["Content-Type"] == "application/json"
        assert headers["Thumbnailer-Event"] == "image.done"
    # One event, delivered three times: the id lets the receiver drop the duplicates.
    assert len({headers["Thumbnailer-Event-Id"] for headers, _ in calls}) == 1
    # The GET's JSON; with PUBLIC_BASE_URL unset its URLs are root-relative in the call.
    polled = api.get(f"/images/{image_id}").text.replace(str(api.base_url).rstrip("/"), "")
    assert json.loads(calls[-1][1]) == json.loads(polled)


def test_error_is_announced_too_and_the_global_webhook_gets_every_event(
    api: httpx.Client, receiver: CountingServer
) -> None:
    image_id = upload(api, f"{receiver.base}/ok", data=jpeg_bytes(800, 600)[:2000])
    assert final(api, image_id)["status"] == "ERROR"
    (headers, body), *_ = wait_for_calls(receiver, "/ok", image_id, 1)
    assert headers["Thumbnailer-Event"] == "image.error"
    assert json.loads(body)["error"]
    assert verify(SECRET, headers["Thumbnailer-Signature"], body)
    (global_headers, _), *_ = wait_for_calls(receiver, "/global", image_id, 1)
    assert global_headers["Thumbnailer-Event-Id"] == headers["Thumbnailer-Event-Id"]


def test_a_receiver_that_never_answers_is_dead_lettered_without_slowing_thumbnails(
    api: httpx.Client, receiver: CountingServer, hook_settings: Settings
) -> None:
    hanging = [upload(api, f"{receiver.base}/hang") for _ in range(3)]
    for image_id in hanging:
        assert final(api, image_id)["status"] == "DONE"
    wait_for_calls(receiver, "/hang", hanging[0], 1)
    # Every hanging call now holds a webhook slot for WEBHOOK_TIMEOUT; images keep flowing.
    started = time.monotonic()
    quick = [upload(api, f"{receiver.base}/ok") for _ in range(4)]
    for image_id in quick:
        assert final(api, image_id)["status"] == "DONE"
    assert time.monotonic() - started < WEBHOOK_TIMEOUT, "thumbnails waited for webhooks"
    attempts = MAX_RETRIES + 1
    budget = attempts * (WEBHOOK_TIMEOUT + 1) + 2 * hook_settings.retry_base_delay * attempts
    dead = wait_for_dead_webhooks(hook_settings, set(hanging), timeout=budget + 20)
    assert dead == set(hanging)
    for image_id in hanging:
        assert len(calls_to(receiver, "/hang", image_id)) == attempts
        assert final(api, image_id)["status"] == "DONE"  # the image never changes for it


def wait_for_dead_webhooks(settings: Settings, wanted: set[str], timeout: float) -> set[str]:
    return asyncio.run(_dead_webhooks(settings, wanted, timeout))


async def _dead_webhooks(settings: Settings, wanted: set[str], timeout: float) -> set[str]:
    """Image ids of webhook jobs in the dead-letter queue (read and put back untouched)."""
    topology = Topology.from_settings(settings)
    deadline = time.monotonic() + timeout
    found: set[str] = set()
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        while time.monotonic() < deadline and not wanted <= found:
            message = await queue.get(fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.5)
                continue
            job = Job.from_message(message)
            if job.kind == WEBHOOK:
                found.add(str(job.image_id))
            await message.ack()
    return found


@pytest.mark.parametrize("path", ["multipart", "json"])
def test_a_callback_to_loopback_outside_the_allow_list_is_refused(
    api: httpx.Client, receiver: CountingServer, path: str
) -> None:
    with trap() as listener:
        callback = f"http://127.0.0.1:{listener.port}/hook"
        if path == "multipart":
            files = {"file": ("a.jpg", jpeg_bytes(64, 64))}
            response = api.post("/images", files=files, data={"callback_url": callback})
        else:
            body = {"url": f"{receiver.base}/ok", "callback_url": callback}
            response = api.post("/images", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "url_not_allowed"
        assert "loopback" in response.json()["detail"]
        assert listener.connections == 0


def test_a_callback_with_another_scheme_is_refused(api: httpx.Client) -> None:
    files = {"file": ("a.jpg", jpeg_bytes(64, 64))}
    response = api.post("/images", files=files, data={"callback_url": "file:///etc/passwd"})
    assert response.status_code == 422
    assert response.json()["code"] == "url_not_allowed"


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"id":"x","status":"DONE"}'
    header = sign(SECRET, 1_700_000_000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_000_000 + TOLERANCE + 1)
