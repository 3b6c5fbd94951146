"""make_thumbnails in a child process with a memory rlimit and a wall-clock deadline.

A pool thread cannot be stopped: a decode that runs for minutes (a scan bomb under a generous
scan limit, a codec bug) holds its thread, and one that allocates past the pod's limit gets the
whole worker OOM-killed, taking every job in flight with it. A child process can be killed, and
its address space can be capped (RLIMIT_AS), so a job over either limit ends with a reason and
the worker keeps its capacity: the child is replaced, the parent never notices more than an
error.

Children are long-lived (one per concurrent job, started with `python -m` so nothing of the
parent is inherited: no threads, no sockets, no event loop) and reused job after job, so the
cost per job is the copy of the request and the thumbnails through a pipe, not a Python start.
A child is replaced after a timeout, a memory error or a crash.

The protocol is a length-prefixed JSON header plus raw bytes, both ways. Never pickle: the
child parses hostile files, and a compromised child must not be able to run code in the parent
by what it sends back; the parent validates what it reads.

Usage from the worker's pool thread:

    runner = DecodeRunner(processes=2, memory_limit=settings.max_decode_memory, timeout=30)
    thumbs = runner.run(path_or_bytes, boxes, max_pixels=..., jpeg_quality=...)
    runner.close()  # at shutdown
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from thumbnailer import imaging
from thumbnailer.formats import EXTENSIONS, MEDIA_TYPES
from thumbnailer.variant_spec import VariantSpec

_HEADER = 4  # bytes of the big-endian length in front of each JSON header
_MAX_HEADER = 1 << 20
# Codec errors raised under the rlimit are not always MemoryError (libjpeg reports "insufficient
# memory" through Pillow as an OSError); a failure within this much of the cap counts as memory,
# and so does one on an image whose estimate is over the limit.
_NEAR_LIMIT = 64 << 20
ERRORS: dict[str, type[imaging.ImagingError]] = {
    cls.__name__: cls
    for cls in (
        imaging.ImagingError,
        imaging.UnsupportedImage,
        imaging.ImageTooLarge,
        imaging.CorruptImage,
        imaging.TooManyScans,
        imaging.DecodeTooLarge,
    )
}


READY = b"R"
# A loaded machine can take seconds to start an interpreter and import Pillow.
START_TIMEOUT = 60.0


class JobTimeout(imaging.ImagingError):
    """The child did not finish within the deadline; it was killed."""


class DecodeOutOfMemory(imaging.ImagingError):
    """The child hit its address-space limit."""


class DecoderCrashed(imaging.ImagingError):
    """The child died (a signal, an abort in a codec) while processing the image."""


class DecodeRunner:
    """Up to `processes` children; `run` blocks the calling thread until its job is done."""

    def __init__(self, *, processes: int, memory_limit: int, timeout: float) -> None:
        if processes < 1 or memory_limit < 1 or timeout <= 0:
            raise ValueError("processes, memory_limit and timeout must be positive")
        self.memory_limit = memory_limit
        self.timeout = timeout
        self._idle: queue.Queue[_Child | None] = queue.Queue()
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._closed = False
        for _ in range(processes):
            self._idle.put(None)  # a slot; the child starts on first use

    def run(
        self,
        source: Path | bytes,
        boxes: Sequence[tuple[int, int]],
        *,
        max_pixels: int,
        jpeg_quality: int = 85,
        max_scans: int = imaging.DEFAULT_MAX_SCANS,
        max_decode_bytes: int | None = None,
        timings: dict[str, float] | None = None,
        output_format: str = "auto",
    ) -> list[imaging.Thumbnail]:
        if not boxes or any(side < 1 for box in boxes for side in box):
            raise ValueError(f"boxes must be a non-empty list of positive sizes, not {boxes!r}")
        request = {
            "boxes": [list(box) for box in boxes],
            "max_pixels": max_pixels,
            "jpeg_quality": jpeg_quality,
            "max_scans": max_scans,
            "max_decode_bytes": max_decode_bytes,
            "output_format": output_format,
        }
        return self._call(request, source, timings)

    def run_variant(
        self,
        source: Path | bytes,
        spec: VariantSpec,
        *,
        max_pixels: int,
        max_side: int,
        max_scans: int = imaging.DEFAULT_MAX_SCANS,
        max_decode_bytes: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> imaging.Thumbnail:
        """imaging.make_variant in a child, under the same caps as thumbnails."""
        request = {
            "op": "variant",
            "spec": spec.to_json(),
            "max_pixels": max_pixels,
            "max_side": max_side,
            "max_scans": max_scans,
            "max_decode_bytes": max_decode_bytes,
        }
        made = self._call(request, source, timings)
        if len(made) != 1:
            raise RuntimeError("the decode child sent a malformed answer")
        return made[0]

    def _call(
        self, request: dict[str, Any], source: Path | bytes, timings: dict[str, float] | None
    ) -> list[imaging.Thumbnail]:
        payload = b""
        if isinstance(source, bytes):
            payload = source
        else:
            request["path"] = str(source)
        child = self._idle.get()
        try:
            if self._closed:
                raise RuntimeError("the DecodeRunner is closed")
            if child is None or not child.alive():
                child = self._start()
            header, data = child.call(request, payload, self.timeout)
            if header.get("restart"):
                self._retire(child)
                child = None
        except _ChildGone as gone:
            self._retire(child)
            child = None
            raise gone.error from None
        except BaseException:
            self._retire(child)
            child = None
            raise
        finally:
            self._idle.put(child)
        return _answer(header, data, timings)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            child.stop()

    def _start(self) -> _Child:
        child = _Child(self.memory_limit)
        child.wait_ready(START_TIMEOUT)
        with self._lock:
            self._children.append(child)
        return child

    def _retire(self, child: _Child | None) -> None:
        if child is None:
            return
        child.stop()
        with self._lock:
            if child in self._children:
                self._children.remove(child)


class _ChildGone(Exception):
    def __init__(self, error: imaging.ImagingError) -> None:
        self.error = error


class _Child:
    def __init__(self, memory_limit: int) -> None:
        self.memory_limit = memory_limit
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "thumbnailer.imaging_subprocess", str(memory_limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's own warnings go to the worker's log stream
            close_fds=True,
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.stdin: IO[bytes] = self.process.stdin
        self.stdout: IO[bytes] = self.process.stdout

    def wait_ready(self, timeout: float) -> None:
        """Wait for the child's hello: start-up (imports, the rlimit) is not the job's time."""
        try:
            if self._read(1, time.monotonic() + timeout) != READY:
                raise ValueError("the decode child sent no hello")
        except (TimeoutError, OSError, EOFError, ValueError) as exc:
            self.stop()
            raise DecoderCrashed(f"the decode process did not start: {exc!r}") from None

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(
        self, request: dict[str, Any], payload: bytes, timeout: float
    ) -> tuple[dict[str, Any], bytes]:
        deadline = time.monotonic() + timeout
        request["payload"] = len(payload)
        try:
            _write_frame(self.stdin, request, payload)
            header = json.loads(self._read(_read_length(self._read(_HEADER, deadline)), deadline))
            if not isinstance(header, dict):
                raise ValueError("the child's header is not an object")
            data = self._read(int(header.get("payload", 0)), deadline)
        except TimeoutError:
            self.stop()
            raise _ChildGone(JobTimeout(f"processing took longer than {timeout:g} s")) from None
        except (OSError, EOFError, ValueError) as exc:
            code = self.process.poll() if self.process.poll() is not None else self._wait()
            raise _ChildGone(_crash(code, exc)) from None
        return header, data

    def _read(self, size: int, deadline: float) -> bytes:
        fd, chunks, left = self.stdout.fileno(), [], size
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError("the child closed its output")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _wait(self) -> int | None:
        try:
            return self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.stop()
            return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _crash(code: int | None, exc: Exception) -> imaging.ImagingError:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:  # the kernel's OOM killer, or someone else's kill
            return DecoderCrashed(f"the decoder was killed ({name})")
        return DecoderCrashed(f"the decoder crashed ({name})")
    return DecoderCrashed(f"the decoder stopped (exit code {code}): {exc}")


def _answer(
    header: dict[str, Any], data: bytes, timings: dict[str, float] | None
) -> list[imaging.Thumbnail]:
    if timings is not None:
        for stage, seconds in dict(header.get("timings", {})).items():
            timings[str(stage)] = timings.get(str(stage), 0.0) + float(seconds)
    if not header.get("ok"):
        kind, message = str(header.get("kind", "")), str(header.get("message", ""))
        if kind == "memory":
            raise DecodeOutOfMemory(message)
        if kind in ERRORS:
            raise ERRORS[kind](message)
        raise RuntimeError(f"the decode child failed: {message}")
    thumbs, offset = [], 0
    for item in header["thumbnails"]:
        size = int(item["size"])
        if size < 0 or offset + size > len(data):
            raise RuntimeError("the decode child sent a malformed answer")
        fmt = str(item["format"])
        if fmt not in MEDIA_TYPES:
            raise RuntimeError(f"the decode child sent an unknown format {fmt!r}")
        thumbs.append(
            imaging.Thumbnail(
                box=(int(item["box"][0]), int(item["box"][1])),
                width=int(item["width"]),
                height=int(item["height"]),
                data=data[offset : offset + size],
                format=fmt,
                media_type=MEDIA_TYPES[fmt],
                extension=EXTENSIONS[fmt],
            )
        )
        offset += size
    return thumbs


def _write_frame(stream: IO[bytes], header: dict[str, Any], payload: bytes) -> None:
    encoded = json.dumps(header).encode()
    stream.write(len(encoded).to_bytes(_HEADER, "big") + encoded)
    stream.write(payload)
    stream.flush()


def _read_length(raw: bytes) -> int:
    length = int.from_bytes(raw, "big")
    if length > _MAX_HEADER:
        raise ValueError("header too long")
    return length


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError
    return data


def _vm_kb(key: str) -> int:
    found = re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text())
    return int(found[1]) if found else 0


def _serve(memory_limit: int) -> None:
    """The child: one request at a time from stdin, one answer each on stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    # The cap is on top of what the idle child already maps (interpreter, Pillow, codecs).
    cap = _vm_kb("VmSize") * 1024 + memory_limit
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    stdout.write(READY)
    stdout.flush()
    while True:
        try:
            request = json.loads(_read_exactly(stdin, _read_length(_read_exactly(stdin, _HEADER))))
            payload = _read_exactly(stdin, int(request["payload"]))
        except EOFError:
            return
        source: Path | bytes = Path(request["path"]) if "path" in request else payload
        del payload
        timings: dict[str, float] = {}
        answer: dict[str, Any] = {"ok": False}
        data = b""
        try:
            thumbs = _work(request, source, timings)
            answer = {
                "ok": True,
                "thumbnails": [
                    {
                        "box": list(t.box),
                        "width": t.width,
                        "height": t.height,
                        "format": t.format,
                        "size": len(t.data),
                    }
                    for t in thumbs
                ],
            }
            data = b"".join(t.data for t in thumbs)
        except MemoryError:
            answer = _memory_answer(memory_limit)
        except imaging.DecodeTooLarge as exc:  # refused from the header: nothing was decoded
            answer = {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
        except imaging.ImagingError as exc:
            if _vm_kb("VmPeak") * 1024 >= cap - _NEAR_LIMIT or _needs_more(
                source, request, memory_limit
            ):
                answer = _memory_answer(memory_limit)
            else:
                answer = {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # a bug, not the image: the parent raises RuntimeError
            answer = {"ok": False, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
        answer["timings"] = timings
        answer["payload"] = len(data)
        _write_frame(stdout, answer, data)


def _work(
    request: dict[str, Any], source: Path | bytes, timings: dict[str, float]
) -> list[imaging.Thumbnail]:
    """One request's imaging: the thumbnails of an image, or one variant of it."""
    if request.get("op") == "variant":
        variant = imaging.make_variant(
            source,
            VariantSpec.from_json(request["spec"]),
            max_pixels=int(request["max_pixels"]),
            max_side=int(request["max_side"]),
            max_scans=int(request["max_scans"]),
            max_decode_bytes=request["max_decode_bytes"],
            timings=timings,
        )
        return [variant]
    return imaging.make_thumbnails(
        source,
        _boxes(request),
        max_pixels=int(request["max_pixels"]),
        jpeg_quality=int(request["jpeg_quality"]),
        max_scans=int(request["max_scans"]),
        max_decode_bytes=request["max_decode_bytes"],
        timings=timings,
        output_format=str(request.get("output_format", "auto")),
    )


def _boxes(request: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in request["boxes"]]


def _needs_more(source: Path | bytes, request: dict[str, Any], memory_limit: int) -> bool:
    """A single allocation over the cap fails at once, far from VmPeak (libwebp's canvas fails
    as "could not create decoder object"): then the estimate tells whether memory was why."""
    try:
        if request.get("op") == "variant":
            info = imaging.probe(source, 2**62)
            spec = VariantSpec.from_json(request["spec"])
            _, need = imaging.estimate_variant_bytes(info, spec, int(request["max_side"]))
            return need > memory_limit
        return imaging.estimate_decode_bytes(source, _boxes(request)) > memory_limit
    except (imaging.ImagingError, OSError, MemoryError, ValueError):
        return False


def _memory_answer(memory_limit: int) -> dict[str, Any]:
    # A child that ran out of address space may have fragmented heaps: replace it.
    return {
        "ok": False,
        "kind": "memory",
        "message": f"decoding needed more than {memory_limit / 2**20:.0f} MB",
        "restart": True,
    }


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
