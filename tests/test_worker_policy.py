"""The retry policy, branch by branch: pure, so no servers needed."""

from __future__ import annotations

import pytest

from thumbnailer.broker import BrokerUnavailable, PoisonMessage
from thumbnailer.repo import RepoUnavailable
from thumbnailer.store import StoreError
from thumbnailer.worker.policy import Ack, DeadLetter, Retry, decide, is_bug

TRANSIENT = [RepoUnavailable("db down"), StoreError("disk"), BrokerUnavailable("x"), OSError()]


def test_success_is_acked() -> None:
    assert decide(0, None, max_retries=5) == Ack()
    assert decide(5, None, max_retries=5) == Ack()


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_failures_retry_with_the_next_attempt(exc: Exception) -> None:
    decision = decide(2, exc, max_retries=5)
    assert isinstance(decision, Retry)
    assert decision.attempt == 3
    assert type(exc).__name__ in decision.reason


def test_a_bug_is_retried_like_an_outage_and_flagged() -> None:
    exc = ZeroDivisionError("oops")
    assert is_bug(exc)
    assert decide(0, exc, max_retries=1) == Retry(1, "ZeroDivisionError: oops")


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_outages_are_not_bugs(exc: Exception) -> None:
    assert not is_bug(exc)


def test_spent_retries_dead_letter_and_give_up() -> None:
    decision = decide(5, RepoUnavailable("connection to 10.1.2.3:5432 refused"), max_retries=5)
    assert decision == DeadLetter(
        "gave up after 5 retries: RepoUnavailable: connection to 10.1.2.3:5432 refused",
        give_up=True,
        public="processing failed 6 times (the database was unavailable); gave up",
    )
    assert "10.1.2.3" not in decision.for_client


@pytest.mark.parametrize(
    ("exc", "told"),
    [
        (StoreError("/data/storage/x: ENOSPC"), "storage was unavailable"),
        (BrokerUnavailable("amqp://guest@rabbit"), "the message broker was unavailable"),
        (OSError("read /mnt/x"), "a file or network operation failed"),
        (KeyError("thumbnails"), "an internal error; the worker's log has the details"),
    ],
)
def test_the_client_is_told_what_failed_without_internals(exc: Exception, told: str) -> None:
    decision = decide(1, exc, max_retries=1)
    assert isinstance(decision, DeadLetter)
    assert decision.for_client == f"processing failed 2 times ({told}); gave up"
    assert type(exc).__name__ not in decision.for_client


def test_no_retries_configured_gives_up_at_once() -> None:
    assert isinstance(decide(0, StoreError("disk"), max_retries=0), DeadLetter)


def test_poison_is_dead_lettered_at_once_without_giving_up_a_row() -> None:
    decision = decide(0, PoisonMessage("malformed job body"), max_retries=5)
    assert decision == DeadLetter("malformed job body", give_up=False)
    assert decision.for_client == "malformed job body"
    assert not is_bug(PoisonMessage("x"))
