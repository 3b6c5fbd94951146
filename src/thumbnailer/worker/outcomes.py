"""One place that turns a job's outcome into its log line and its metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from thumbnailer import metrics
from thumbnailer.logging import get_logger

log = get_logger("thumbnailer.worker")

Outcome = Literal["done", "error", "skipped", "retried", "dead_lettered"]
# outcome -> (event name in the log, level)
EVENTS: dict[str, tuple[str, str]] = {
    "done": ("job_done", "info"),
    "error": ("job_failed", "warning"),
    "skipped": ("job_already_finished", "info"),
    "retried": ("job_retry_scheduled", "warning"),
    "dead_lettered": ("job_dead_lettered", "error"),
}


def record(outcome: Outcome, **fields: Any) -> None:
    event, level = EVENTS[outcome]
    getattr(log, level)(event, **fields)
    metrics.JOBS.labels(outcome).inc()


def observe_stages(timings: Mapping[str, float]) -> None:
    for stage, seconds in timings.items():
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)
