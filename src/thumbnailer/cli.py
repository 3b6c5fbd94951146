"""`thumbnailer api | worker | migrate | run | token | queues | dlq | reprocess | migrate-store |
upload | status`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from thumbnailer.config import Settings, get_settings

START_HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
}


class Unreachable(Exception):
    def __init__(self, service: str, url: str, error: BaseException) -> None:
        super().__init__(f"{service} is unreachable at {url}: {error}")
        self.service, self.url, self.error = service, url, error

    def explain(self) -> str:
        return (
            f"error: cannot reach {self.service} at {self.url}\n"
            f"  cause: {type(self.error).__name__}: {self.error}\n"
            f"  start it (e.g. `{START_HINTS[self.service]}`) or set the URL in the environment."
        )


def migrations_dir() -> Path:
    """alembic.ini beside the working directory (images), else the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "alembic.ini").is_file():
            return root
    raise SystemExit("error: alembic.ini not found in the working directory")


def migrate(settings: Settings) -> None:
    from thumbnailer.repo.admin import DatabaseUnreachable, upgrade

    try:
        upgrade(settings.database_url, migrations_dir())
    except DatabaseUnreachable as exc:
        raise Unreachable("PostgreSQL", exc.url, exc.error) from exc


async def ensure_database(database_url: str) -> None:
    from thumbnailer.repo.admin import DatabaseUnreachable
    from thumbnailer.repo.admin import ensure_database as create_if_missing

    try:
        await create_if_missing(database_url)
    except DatabaseUnreachable as exc:
        raise Unreachable("PostgreSQL", exc.url, exc.error) from exc


async def check_rabbitmq(url: str) -> None:
    import logging

    import aio_pika

    # aiormq logs the refused connection itself; our own message says it better.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception as exc:  # aio-pika raises several unrelated types for "cannot connect"
        from thumbnailer.repo.admin import redact

        raise Unreachable("RabbitMQ", redact(url), exc) from exc
    await connection.close()


@contextlib.contextmanager
def metrics_directory(settings: Settings) -> Iterator[None]:
    """An empty directory where the API processes pool their metrics, when they need one."""
    # prometheus-client reads PROMETHEUS_MULTIPROC_DIR once, on import: set it before the app.
    if settings.prometheus_multiproc_dir:
        directory = Path(settings.prometheus_multiproc_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()  # a previous run's counters would be added to this run's
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        yield
    elif settings.api_workers > 1:
        with tempfile.TemporaryDirectory(prefix="thumbnailer-metrics-") as temporary:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = temporary
            yield
    else:
        yield


def serve_api(settings: Settings) -> None:
    import uvicorn

    with metrics_directory(settings):
        if settings.auth_mode == "jwt" and settings.metrics_port:
            from thumbnailer import metrics

            metrics.serve_internal(settings.api_host, settings.metrics_port)
        uvicorn.run(
            "thumbnailer.api.app:create_app",
            factory=True,
            workers=settings.api_workers,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            # The app resolves forwarded headers itself, from FORWARDED_ALLOW_IPS only.
            proxy_headers=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_period),
        )


def serve_worker(settings: Settings) -> None:
    # One process: its metrics stay in memory even when a shared environment names the API's
    # directory, which would otherwise mix both processes' metrics (or fail where it is absent).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from thumbnailer.logging import configure_logging
    from thumbnailer.worker import run_worker

    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_worker(settings))


def storage_line(settings: Settings) -> str:
    if settings.storage_backend == "s3":
        return f"thumbnailer: images in s3://{settings.s3_bucket}/{settings.s3_prefix}"
    return (
        f"thumbnailer: images on local disk in {settings.storage_path}; for a bucket set "
        "STORAGE_BACKEND=s3 S3_BUCKET=... (S3_ENDPOINT_URL for MinIO/R2/GCS), see docs/deploy.md"
    )


