"""The retry policy: from an attempt number and what it raised, how a message is settled.

Pure: no I/O, so every branch has a fast unit test. Transient failures (database, storage,
broker) and bugs alike are retried with back-off, a bounded number of times, so a message is
never left unacked for ever and never loops; what no retry can fix is dead-lettered at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from thumbnailer.broker import BrokerUnavailable, PoisonMessage
from thumbnailer.fetch import SourceUnavailable
from thumbnailer.repo import RepoUnavailable
from thumbnailer.store import StoreError

TRANSIENT: tuple[type[BaseException], ...] = (
    RepoUnavailable,
    StoreError,
    OSError,
    BrokerUnavailable,
    SourceUnavailable,  # a webhook receiver down or refusing; URL ingest settles its own
)


@dataclass(frozen=True)
class Ack:
    """The job settled itself (done, or failed for good with its row in ERROR)."""


@dataclass(frozen=True)
class Retry:
    attempt: int  # the attempt number the retried message will carry
    reason: str


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # for the log: the full cause
    give_up: bool  # True: the handler records the failure (e.g. the row ends ERROR)
    public: str = ""  # for the client: what went wrong, without internals

    @property
    def for_client(self) -> str:
        return self.public or self.reason


Decision = Ack | Retry | DeadLetter


def is_bug(exc: BaseException) -> bool:
    """Neither an outage nor a bad message: worth a traceback in the log."""
    return not isinstance(exc, (*TRANSIENT, PoisonMessage))


def decide(attempt: int, exc: BaseException | None, max_retries: int) -> Decision:
    if exc is None:
        return Ack()
    if isinstance(exc, PoisonMessage):
        return DeadLetter(str(exc), give_up=False)
    reason = f"{type(exc).__name__}: {exc}"
    if attempt < max_retries:
        return Retry(attempt + 1, reason)
    return DeadLetter(
        f"gave up after {attempt} retries: {reason}",
        give_up=True,
        public=f"processing failed {attempt + 1} times ({what_failed(exc)}); gave up",
    )


def what_failed(exc: BaseException) -> str:
    """A cause a person can act on: no class names, SQL, hosts or addresses."""
    if isinstance(exc, RepoUnavailable):
        return "the database was unavailable"
    if isinstance(exc, StoreError):
        return "storage was unavailable"
    if isinstance(exc, BrokerUnavailable):
        return "the message broker was unavailable"
    if isinstance(exc, SourceUnavailable):
        return f"the remote end failed: {exc.reason}"
    if isinstance(exc, OSError):
        return "a file or network operation failed"
    return "an internal error; the worker's log has the details"


def interrupted_too_often(delivery: int, max_deliveries: int) -> DeadLetter | None:
    """A message cut short `max_deliveries` times (worker killed mid-job) is not run again.

    A job that kills the process it runs in (an out-of-memory kill, a codec crash) would
    otherwise go round every worker for ever.
    """
    if delivery < max_deliveries:
        return None
    return DeadLetter(f"processing stopped the worker {delivery} times", give_up=True)
