"""`thumbnailer upload` and `thumbnailer status`: a client of the HTTP API and nothing else.

It speaks only the public contract (POST /images, GET /images/{id}?wait=), through httpx, so it
works against any deployment. Three ways to show what happens, chosen by where stdout goes:
rich progress bars on a terminal (bytes sent, then the status until DONE), plain lines when
stdout is a pipe or a file, and one JSON object per image with --json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

DEFAULT_API = "http://127.0.0.1:8000"
POLL_WAIT = 25  # seconds of each long-poll; the server caps it with MAX_POLL_WAIT
RETRIES = 5  # 429 and 503 answers waited out (Retry-After) before giving up on a file
FINAL = ("DONE", "ERROR")


@dataclass
class Outcome:
    """How one file ended: its status JSON, or why it was refused."""

    file: str
    body: dict[str, Any] | None = None
    refusal: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.body is None or self.body.get("status") == "ERROR"

    def as_json(self) -> dict[str, Any]:
        if self.body is not None:
            return {"file": self.file, **self.body}
        return {"file": self.file, "status": None, **(self.refusal or {})}


class Reporter(Protocol):
    def start(self, name: str, size: int) -> None: ...
    def sent(self, name: str, count: int) -> None: ...
    def status(self, name: str, body: dict[str, Any]) -> None: ...
    def finish(self, outcomes: list[Outcome]) -> None: ...


class ApiUnreachable(Exception):
    pass


class Counting:
    """A file whose reads report how many bytes left for the server."""

    def __init__(self, handle: IO[bytes], on_read: Callable[[int], None]) -> None:
        self.handle = handle
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.on_read(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def fileno(self) -> int:  # httpx sizes the body from it: a Content-Length, not chunks
        return self.handle.fileno()


class Api:
    def __init__(self, base_url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(POLL_WAIT + 30, connect=10)
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def send(self, request: Callable[[], Any]) -> httpx.Response:
        """The answer, once any 429/503 with Retry-After has been waited out (RETRIES times)."""
        for _ in range(RETRIES):
            try:
                response: httpx.Response = await request()
            except httpx.TransportError as exc:
                raise ApiUnreachable(f"{self.http.base_url}: {exc}") from exc
            retry_after = response.headers.get("retry-after", "")
            if response.status_code not in (429, 503) or not retry_after.isdigit():
                return response
            await asyncio.sleep(min(int(retry_after), 30))
        return response

    async def upload(self, path: Path, on_sent: Callable[[int], None]) -> httpx.Response:
        sent = 0

        def count(size: int) -> None:
            nonlocal sent
            sent += size
            on_sent(size)

        async def post() -> httpx.Response:
            count(-sent)  # a retry sends the file again from its start
            with path.open("rb") as handle:
                counted = cast(IO[bytes], Counting(handle, count))  # read, seek, tell, fileno
                files = {"file": (path.name, counted)}
                return await self.http.post("/images", files=files)

        return await self.send(post)

    async def status(
        self, image_id: str, wait: float = 0, etag: str | None = None
    ) -> httpx.Response:
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": wait} if wait else {}
        return await self.send(
            lambda: self.http.get(f"/images/{image_id}", params=params, headers=headers)
        )

    async def follow(
        self, image_id: str, on_change: Callable[[dict[str, Any]], None]
    ) -> httpx.Response:
        """Long-poll until DONE or ERROR; each new state goes to on_change."""
        etag: str | None = None
        while True:
            response = await self.status(image_id, POLL_WAIT, etag)
            if response.status_code == 304:
                continue
            if response.status_code != 200:
                return response
            body = response.json()
            on_change(body)
            if body["status"] in FINAL:
                return response
            etag = response.headers.get("etag")


def refusal(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200] or response.reason_phrase}
    return {
        "http_status": response.status_code,
        "detail": body.get("detail"),
        "code": body.get("code"),
    }


async def upload_one(api: Api, path: Path, wait: bool, report: Reporter) -> Outcome:
    name = path.name
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except OSError as exc:
        return Outcome(name, refusal={"detail": f"cannot read {path}: {exc.strerror}"})
    report.start(name, size)
    response = await api.upload(path, lambda count: report.sent(name, count))
    if response.status_code != 202:
        outcome = Outcome(name, refusal=refusal(response))
        report.status(name, {"status": "REFUSED", "error": outcome.refusal["detail"]})  # type: ignore[index]
        return outcome
    image_id = response.json()["id"]
    report.status(name, response.json())
    if wait:
        response = await api.follow(image_id, lambda body: report.status(name, body))
    else:
        response = await api.status(image_id)
    if response.status_code != 200:
        return Outcome(name, refusal=refusal(response))
    return Outcome(name, body=response.json())


async def upload_all(
    base_url: str,
    token: str | None,
    paths: list[Path],
    wait: bool,
    concurrency: int,
    report: Reporter,
) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)

    async def one(path: Path) -> Outcome:
        async with gate:
            return await upload_one(api, path, wait, report)

    async with Api(base_url, token) as api:
        return list(await asyncio.gather(*(one(path) for path in paths)))


# --- what the person sees ---------------------------------------------------------------------


def urls_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    renditions = body.get("renditions") or []
    if renditions:
        return [(r["label"], r["url"]) for r in renditions]
    return [(label, url) for label, url in (body.get("thumbnails") or {}).items() if url]


def summary_lines(outcome: Outcome) -> list[str]:
    if outcome.body is None:
        refused = outcome.refusal or {}
        return [
            f"{outcome.file}: refused ({refused.get('http_status', '-')}): {refused.get('detail')}"
        ]
    body = outcome.body
    head = f"{outcome.file}: {body['status']} {body['id']}"
    if body["status"] == "ERROR":
        return [f"{head}: {body.get('error')}"]
    return [head, *(f"  {label:>9}  {url}" for label, url in urls_of(body))]


class RichReporter:
    """A bar per file: bytes sent, then the status until the image is DONE or ERROR."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def start(self, name: str, size: int) -> None:
        self.tasks[name] = self.progress.add_task(name, total=size, status="uploading")

    def sent(self, name: str, count: int) -> None:
        self.progress.advance(self.tasks[name], count)

    def status(self, name: str, body: dict[str, Any]) -> None:
        styles = {"DONE": "green", "ERROR": "red", "REFUSED": "red"}
        style = styles.get(body["status"], "yellow")
        self.progress.update(self.tasks[name], status=f"[{style}]{body['status']}")

    def finish(self, outcomes: list[Outcome]) -> None:
        self.progress.stop()
        for outcome in outcomes:
            for line in summary_lines(outcome):
                self.console.print(line, highlight=False, soft_wrap=True)


