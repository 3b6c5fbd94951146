"""PostgreSQL behind one boundary: rows in, frozen records out, `RepoUnavailable` on failure."""

from thumbnailer.repo.idempotency import IdempotencyKeys, KeyHolder, KeyName
from thumbnailer.repo.images import Repo, RepoUnavailable
from thumbnailer.repo.notify import StatusNotifier
from thumbnailer.repo.schema import Base

__all__ = [
    "Base",
    "IdempotencyKeys",
    "KeyHolder",
    "KeyName",
    "Repo",
    "RepoUnavailable",
    "StatusNotifier",
]