def run_both(settings: Settings) -> int:
    """Development: API and one worker in the foreground; Ctrl-C stops both."""
    asyncio.run(check_rabbitmq(settings.rabbitmq_url))
    asyncio.run(ensure_database(settings.database_url))
    command = [sys.executable, "-m", "thumbnailer"]
    children = [subprocess.Popen([*command, name]) for name in ("api", "worker")]  # noqa: S603
    print(f"thumbnailer: API on http://127.0.0.1:{settings.api_port}  (Ctrl-C stops)")
    print(storage_line(settings))

    def forward(signum: int, _: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while all(child.poll() is None for child in children):
        try:
            children[0].wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    forward(signal.SIGTERM, None)
    # uvicorn re-raises the signal it stopped on; a stop we asked for is a clean exit.
    clean = {0, -signal.SIGTERM, -signal.SIGINT}
    return max((0 if child.wait() in clean else 1) for child in children)


def print_token(settings: Settings, subject: str, scope: str | None, ttl: int) -> None:
    from thumbnailer.auth import issue_token

    try:
        print(issue_token(settings, subject, scope, ttl))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def migrate_store(settings: Settings, source: str, target: str) -> int:
    """Copy STORAGE_PATH's objects into the bucket of the S3_* settings; 1 if any failed."""
    if (source, target) != ("local", "s3"):
        raise SystemExit("error: only --from local --to s3 is supported")
    if not settings.s3_bucket:
        raise SystemExit("error: set S3_BUCKET (and S3_ENDPOINT_URL etc.) to the target bucket")
    from thumbnailer.logging import configure_logging
    from thumbnailer.store import s3_store
    from thumbnailer.store.migrate import copy_tree

    configure_logging(settings.log_level, settings.log_format)

    async def copy() -> int:
        target_store = s3_store(settings)
        await target_store.open()
        try:
            report = await copy_tree(settings.storage_path.resolve(), target_store)
        finally:
            await target_store.close()
        print(
            f"migrate-store: {settings.storage_path} -> s3://{settings.s3_bucket}/"
            f"{target_store.prefix}: {report.summary()}"
        )
        return 1 if report.failed else 0

    return asyncio.run(copy())


def reprocess_command(settings: Settings, args: argparse.Namespace) -> int:
    """Enqueue the selected images at the rate given; 1 if the queue failed part-way."""
    from thumbnailer.broker import Broker, BrokerUnavailable, Topology
    from thumbnailer.lifecycle import Reprocessor
    from thumbnailer.logging import configure_logging
    from thumbnailer.repo import Repo, RepoUnavailable
    from thumbnailer.reprocess import Pacer, Report, Selection, parse_rate, reprocess_all

    configure_logging(settings.log_level, settings.log_format)
    try:
        boxes = settings.thumbnail_boxes
        selection = Selection.of(args.status, args.older_than, args.missing_sizes, boxes)
        pacer = Pacer(parse_rate(args.rate))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc

    report = Report()

    async def run() -> str | None:
        await check_rabbitmq(settings.rabbitmq_url)
        repo = Repo.connect(settings.database_url, 2)
        broker = Broker(settings.rabbitmq_url, Topology.from_settings(settings))
        try:
            await broker.connect()
            await reprocess_all(repo, Reprocessor(repo, broker), selection, pacer, report)
        except (BrokerUnavailable, RepoUnavailable) as exc:
            return str(exc)
        finally:
            await broker.close()
            await repo.close()
        return None

    failure = asyncio.run(run())
    print(f"reprocess: {report.enqueued} images enqueued, {report.skipped} skipped (busy)")
    if failure is not None:
        print(f"error: stopped part-way: {failure}", file=sys.stderr)
        return 1
    return 0


def queues_command(settings: Settings, args: argparse.Namespace) -> None:
    from thumbnailer import queues

    moved = asyncio.run(queues.upgrade(settings))
    if not moved:
        print("every queue is up to date")
    for name, count in moved.items():
        print(f"{name}: now a quorum queue ({count} messages moved)")


def dlq_command(settings: Settings, args: argparse.Namespace) -> None:
    import json

    from thumbnailer import queues

    if args.action == "list":
        for letter in asyncio.run(queues.dead_letters(settings, args.limit)):
            print(json.dumps(letter, default=str))
    elif args.action == "purge":
        print(f"purged {asyncio.run(queues.purge(settings))} messages")
    else:
        print(f"requeued {asyncio.run(_requeue(settings, args.image_id))} jobs")


async def _requeue(settings: Settings, image_id: str | None) -> int:
    import uuid

    from thumbnailer import queues
    from thumbnailer.repo import Repo

    repo = Repo.connect(settings.database_url, 1)
    try:
        return await queues.requeue(settings, repo, uuid.UUID(image_id) if image_id else None)
    finally:
        await repo.close()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="thumbnailer", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the HTTP API")
    commands.add_parser("worker", help="consume and process jobs")
    commands.add_parser("migrate", help="create the database if needed and apply migrations")
    commands.add_parser("run", help="development: API and one worker in the foreground")
    queues = commands.add_parser("queues", help="broker topology")
    queues.add_argument("action", choices=["upgrade"], help="move classic queues to quorum")
    dlq = commands.add_parser("dlq", help="the dead-letter queue")
    dlq.add_argument("action", choices=["list", "requeue", "purge"])
    dlq.add_argument("--limit", type=int, default=100, help="list: at most this many")
    dlq.add_argument("--image-id", help="requeue: only this image's jobs")
    move = commands.add_parser("migrate-store", help="copy stored objects to another backend")
    move.add_argument("--from", dest="source", choices=["local"], default="local")
    move.add_argument("--to", dest="target", choices=["s3"], default="s3")
    again = commands.add_parser(
        "reprocess", help="make thumbnails again in bulk (sizes now in THUMBNAIL_SIZES)"
    )
    again.add_argument("--status", choices=["DONE", "ERROR"], help="only images in this status")
    again.add_argument("--older-than", help="only images uploaded before this long ago: 30d, 12h")
    again.add_argument(
        "--missing-sizes",
        action="store_true",
        help="only images lacking a size now configured (DONE ones unless --status says)",
    )
    again.add_argument("--rate", default="20/s", help="most images enqueued: 20/s, 600/minute")
    token = commands.add_parser("token", help="print an HS256 token signed with JWT_SECRET")
    token.add_argument("--sub", required=True, help="the subject: who the token speaks for")
    token.add_argument("--scope", help="space-separated scopes, e.g. images:admin")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    add_client_commands(commands)
    return root


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`upload` and `status`: clients of the HTTP API (thumbnailer.client), any deployment."""
    for name, text in (
        ("upload", "upload images over the HTTP API"),
        ("status", "an image's status"),
    ):
        command = commands.add_parser(name, help=text)
        if name == "upload":
            command.add_argument("files", nargs="+", metavar="FILE")
            command.add_argument("--json", action="store_true", help="one JSON object per image")
            command.add_argument("--concurrency", type=int, default=4, help="uploads at once")
        else:
            command.add_argument("image_id", metavar="ID")
        command.add_argument("--api", help="base URL (default $THUMBNAILER_API or :8000)")
        command.add_argument("--token", help="bearer token (default $THUMBNAILER_TOKEN)")
        command.add_argument("--wait", action="store_true", help="until DONE or ERROR")


def run_client(args: argparse.Namespace) -> int:
    from thumbnailer import client

    if args.command == "upload":
        return client.upload_command(
            args.files, args.api, args.token, args.wait, args.json, args.concurrency
        )
    return client.status_command(args.image_id, args.api, args.token, args.wait)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command in ("upload", "status"):
        sys.exit(run_client(args))  # a client: the service's settings are not its business
    settings = get_settings()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        if args.command == "token":
            print_token(settings, args.sub, args.scope, args.ttl)
        elif args.command == "api":
            serve_api(settings)
        elif args.command == "worker":
            serve_worker(settings)
        elif args.command == "migrate":
            migrate(settings)
        elif args.command == "queues":
            queues_command(settings, args)
        elif args.command == "dlq":
            dlq_command(settings, args)
        elif args.command == "reprocess":
            sys.exit(reprocess_command(settings, args))
        elif args.command == "migrate-store":
            sys.exit(migrate_store(settings, args.source, args.target))
        else:
            sys.exit(run_both(settings))
    except Unreachable as exc:
        print(exc.explain(), file=sys.stderr)
        sys.exit(2)
