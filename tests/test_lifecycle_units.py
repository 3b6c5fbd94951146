"""Fast checks of the lifecycle's pure parts: key layout, job arguments, the pacer."""

from __future__ import annotations

import uuid

import pytest

from thumbnailer.broker import THUMBNAILS, Job, PoisonMessage
from thumbnailer.lifecycle import GENERATION_ARG, generation_of, new_generation
from thumbnailer.reprocess import Pacer, parse_rate
from thumbnailer.store import image_prefixes, original_key, thumbnail_key
from thumbnailer.store.keys import image_id_of, thumbnail_generation_key

IMAGE = uuid.UUID("0123abcd-0000-4000-8000-000000000000")


def test_every_file_of_an_image_names_its_image() -> None:
    image = str(IMAGE)
    for key in (
        original_key(image, "JPEG"),
        thumbnail_key(image, "100x100", "WEBP"),
        thumbnail_generation_key(image, "ab12", "300x300", "PNG"),
    ):
        assert image_id_of(key) == IMAGE, key
    for key in (
        "thumbnails/not-an-image.txt",
        "elsewhere/01/0123abcd-0000-4000-8000-000000000000.jpg",
        "originals/ff/0123abcd-0000-4000-8000-000000000000.jpg",  # wrong shard: not our layout
        "originals/01/nonsense.jpg",
    ):
        assert image_id_of(key) is None, key


def test_the_image_folders_hold_its_thumbnails_and_nothing_of_another_image() -> None:
    folders = image_prefixes(str(IMAGE))
    assert all(folder.endswith(f"/{IMAGE}/") for folder in folders)
    assert any(thumbnail_key(str(IMAGE), "1x1", "JPEG").startswith(f) for f in folders)
    neighbour = "0123abcd-0000-4000-8000-000000000001"
    assert not any(thumbnail_key(neighbour, "1x1", "JPEG").startswith(f) for f in folders)


def test_generations_are_checked_where_they_enter_the_worker() -> None:
    assert generation_of(Job.thumbnails(IMAGE)) is None
    fresh = new_generation()
    assert generation_of(Job(THUMBNAILS, IMAGE, args={GENERATION_ARG: fresh})) == fresh
    for bad in ("../../etc", "", 7, "A" * 40):
        with pytest.raises(PoisonMessage, match="malformed generation"):
            generation_of(Job(THUMBNAILS, IMAGE, args={GENERATION_ARG: bad}))


async def test_the_pacer_never_allows_more_than_the_rate_in_a_window() -> None:
    pacer = Pacer(parse_rate("4/s"))
    times = [await pacer.wait() for _ in range(9)]
    for index in range(len(times) - 4):
        assert times[index + 4] - times[index] >= 0.98  # the fifth waits for the first's second
