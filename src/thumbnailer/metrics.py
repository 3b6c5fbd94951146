"""Every Prometheus metric of both processes, defined in one place.

With several API processes (uvicorn --workers), PROMETHEUS_MULTIPROC_DIR names a shared empty
directory (the CLI prepares it before any process imports this module): prometheus-client then
writes each process's values there and `render` aggregates them. The worker is one process and
never uses it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

STAGES = ("read", "decode", "resize", "encode", "placeholder", "write")
OUTCOMES = ("done", "error", "retried", "dead_lettered", "skipped")
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SIZE_BUCKETS = tuple(2.0**n for n in range(10, 31, 2))  # 1 KiB .. 1 GiB

# API
UPLOAD_BYTES = Counter("thumbnailer_upload_bytes", "Bytes of accepted uploads.")
UPLOAD_SIZE = Histogram(
    "thumbnailer_upload_size_bytes", "Size of accepted uploads.", buckets=_SIZE_BUCKETS
)
PUBLISH_FAILURES = Counter(
    "thumbnailer_publish_failures", "Jobs that could not be published (left for the relay)."
)
RELAY_REPUBLISHED = Counter(
    "thumbnailer_relay_republished", "Jobs the relay published for NEW or stale rows."
)
RETENTION_REMOVED = Counter(
    "thumbnailer_retention_removed",
    "What the retention sweep removed, by kind: images (rows past retention), files (theirs), "
    "orphan_files (no row points at them), idempotency_keys (expired).",
    ["kind"],
)
RATE_LIMITED = Counter(
    "thumbnailer_rate_limited", "Requests refused with 429, by limit.", ["limit"]
)
RATE_LIMIT_UNAVAILABLE = Counter(
    "thumbnailer_rate_limit_unavailable",
    "Requests served without a rate-limit check because Redis was unreachable (fail open).",
)
AUTH_FAILURES = Counter(
    "thumbnailer_auth_failures", "Requests refused with 401, by reason.", ["reason"]
)
# Every API process measures the same global facts: the latest measurement wins, so a process
# that died is outvoted by the next refresh of a live one (live* modes would need a death hook).
IMAGES_BY_STATUS = Gauge(
    "thumbnailer_images", "Rows by status.", ["status"], multiprocess_mode="mostrecent"
)
QUEUE_MESSAGES = Gauge(
    "thumbnailer_queue_messages",
    "Messages ready in each queue.",
    ["queue"],
    multiprocess_mode="mostrecent",
)

# Worker
JOBS = Counter(
    "thumbnailer_jobs",
    "Jobs settled, by outcome: done, error, retried, dead_lettered, skipped.",
    ["outcome"],
)
JOB_SECONDS = Histogram(
    "thumbnailer_job_duration_seconds", "Wall time of one job, delivery to ack.",
    buckets=_STAGE_BUCKETS,
)  # fmt: skip
STAGE_SECONDS = Histogram(
    "thumbnailer_job_stage_seconds", "Time per processing stage.", ["stage"],
    buckets=_STAGE_BUCKETS,
)  # fmt: skip
JOBS_IN_FLIGHT = Gauge(
    "thumbnailer_jobs_in_flight", "Jobs being processed now.", multiprocess_mode="livesum"
)
POOL_BUSY = Gauge(
    "thumbnailer_pool_busy_threads", "Imaging threads busy now.", multiprocess_mode="livesum"
)
POOL_SIZE = Gauge(
    "thumbnailer_pool_threads", "Imaging threads available.", multiprocess_mode="livesum"
)

# Series exist at zero from the start, so rate() and ratios work before the first event.
for _outcome in OUTCOMES:
    JOBS.labels(_outcome)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
for _kind in ("images", "files", "orphan_files", "idempotency_keys"):
    RETENTION_REMOVED.labels(_kind)
for _limit in ("uploads", "requests"):
    RATE_LIMITED.labels(_limit)
for _reason in ("missing", "invalid"):
    AUTH_FAILURES.labels(_reason)


def serve_internal(host: str, port: int) -> None:
    """/metrics on its own port, from a thread of this process (AUTH_MODE=jwt keeps it off the
    public API port). With several uvicorn workers this is their supervisor, which serves the
    sum from the shared directory; with one, the very process that records them."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, host, registry)
    else:
        start_http_server(port, host)


def render() -> tuple[bytes, str]:
    """The exposition text for this process, or for all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
