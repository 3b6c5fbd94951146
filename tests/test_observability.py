"""Metrics, request ids and worker probes, read from the outside of real processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Services, make_settings
from tests.support import ARTIFACTS, RABBITMQ_URL, jpeg_bytes
from tests.tcp_proxy import TcpProxy
from tests.test_e2e import wait_for_terminal

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_after_an_upload_and_its_processing(services: Services) -> None:
    api_before = scrape(services.base_url)
    worker_before = scrape(services.worker_url)
    data = jpeg_bytes(1600, 1200)
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = client.post("/images", files={"file": ("a.jpg", data)})
        assert response.status_code == 202
        assert wait_for_terminal(client, response.json()["id"])["status"] == "DONE"
    api = scrape(services.base_url)
    worker = scrape(services.worker_url)
    uploads = dict(handler="/images", method="POST", status="202")
    assert (
        value(api, "http_requests_total", **uploads)
        == value(api_before, "http_requests_total", **uploads) + 1
    )
    assert value(api, "thumbnailer_upload_bytes_total") - value(
        api_before, "thumbnailer_upload_bytes_total"
    ) == len(data)
    assert (
        value(worker, "thumbnailer_jobs_total", outcome="done")
        == value(worker_before, "thumbnailer_jobs_total", outcome="done") + 1
    )
    for stage in ("read", "decode", "resize", "encode", "write"):
        count = value(worker, "thumbnailer_job_stage_seconds_count", stage=stage)
        assert count == value(worker_before, "thumbnailer_job_stage_seconds_count", stage=stage) + 1
    assert value(worker, "thumbnailer_pool_threads") == services.settings.worker_concurrency
    assert value(worker, "thumbnailer_jobs_in_flight") == 0
    (ARTIFACTS / "metrics-scrape.txt").write_text(
        "# API /metrics\n" + httpx.get(f"{services.base_url}/metrics").text
        + "\n# worker /metrics\n" + httpx.get(f"{services.worker_url}/metrics").text
    )  # fmt: skip


def test_worker_log_lines_carry_the_upload_request_id(services: Services) -> None:
    request_id = "trace-" + str(time.time_ns())
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = client.post(
            "/images",
            files={"file": ("a.jpg", jpeg_bytes(300, 200))},
            headers={"X-Request-ID": request_id},
        )
        assert response.headers["x-request-id"] == request_id
        image_id = response.json()["id"]
        wait_for_terminal(client, image_id)
    lines = [
        json.loads(line) for line in services.workers[0].logs().splitlines() if line.startswith("{")
    ]
    done = [
        line
        for line in lines
        if line.get("event") == "job_done" and line.get("image_id") == image_id
    ]
    assert done, "no job_done line for the image"
    assert done[0]["request_id"] == request_id


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


def wait_for_status(url: str, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            status = httpx.get(url, timeout=2).status_code
        except httpx.HTTPError:
            status = None
        if status == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} answered {status}, expected {expected}")


def test_worker_readiness_follows_the_broker_link(
    proxied_services: tuple[Services, TcpProxy],
) -> None:
    services, proxy = proxied_services
    ready = f"{services.worker_url}/readyz"
    wait_for_status(ready, 200)
    proxy.cut()
    wait_for_status(ready, 503)
    assert httpx.get(f"{services.worker_url}/livez").status_code == 200
    proxy.restore()
    wait_for_status(ready, 200)
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        response = client.post("/images", files={"file": ("a.jpg", jpeg_bytes(300, 200))})
        assert wait_for_terminal(client, response.json()["id"])["status"] == "DONE"
