"""Helpers shared by the tests: isolated resources, real processes, sample images."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from PIL import Image

from thumbnailer.config import Settings

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
ADMIN_DATABASE_URL = os.environ.get(
    "TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Every Redis key of this run starts so: runs (and other engineers' suites) never share counters.
REDIS_KEY_PREFIX = f"thumbnailer_test_{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def jpeg_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(width: int, height: int, mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    color: Any = (10, 120, 200, 128) if mode == "RGBA" else 128
    Image.new(mode, (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth shapes, gradients and fine grain: compresses like a photo (~2-4 bits/pixel) and
    costs the worker real decode and resize time, like one."""
    coarse = Image.effect_noise((max(2, width // 64), max(2, height // 64)), 90 + seed)
    smooth = coarse.resize((width, height), Image.Resampling.BICUBIC)
    gradient = Image.linear_gradient("L").resize((width, height))
    grain = Image.effect_noise((width, height), 60)
    red = Image.blend(Image.blend(smooth, gradient, 0.4), grain, 0.25)
    green = Image.blend(smooth.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grain, 0.2)
    blue = Image.blend(smooth.transpose(Image.Transpose.FLIP_TOP_BOTTOM), grain, 0.3)
    return Image.merge("RGB", (red, green, blue))


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    photo_like(width, height, seed).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def multipart_body(data: bytes, filename: str = "upload.jpg", **fields: str) -> tuple[bytes, str]:
    """The body and Content-Type httpx would send for an upload: for raw-socket tests."""
    request = httpx.Request(
        "POST", "http://t/images", data=fields or None, files={"file": (filename, data)}
    )
    return request.read(), request.headers["content-type"]


def fitted(size: tuple[int, int], box: int) -> tuple[int, int]:
    """The size a `size` image must have once fitted in a `box` square, never enlarged."""
    width, height = size
    scale = min(box / width, box / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class ServiceProcess:
    """A real `python -m thumbnailer <command>` subprocess, logs captured to a file."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")  # this run only: tests read the logs back
        self.process = subprocess.Popen(
            [sys.executable, "-m", "thumbnailer", self.name],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the environment variable a process would read it from.

    Empty values are left out: for our settings empty means unset, and some libraries
    (prometheus-client's PROMETHEUS_MULTIPROC_DIR) treat a variable that is set as in use.
    """
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, list | tuple):
            value = ",".join(str(item) for item in value)
        if str(value):
            env[name.upper()] = str(value)
    return env


def service_env(settings_env: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "RABBITMQ_"))}
    env.update(settings_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")
