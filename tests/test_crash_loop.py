"""A job that kills its worker every time: stopped after MAX_DELIVERIES, the rest unharmed.

The real API and worker processes; the test plays the killer: it watches the worker's log and
SIGKILLs the process the moment it starts one particular job, then starts a fresh worker, as
Kubernetes would after an out-of-memory kill.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Services, make_settings
from tests.support import ARTIFACTS, jpeg_bytes


def slow_jpeg() -> bytes:
    """Noise at 12 MP: a few hundred ms of decoding and resizing, time for the kill to land."""
    import io

    from PIL import Image

    noise = Image.effect_noise((4000, 3000), 60).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


pytestmark = pytest.mark.e2e
MAX_DELIVERIES = 3


def started_job(log_text: str, image_id: str) -> bool:
    return any(image_id in line and '"job_started"' in line for line in log_text.splitlines())


def statuses(client: httpx.Client, ids: list[str]) -> dict[str, dict[str, object]]:
    return {image_id: client.get(f"/images/{image_id}").json() for image_id in ids}


def test_a_job_that_kills_its_worker_ends_error_after_max_deliveries(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = make_settings(
        database_url,
        tmp_path / "storage",
        max_deliveries=MAX_DELIVERIES,
        # One job at a time, so a kill interrupts the killer job alone, not a neighbour.
        worker_concurrency=1,
    )
    services = Services(settings, ARTIFACTS / request.node.name)
    services.start()
    try:
        with httpx.Client(base_url=services.base_url, timeout=30) as client:
            good = [
                client.post("/images", files={"file": ("g.jpg", jpeg_bytes(800, 600))}).json()["id"]
                for _ in range(4)
            ]
            killer = client.post("/images", files={"file": ("k.jpg", slow_jpeg())}).json()["id"]
            good += [
                client.post("/images", files={"file": ("g.jpg", jpeg_bytes(640, 480))}).json()["id"]
                for _ in range(4)
            ]
            kills = 0
            deadline = time.monotonic() + 120
            for tick in range(1_000_000):
                if time.monotonic() > deadline:
                    break
                worker = services.workers[-1]
                alive = worker.process is not None and worker.process.poll() is None
                if alive and started_job(worker.logs(), killer):
                    worker.signal(signal.SIGKILL)
                    worker.wait(10)
                    kills += 1
                    services.start_worker()
                    continue
                if tick % 50 == 0:
                    body = client.get(f"/images/{killer}").json()
                    if body["status"] in ("DONE", "ERROR"):
                        break
                time.sleep(0.002)
            while time.monotonic() < deadline:
                seen = statuses(client, good)
                if all(s["status"] in ("DONE", "ERROR") for s in seen.values()):
                    break
                time.sleep(0.2)
            final = statuses(client, [*good, killer])
    finally:
        services.stop()

    assert kills == MAX_DELIVERIES
    assert final[killer]["status"] == "ERROR"
    assert final[killer]["error"] == f"processing stopped the worker {MAX_DELIVERIES} times"
    assert {final[image_id]["status"] for image_id in good} == {"DONE"}
    last_log = services.workers[-1].logs()
    events = [json.loads(line) for line in last_log.splitlines() if line.startswith("{")]
    assert any(
        e["event"] == "job_dead_lettered" and e.get("image_id") == killer for e in events
    ), "the last worker dead-lettered the killer job"
