"""What a job handler is, and what it is given to work with."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from thumbnailer.broker import Broker, Job
from thumbnailer.config import Settings
from thumbnailer.decode_budget import MemoryBudget
from thumbnailer.imaging_subprocess import DecodeRunner
from thumbnailer.repo import Repo
from thumbnailer.store import Store


@dataclass(frozen=True)
class Result:
    outcome: Literal["done", "error", "skipped"]
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """The parts a handler may use; the worker's composition root builds it once."""

    settings: Settings
    repo: Repo
    store: Store
    broker: Broker
    pool: Executor
    decoder: DecodeRunner  # imaging in child processes, killable, memory-capped
    memory: MemoryBudget  # decode memory of the jobs running at once


class Handler(Protocol):
    @property
    def kind(self) -> str:
        """The job kind this handler takes."""

    async def run(self, job: Job) -> Result:
        """Do the work. Raise to have the retry policy settle the message."""

    async def give_up(self, job: Job, reason: str) -> None:
        """Retries are spent: record the failure where clients will see it."""
