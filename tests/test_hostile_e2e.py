"""The hostile corpus through the real API and worker: each file gets 413 at upload or ends
ERROR with a reason, a good image after each still reaches DONE, and the decode processes'
peak memory per case stays under MAX_DECODE_MEMORY plus their idle size.

Peaks are read per case: VmHWM of the worker and of each decoder child is reset before the
case (`/proc/PID/clear_refs`, 5) and read after it. Figures go to test-artifacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Services, make_settings
from tests.hostile import BASELINE, HOSTILE, Hostile, build, scan_bomb
from tests.support import ARTIFACTS, jpeg_bytes

pytestmark = pytest.mark.e2e
MB = 1024 * 1024


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("hostile-e2e"))


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    settings = make_settings(database_url, tmp_path_factory.mktemp("hostile") / "storage")
    services = Services(settings, ARTIFACTS / "hostile-e2e")
    services.start()
    yield services
    services.stop()


def processes(services: Services) -> list[psutil.Process]:
    worker = services.workers[-1].process
    assert worker is not None
    parent = psutil.Process(worker.pid)
    return [parent, *parent.children()]


def status_kb(process: psutil.Process, key: str) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peaks(services: Services) -> dict[int, int]:
    """Reset each process's peak RSS; returns its RSS now (its idle size) by pid."""
    idle = {}
    for process in processes(services):
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")
        idle[process.pid] = status_kb(process, "VmRSS") * 1024
    return idle


def peaks(services: Services) -> dict[int, int]:
    return {p.pid: status_kb(p, "VmHWM") * 1024 for p in processes(services)}


def finish(client: httpx.Client, image_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, object] = client.get(f"/images/{image_id}?wait=5").json()
        if body["status"] in ("DONE", "ERROR"):
            return body
    raise AssertionError(f"{image_id} not finished: {body}")


def answer(client: httpx.Client, case: Hostile, path: Path) -> tuple[str, str]:
    response = client.post("/images", files={"file": (case.filename, path.read_bytes())})
    if response.status_code != 202:
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "image_too_large"
        return "refused", response.json()["detail"]
    body = finish(client, response.json()["id"])
    return str(body["status"]).lower(), str(body["error"] or "")


def test_hostile_files_get_their_answer_within_the_memory_budget(
    stack: Services, files: dict[str, Path]
) -> None:
    limit = stack.settings.max_decode_memory
    table = []
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        warm = client.post("/images", files={"file": ("w.jpg", jpeg_bytes(64, 64))})
        finish(client, warm.json()["id"])  # the decoder children exist from here on
        for case in [*HOSTILE, BASELINE]:
            idle = reset_peaks(stack)
            outcome, reason = answer(client, case, files[case.name])
            peak = peaks(stack)
            good = client.post("/images", files={"file": ("g.jpg", jpeg_bytes(800, 600))})
            assert finish(client, good.json()["id"])["status"] == "DONE", case.name
            above_idle = max(peak.get(pid, 0) - idle[pid] for pid in idle)
            table.append(
                {
                    "case": case.name,
                    "answer": outcome,
                    "reason": reason,
                    "peak_above_idle_mb": round(above_idle / MB, 1),
                }
            )
            assert outcome == case.expected, (case.name, reason)
            if outcome == "error":
                assert reason, case.name
            assert above_idle <= limit, (case.name, above_idle / MB)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "hostile-e2e.json").write_text(json.dumps(table, indent=2))


@pytest.fixture
def slow_stack(database_url: str, tmp_path: Path) -> Iterator[Services]:
    settings = make_settings(
        database_url,
        tmp_path / "storage",
        # Let a scan bomb through the door, so the deadline is what stops it.
        max_jpeg_scans=100_000,
        job_timeout=1.0,
    )
    services = Services(settings, ARTIFACTS / "job-timeout")
    services.start()
    yield services
    services.stop()


def test_a_job_over_job_timeout_ends_error_and_the_worker_keeps_its_capacity(
    slow_stack: Services,
) -> None:
    with httpx.Client(base_url=slow_stack.base_url, timeout=60) as client:
        bomb = client.post("/images", files={"file": ("bomb.jpg", scan_bomb())})
        assert bomb.status_code == 202, bomb.text
        body = finish(client, bomb.json()["id"])
        assert body["status"] == "ERROR"
        assert body["error"] == "processing took longer than 1 s"
        goods = [
            client.post("/images", files={"file": ("g.jpg", jpeg_bytes(640, 480))}).json()["id"]
            for _ in range(slow_stack.settings.worker_concurrency * 2)
        ]
        assert {finish(client, image_id)["status"] for image_id in goods} == {"DONE"}