class PlainReporter:
    """One line per event, for logs and pipes: no bars, no colours."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.last: dict[str, str] = {}

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def start(self, name: str, size: int) -> None:
        print(f"{name}: uploading {size} bytes", file=self.out, flush=True)

    def sent(self, name: str, count: int) -> None:
        pass

    def status(self, name: str, body: dict[str, Any]) -> None:
        if self.last.get(name) != body["status"]:
            self.last[name] = body["status"]
            print(f"{name}: {body['status']}", file=self.out, flush=True)

    def finish(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            for line in summary_lines(outcome):
                print(line, file=self.out, flush=True)


class JsonReporter(PlainReporter):
    """Nothing but one JSON object per image, in the order the files were given."""

    def start(self, name: str, size: int) -> None:
        pass

    def status(self, name: str, body: dict[str, Any]) -> None:
        pass

    def finish(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            print(json.dumps(outcome.as_json()), file=self.out, flush=True)


def reporter_for(as_json: bool, out: IO[str] = sys.stdout) -> RichReporter | PlainReporter:
    if as_json:
        return JsonReporter(out)
    console = Console(file=out)
    if console.is_terminal:
        return RichReporter(console)
    return PlainReporter(out)


# --- commands ---------------------------------------------------------------------------------


def api_url(given: str | None) -> str:
    return (given or os.environ.get("THUMBNAILER_API") or DEFAULT_API).rstrip("/")


def token_of(given: str | None) -> str | None:
    return given or os.environ.get("THUMBNAILER_TOKEN") or None


def upload_command(
    files: list[str],
    api: str | None,
    token: str | None,
    wait: bool,
    as_json: bool,
    concurrency: int,
) -> int:
    """0 when every image was accepted (and, with --wait, is DONE); 1 otherwise; 2 no API."""
    paths = [Path(name) for name in files]
    with reporter_for(as_json) as report:
        try:
            outcomes = asyncio.run(
                upload_all(api_url(api), token_of(token), paths, wait, max(1, concurrency), report)
            )
        except ApiUnreachable as exc:
            print(f"error: cannot reach the API at {exc}", file=sys.stderr)
            return 2
        report.finish(outcomes)
    return 1 if any(outcome.failed for outcome in outcomes) else 0


def status_command(image_id: str, api: str | None, token: str | None, wait: bool) -> int:
    """Print the status JSON; 1 when the image is unknown or ended ERROR; 2 no API."""

    async def fetch() -> httpx.Response:
        async with Api(api_url(api), token_of(token)) as client:
            if wait:
                return await client.follow(image_id, lambda _: None)
            return await client.status(image_id)

    try:
        response = asyncio.run(fetch())
    except ApiUnreachable as exc:
        print(f"error: cannot reach the API at {exc}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        print(json.dumps(refusal(response)), file=sys.stderr)
        return 1
    body = response.json()
    print(json.dumps(body, indent=2 if sys.stdout.isatty() else None))
    return 1 if body["status"] == "ERROR" else 0
