"""PostgreSQL behind one boundary: rows in, frozen records out, `RepoUnavailable` on failure."""

from thumbnailer.repo.images import Repo, RepoUnavailable
from thumbnailer.repo.notify import StatusNotifier
from thumbnailer.repo.schema import Base

__all__ = ["Base", "Repo", "RepoUnavailable", "StatusNotifier"]
