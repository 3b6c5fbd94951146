"""Files a process left behind when it died mid-write: spooled uploads, partial store writes."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path


def remove_files_older_than(directory: Path, seconds: float) -> int:
    """Remove the plain files in `directory` last written over `seconds` ago; returns how many.

    Only files older than any write may take are touched, so other processes sharing the
    directory keep the writes they have in progress.
    """
    cutoff = time.time() - seconds
    removed = 0
    for entry in os.scandir(directory):
        with suppress(FileNotFoundError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.remove(entry.path)
                removed += 1
    return removed
