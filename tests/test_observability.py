"""Metrics, request ids and worker probes, read from the outside of real processes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Services, make_settings, settings_environment
from tests.corpus import truncated
from tests.support import (
    ARTIFACTS,
    RABBITMQ_URL,
    ServiceProcess,
    free_port,
    jpeg_bytes,
    png_bytes,
    service_env,
)
from tests.tcp_proxy import TcpProxy
from tests.test_e2e import wait_for_terminal
from thumbnailer.config import Settings

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
STAGES = ("read", "decode", "resize", "encode", "placeholder", "write")


def parse(text: str) -> Samples:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; a metric that is not exposed is an error, never a zero."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise KeyError(f"no sample {name}{labels} in the scrape")
    return samples[key]


def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much a sample grew; it must exist afterwards (a labelled child may appear later)."""
    key = (name, tuple(sorted(labels.items())))
    return value(after, name, **labels) - before.get(key, 0.0)


def value_or_none(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def upload(
    client: httpx.Client, data: bytes, filename: str = "a.jpg", request_id: str | None = None
) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return client.post("/images", files={"file": (filename, data)}, headers=headers)


def poll(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_metrics_move_after_an_upload_and_its_processing(services: Services) -> None:
    api_before = scrape(services.base_url)
    worker_before = scrape(services.worker_url)
    data = jpeg_bytes(1600, 1200)
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = upload(client, data)
        assert response.status_code == 202
        assert wait_for_terminal(client, response.json()["id"])["status"] == "DONE"
    api = scrape(services.base_url)
    worker = scrape(services.worker_url)
    post = dict(handler="/images", method="POST")
    assert moved(api, api_before, "http_requests_total", **post, status="202") == 1
    assert moved(api, api_before, "http_request_duration_seconds_count", **post) == 1
    assert moved(api, api_before, "thumbnailer_upload_bytes_total") == len(data)
    assert moved(api, api_before, "thumbnailer_upload_size_bytes_count") == 1
    assert moved(worker, worker_before, "thumbnailer_jobs_total", outcome="done") == 1
    assert moved(worker, worker_before, "thumbnailer_job_duration_seconds_count") == 1
    for stage in STAGES:
        assert moved(worker, worker_before, "thumbnailer_job_stage_seconds_count", stage=stage) == 1
    assert value(worker, "thumbnailer_pool_threads") == services.settings.worker_concurrency
    assert value(worker, "thumbnailer_pool_busy_threads") == 0
    assert value(worker, "thumbnailer_jobs_in_flight") == 0


def test_outcomes_start_at_zero_so_rates_work_before_the_first_failure(
    services: Services,
) -> None:
    worker = scrape(services.worker_url)
    for outcome in ("done", "error", "retried", "dead_lettered", "skipped"):
        assert ("thumbnailer_jobs_total", (("outcome", outcome),)) in worker


async def count_rows(database_url: str, status: str) -> int:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM images WHERE status = $1", status))
    finally:
        await conn.close()


def test_a_burst_shows_in_both_scrapes_with_row_and_queue_gauges(services: Services) -> None:
    """Also saves both scrapes to test-artifacts/metrics-scrape.txt for the operations notes."""
    api_before = scrape(services.base_url)
    worker_before = scrape(services.worker_url)
    good = [jpeg_bytes(800 + 100 * n, 600) for n in range(4)] + [png_bytes(640, 480)]
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        accepted = [upload(client, data, f"{n}.img").json()["id"] for n, data in enumerate(good)]
        accepted.append(upload(client, truncated("JPEG")).json()["id"])
        assert upload(client, b"not an image at all").status_code == 415
        statuses = [wait_for_terminal(client, image_id)["status"] for image_id in accepted]
    assert statuses == ["DONE"] * 5 + ["ERROR"]
    api = scrape(services.base_url)
    worker = scrape(services.worker_url)
    post = dict(handler="/images", method="POST")
    assert moved(api, api_before, "http_requests_total", **post, status="202") == 6
    assert moved(api, api_before, "http_requests_total", **post, status="415") == 1
    assert moved(worker, worker_before, "thumbnailer_jobs_total", outcome="done") == 5
    assert moved(worker, worker_before, "thumbnailer_jobs_total", outcome="error") == 1
    done = asyncio.run(count_rows(services.settings.database_url, "DONE"))
    queue = services.settings.queue_name
    poll(
        lambda: value_or_none(scrape(services.base_url), "thumbnailer_images", status="DONE")
        == done,
        f"thumbnailer_images{{status='DONE'}} == {done} rows",
    )
    api = scrape(services.base_url)
    assert ("thumbnailer_queue_messages", (("queue", queue),)) in api
    assert value(api, "thumbnailer_queue_messages", queue=queue) == 0
    (ARTIFACTS / "metrics-scrape.txt").write_text(
        f"# API {services.base_url}/metrics\n" + httpx.get(f"{services.base_url}/metrics").text
        + f"\n# worker {services.worker_url}/metrics\n"
        + httpx.get(f"{services.worker_url}/metrics").text
    )  # fmt: skip


def test_log_lines_of_both_processes_carry_the_upload_request_id(services: Services) -> None:
    request_id = "trace-" + str(time.time_ns())
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = upload(client, jpeg_bytes(300, 200), request_id=request_id)
        assert response.headers["x-request-id"] == request_id
        image_id = response.json()["id"]
        assert wait_for_terminal(client, image_id)["status"] == "DONE"
    api_lines = [
        line for line in json_lines(services.api.logs()) if line.get("image_id") == image_id
    ]
    assert api_lines, "no API line names the image"
    assert {line.get("request_id") for line in api_lines} == {request_id}
    worker_lines = [
        line
        for line in json_lines(services.workers[0].logs())
        if line.get("request_id") == request_id
    ]
    events = {line["event"] for line in worker_lines}
    # thumbnail_stages is written from the imaging thread pool, job_done from the event loop.
    assert {"thumbnail_stages", "job_done"} <= events
    assert {line.get("image_id") for line in worker_lines} == {image_id}


@pytest.fixture
def proxied_services(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Services, TcpProxy]]:
    with TcpProxy("127.0.0.1", 5672) as proxy:
        settings = make_settings(
            database_url, tmp_path / "storage", rabbitmq_url=proxy.url(RABBITMQ_URL)
        )
        running = Services(settings, ARTIFACTS / request.node.name)
        running.start()
        try:
            yield running, proxy
        finally:
            running.stop()
        running.assert_workers_clean(retries_allowed=True)  # a fault scenario: the link is cut


def wait_for_status(url: str, expected: int, timeout: float = 30) -> None:
    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == expected
        except httpx.HTTPError:
            return False

    poll(answers, f"{url} answers {expected}", timeout)


def test_worker_readiness_follows_the_broker_link_and_the_relay_counts_its_catch_up(
    proxied_services: tuple[Services, TcpProxy],
) -> None:
    services, proxy = proxied_services
    ready = f"{services.worker_url}/readyz"
    wait_for_status(ready, 200)
    api_before = scrape(services.base_url)
    proxy.cut()
    wait_for_status(ready, 503)
    assert httpx.get(f"{services.worker_url}/livez").status_code == 200
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = upload(client, jpeg_bytes(300, 200))
        assert response.json()["status"] == "NEW"  # accepted, its publish deferred to the relay
        assert (
            moved(scrape(services.base_url), api_before, "thumbnailer_publish_failures_total") == 1
        )
        proxy.restore()
        wait_for_status(ready, 200)
        assert wait_for_terminal(client, response.json()["id"])["status"] == "DONE"
    assert moved(scrape(services.base_url), api_before, "thumbnailer_relay_republished_total") >= 1


@pytest.fixture
def two_process_api(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Services]:
    settings = make_settings(database_url, tmp_path / "storage", api_workers=2)
    running = Services(settings, ARTIFACTS / request.node.name)
    running.start()
    yield running
    running.stop()
    running.assert_workers_clean()


def served_by(services: Services, path: str) -> Counter[int]:
    """Requests for `path` per API process, from the access lines (each carries its pid)."""
    lines = json_lines(services.api.logs())
    return Counter(
        int(str(line["pid"]))
        for line in lines
        if line.get("event") == "request" and line.get("path") == path
    )


def test_an_api_with_two_processes_reports_their_sums(two_process_api: Services) -> None:
    services = two_process_api
    sizes = []
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        for n in range(4):
            data = jpeg_bytes(400 + 50 * n, 300)
            assert upload(client, data).status_code == 202
            sizes.append(len(data))
    # A new connection per request, so the kernel hands them to either process; go on until
    # both have answered some (a keep-alive client would stay on one process throughout).
    sent = 0
    while sent < 30 or (len(served_by(services, "/livez")) < 2 and sent < 400):
        assert httpx.get(f"{services.base_url}/livez", timeout=10).status_code == 200
        sent += 1
    livez = served_by(services, "/livez")
    assert len(livez) == 2, f"one process answered all {sent} requests: {livez}"
    assert livez.total() == sent
    # Each scrape is answered by whichever process accepts it; every one must show the sums,
    # and both processes must have answered some of them.
    scrapes = 0
    while scrapes < 6 or (len(served_by(services, "/metrics")) < 2 and scrapes < 100):
        api = scrape(services.base_url)
        assert (
            value(api, "http_requests_total", handler="/livez", method="GET", status="200") == sent
        )
        assert value(api, "thumbnailer_upload_bytes_total") == sum(sizes)
        assert not [labels for _, labels in api if "pid" in dict(labels)]
        scrapes += 1
    assert len(served_by(services, "/metrics")) == 2, served_by(services, "/metrics")


def test_a_worker_whose_probe_port_is_taken_exits_and_names_the_port(settings: Settings) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:  # the address the worker binds
        port = taken.getsockname()[1]
        env = service_env(settings_environment(settings, free_port(), port))
        worker = ServiceProcess("worker", env, ARTIFACTS / "probe-port-taken" / "worker.log")
        worker.start()
        try:
            exit_code = worker.wait(timeout=30)  # it used to hang here, serving nothing
        finally:
            worker.stop()
    assert exit_code != 0
    assert f"worker HTTP port {port}" in worker.logs()
