"""`thumbnailer upload` / `status` as a person and a script run them, against the real API and
worker processes: in a pseudo-terminal (pexpect) with progress bars, piped as plain lines, and
with --json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import Services
from tests.support import ROOT, jpeg_bytes, photo_jpeg

pytestmark = pytest.mark.e2e
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
URL_LINE = re.compile(r"^\s+(100x100|300x300|1200x1200)\s+(http://\S+)$", re.M)


def thumbnailer(*args: str) -> list[str]:
    return [sys.executable, "-m", "thumbnailer", *args]


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    files = {
        "beach.jpg": photo_jpeg(3000, 2000),
        "flat.jpg": jpeg_bytes(800, 600, (30, 140, 200)),
        "broken.jpg": jpeg_bytes(1600, 1200)[:3000],  # a JPEG header, truncated data
        "notes.txt": b"not an image at all\n" * 20,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def test_upload_in_a_terminal_shows_progress_then_the_urls(
    services: Services, pictures: dict[str, Path]
) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "thumbnailer", "upload", "--wait", "--api", services.base_url,
         str(pictures["beach.jpg"]), str(pictures["flat.jpg"])],
        cwd=str(ROOT), env={**services.env, "TERM": "xterm-256color", "COLUMNS": "140"},
        dimensions=(30, 140), encoding="utf-8", timeout=90,
    )  # fmt: skip
    child.expect("uploading")  # the bars come up before anything is finished
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", str(child.before)).replace("\r\n", "\n")
    assert child.exitstatus == 0, screen
    assert "━" in screen  # rich's bar
    assert re.search(r"\d+(\.\d)?/\d+(\.\d)? [kM]B", screen), screen  # bytes sent / total
    assert "DONE" in screen
    urls = URL_LINE.findall(screen)
    assert sorted(label for label, _ in urls) == sorted(["100x100", "300x300", "1200x1200"] * 2)
    with httpx.Client(timeout=10) as client:
        for _, url in urls:
            assert client.get(url).status_code == 200, url


def test_json_gives_one_object_per_image_and_a_failure_exits_1(
    services: Services, pictures: dict[str, Path]
) -> None:
    names = ["flat.jpg", "broken.jpg", "notes.txt"]
    result = subprocess.run(
        thumbnailer("upload", "--json", "--wait", "--api", services.base_url,
                    *(str(pictures[n]) for n in names)),
        cwd=ROOT, env=services.env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["file"] for o in objects] == names
    flat, broken, notes = objects
    assert flat["status"] == "DONE"
    assert [r["label"] for r in flat["renditions"]] == ["100x100", "300x300", "1200x1200"]
    assert broken["status"] == "ERROR"
    assert broken["error"]
    assert (notes["status"], notes["http_status"], notes["code"]) == (
        None,
        415,
        "unsupported_image",
    )

    status = subprocess.run(
        thumbnailer("status", flat["id"], "--api", services.base_url),
        cwd=ROOT, env=services.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert status.returncode == 0
    assert json.loads(status.stdout)["renditions"] == flat["renditions"]
    failed = subprocess.run(
        thumbnailer("status", broken["id"], "--wait", "--api", services.base_url),
        cwd=ROOT, env=services.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "ERROR"


def test_piped_output_is_plain_lines(services: Services, pictures: dict[str, Path]) -> None:
    result = subprocess.run(
        thumbnailer("upload", "--wait", "--api", services.base_url, str(pictures["flat.jpg"])),
        cwd=ROOT, env=services.env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"flat.jpg: uploading {pictures['flat.jpg'].stat().st_size} bytes"
    assert "flat.jpg: DONE" in lines
    assert re.match(r"^flat\.jpg: DONE [0-9a-f-]{36}$", lines[-4]), lines
    assert len(URL_LINE.findall(result.stdout)) == 3


def test_an_unreachable_api_says_so(pictures: dict[str, Path]) -> None:
    result = subprocess.run(
        thumbnailer("upload", "--api", "http://127.0.0.1:9", str(pictures["flat.jpg"])),
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot reach the API at http://127.0.0.1:9" in result.stderr
