"""What a page shows before a thumbnail loads: a BlurHash, the dominant colour, the aspect ratio.

Pure and synchronous, like `imaging`: the worker runs it in its thread pool on the smallest
thumbnail it has just encoded (our own small JPEG or WebP, so no decode budget is needed).

BlurHash rather than ThumbHash: its authors (Wolt) keep both ends, a C encoder for Python
(`blurhash-python`, wheels) and the decoder front ends use (`blurhash` on npm, vendored in
static/), while the ThumbHash ports on PyPI are small one-person projects. ThumbHash's extras
(alpha, the aspect ratio inside the hash) are covered here by `aspect_ratio` beside the hash.
"""

from __future__ import annotations

import io
from typing import cast

import blurhash
from PIL import Image

from thumbnailer.records import Placeholder

# Components along the longer and the shorter side: 4x3 is BlurHash's own default, ~28 chars.
LONG_COMPONENTS = 4
SHORT_COMPONENTS = 3
# Both are of a blur: from 32 px instead of 100 the hash is the same and the median cut ten
# times faster (5 ms -> 0.5 ms per image measured).
REDUCED_SIDE = 32
PALETTE_COLOURS = 8
BACKDROP = (255, 255, 255)  # transparent pixels are shown on the page's white


def make_placeholder(thumbnail: bytes, aspect_ratio: float) -> Placeholder:
    """From an encoded thumbnail; `aspect_ratio` comes from the largest one (least rounded)."""
    with Image.open(io.BytesIO(thumbnail)) as opened:
        image = _flattened(opened)
    image.thumbnail((REDUCED_SIDE, REDUCED_SIDE), Image.Resampling.BILINEAR)
    return Placeholder(
        hash=_blurhash(image),
        color=_hex(dominant_colour(image)),
        aspect_ratio=round(aspect_ratio, 4),
    )


def dominant_colour(image: Image.Image) -> tuple[int, int, int]:
    """The most common colour after a median-cut to a few colours: the colour a person would
    name, where the mean of a red and a blue half is a purple nobody sees."""
    palette_image = image.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    counts = palette_image.getcolors(PALETTE_COLOURS) or [(1, 0)]
    # A palette image's "colours" are its palette indices.
    index = cast(int, max(counts, key=lambda count: count[0])[1])
    palette = palette_image.getpalette() or [0, 0, 0]
    red, green, blue = palette[3 * index : 3 * index + 3]
    return red, green, blue


def _flattened(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*BACKDROP, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return image.convert("RGB")


def _blurhash(image: Image.Image) -> str:
    wide = image.width >= image.height
    x = LONG_COMPONENTS if wide else SHORT_COMPONENTS
    y = SHORT_COMPONENTS if wide else LONG_COMPONENTS
    # encode() closes the image it is given: give it a copy.
    return str(blurhash.encode(image.copy(), x, y))


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)
