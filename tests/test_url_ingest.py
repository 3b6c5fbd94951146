"""Ingest by URL behind the SSRF guard: real API and worker processes, a local source server.

The source server is named in URL_FETCH_ALLOWED_HOSTS (host:port), so everything else on
127.0.0.1 stays forbidden: the traps are listeners on other loopback ports that count every
connection, and must count none.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Services, delete_queues, make_settings
from tests.source_server import (
    CountingServer,
    Trap,
    body_route,
    chunked_route,
    drip_route,
    redirect_route,
    serving,
    trap,
)
from tests.support import ARTIFACTS, fitted, jpeg_bytes
from thumbnailer import fetch
from thumbnailer.config import Settings

pytestmark = pytest.mark.e2e
PHOTO = jpeg_bytes(1600, 1200)
LIMIT = 300_000  # MAX_FILE_SIZE of this module's services
FETCH_TIMEOUT = 3.0
HTML = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>nope</body></html>"


def loopback_name() -> str:
    """A host name other than `localhost` that resolves only to loopback (from /etc/hosts)."""
    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = {fetch.parse_address(str(info[4][0])) for info in infos}
        if name != "localhost" and addresses and all(a.is_loopback for a in addresses):
            return name
    return "localhost."


def routes(trap_port: int) -> dict[str, Any]:
    chain = {f"/chain/{n}": redirect_route(f"/chain/{n + 1}") for n in range(10)}
    return {
        # Served as a generic type: the bytes decide, never the Content-Type.
        "/photo.jpg": body_route(PHOTO, "application/octet-stream"),
        "/page.html": body_route(HTML, "image/jpeg"),
        "/big.jpg": body_route(b"\xff\xd8" + b"\0" * (LIMIT + 10)),
        "/endless.jpg": chunked_route(b"\0" * 65536, 64),
        "/drip.jpg": drip_route(),
        "/loop": redirect_route("/loop"),
        "/to-photo": redirect_route("/photo.jpg", 301),
        "/to-loopback": redirect_route(f"http://127.0.0.1:{trap_port}/a.jpg"),
        "/to-metadata": redirect_route("http://169.254.169.254/latest/meta-data/"),
        "/to-file": redirect_route("file:///etc/passwd"),
        **chain,
    }


@pytest.fixture(scope="module")
def loopback_trap() -> Iterator[Trap]:
    with trap() as listener:
        yield listener


@pytest.fixture(scope="module")
def ipv6_trap() -> Iterator[Trap | None]:
    try:
        with trap(socket.AF_INET6, "::1") as listener:
            yield listener
    except OSError:  # no IPv6 loopback here: [::1] is still refused, by the API alone
        yield None


@pytest.fixture(scope="module")
def source(loopback_trap: Trap) -> Iterator[CountingServer]:
    with serving(routes(loopback_trap.port)) as server:
        yield server


@pytest.fixture(scope="module")
def url_settings(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, source: CountingServer
) -> Iterator[Settings]:
    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("url-ingest") / "storage",
        url_fetch_allowed_hosts=[f"127.0.0.1:{source.port}"],
        url_fetch_timeout=FETCH_TIMEOUT,
        max_file_size=LIMIT,
    )
    yield settings
    asyncio.run(delete_queues(settings))


@pytest.fixture(scope="module")
def url_services(url_settings: Settings) -> Iterator[Services]:
    running = Services(url_settings, ARTIFACTS / "test_url_ingest")
    running.start()
    yield running
    running.stop()
    running.assert_workers_clean()


@pytest.fixture
def api(url_services: Services) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url_services.base_url, timeout=30) as client:
        yield client


def submit(api: httpx.Client, url: str, key: str = "url") -> httpx.Response:
    return api.post("/images", json={key: url})


def final(api: httpx.Client, image_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/images/{image_id}", params={"wait": 5}).json()
        if body["status"] in {"DONE", "ERROR"}:
            return body
    raise AssertionError(f"image {image_id} not finished after {timeout}s: {body}")


def fetched(api: httpx.Client, url: str) -> dict[str, Any]:
    response = submit(api, url)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/images/{response.json()['id']}"
    return final(api, response.json()["id"])


def test_a_url_reaches_done_with_thumbnails(api: httpx.Client, source: CountingServer) -> None:
    response = submit(api, f"{source.base}/photo.jpg", key="imageUrl")
    assert response.status_code == 202, response.text
    assert response.json()["status"] in {"NEW", "PROCESSING"}
    body = final(api, response.json()["id"])
    assert body["status"] == "DONE", body
    assert body["source_url"] == f"{source.base}/photo.jpg"
    assert (body["media_type"], body["width"], body["height"]) == ("image/jpeg", 1600, 1200)
    assert body["size_bytes"] == len(PHOTO)
    assert api.get(body["original_url"]).content == PHOTO
    for label, url in body["thumbnails"].items():
        box = int(label.split("x")[0])
        thumb = Image.open(io.BytesIO(api.get(url).content))
        assert thumb.size == fitted((1600, 1200), box), label


def test_a_redirect_within_the_allowed_source_is_followed(
    api: httpx.Client, source: CountingServer
) -> None:
    assert fetched(api, f"{source.base}/to-photo")["status"] == "DONE"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing.jpg", "the source answered 404"),
        ("/page.html", "the source is an HTML page, not an image"),
        ("/big.jpg", "more than the limit of 300000 bytes"),
        ("/endless.jpg", "the source sent more than the limit of 300000 bytes"),
        ("/loop", "the source redirects in a loop"),
        ("/chain/0", "the source redirected more than 5 times"),
        ("/to-file", "only http and https URLs are fetched"),
    ],
)
def test_a_bad_source_ends_error_with_a_reason(
    api: httpx.Client, source: CountingServer, path: str, reason: str
) -> None:
    body = fetched(api, f"{source.base}{path}")
    assert body["status"] == "ERROR"
    assert reason in body["error"]
    assert body["original_url"] is None


def test_a_dripping_source_is_cut_off_at_the_fetch_timeout(
    api: httpx.Client, source: CountingServer
) -> None:
    started = time.monotonic()
    body = fetched(api, f"{source.base}/drip.jpg")
    elapsed = time.monotonic() - started
    assert body["status"] == "ERROR"
    assert f"took longer than {FETCH_TIMEOUT:g} s" in body["error"]
    assert elapsed < FETCH_TIMEOUT + 5, elapsed


def forbidden_urls(trap_v4: Trap, trap_v6: Trap | None) -> list[str]:
    port = trap_v4.port
    port6 = trap_v6.port if trap_v6 is not None else port
    return [
        f"http://127.0.0.1:{port}/a.jpg",
        f"http://localhost:{port}/a.jpg",
        "http://10.0.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{port6}/a.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
        f"http://2130706433:{port}/a.jpg",
        f"http://0x7f.1:{port}/a.jpg",
        f"http://{loopback_name()}:{port}/a.jpg",
        f"https://127.0.0.1:{port}/a.jpg",
    ]


def test_the_ssrf_matrix_is_refused_at_once_and_never_connected_to(
    api: httpx.Client, loopback_trap: Trap, ipv6_trap: Trap | None
) -> None:
    for url in [*forbidden_urls(loopback_trap, ipv6_trap), "file:///etc/passwd"]:
        response = submit(api, url)
        assert response.status_code == 422, (url, response.text)
        assert response.json()["code"] == "url_not_allowed", url
    assert loopback_trap.connections == 0
    assert ipv6_trap is None or ipv6_trap.connections == 0


async def test_the_guard_refuses_the_matrix_when_it_connects_too(
    loopback_trap: Trap, ipv6_trap: Trap | None, tmp_path: Path
) -> None:
    """Without the API's early check: the connection itself is refused, nothing reaches the
    listeners (a name that resolves differently later is caught here)."""
    for url in forbidden_urls(loopback_trap, ipv6_trap):
        with pytest.raises(fetch.UrlNotAllowed):
            await fetch.download(url, tmp_path, LIMIT, fetch.Policy(), 2.0)
    assert loopback_trap.connections == 0
    assert ipv6_trap is None or ipv6_trap.connections == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["/to-loopback", "/to-metadata"])
def test_a_redirect_from_the_allowed_source_to_a_forbidden_address_ends_error(
    api: httpx.Client, source: CountingServer, loopback_trap: Trap, path: str
) -> None:
    body = fetched(api, f"{source.base}{path}")
    assert body["status"] == "ERROR"
    assert "which is not fetched" in body["error"], body
    assert loopback_trap.connections == 0


def test_the_allow_list_names_a_port_not_the_whole_host(
    api: httpx.Client, source: CountingServer, loopback_trap: Trap
) -> None:
    response = submit(api, f"http://127.0.0.1:{loopback_trap.port}/photo.jpg")
    assert response.status_code == 422
    assert "loopback" in response.json()["detail"]
    assert loopback_trap.connections == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"url": ""}, {"url": 5}, {"callback": "x"}],
)
def test_a_json_body_without_a_url_is_422(api: httpx.Client, body: dict[str, Any]) -> None:
    response = api.post("/images", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_malformed_json_is_422(api: httpx.Client) -> None:
    response = api.post(
        "/images", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


async def test_a_trap_counts_what_the_allow_list_lets_through(tmp_path: Path) -> None:
    """The control for the matrix: the same guard, once the listener is allowed, reaches it."""
    with trap() as listener:
        url = f"http://localhost:{listener.port}/a.jpg"
        with pytest.raises(fetch.UrlNotAllowed):
            await fetch.download(url, tmp_path, LIMIT, fetch.Policy(), 2.0)
        assert listener.connections == 0
        allowed = fetch.Policy.of([f"localhost:{listener.port}"])
        with pytest.raises(fetch.SourceUnavailable):  # the trap hangs up without answering
            await fetch.download(url, tmp_path, LIMIT, allowed, 2.0)
        assert listener.connections >= 1


def test_slow_sources_do_not_hold_up_uploads(
    api: httpx.Client, source: CountingServer, url_settings: Settings
) -> None:
    """Fetches wait on their sources in a lane of their own, not in the image workers' slots:
    as many dripping sources as the worker has image slots leave uploads unhindered."""

    def drips_seen() -> int:
        with source.lock:
            return sum(1 for request in source.requests if request[1] == "/drip.jpg")

    before = drips_seen()
    slots = url_settings.worker_concurrency
    drips = [submit(api, f"{source.base}/drip.jpg").json()["id"] for _ in range(slots)]
    deadline = time.monotonic() + 5
    while drips_seen() < before + slots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert drips_seen() == before + slots, "the fetches never reached the source"
    started = time.monotonic()
    uploads = [
        api.post("/images", files={"file": ("p.jpg", jpeg_bytes(640, 480))}).json()["id"]
        for _ in range(4)
    ]
    for image_id in uploads:
        assert final(api, image_id)["status"] == "DONE"
    assert time.monotonic() - started < FETCH_TIMEOUT * 0.6, "uploads waited for slow sources"
    for image_id in drips:
        assert final(api, image_id)["status"] == "ERROR"
