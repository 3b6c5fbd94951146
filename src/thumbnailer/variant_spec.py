"""What a variant is, as data: parsing, normalising and naming a spec. Pure: no I/O, no Pillow.

A spec is normalised before anything else looks at it, so two requests that can only give the
same bytes are the same spec, with the same id (uuid5 of the image id and the canonical JSON):
the defaults are filled in (contain, colour, JPEG, quality 80), `jpg` is `jpeg`, and a PNG's
quality (which changes nothing) is dropped. cover and fill need both sides; with one side
given, the other follows the image's aspect ratio (contain).

Two spellings reach it: the JSON body of POST /images/{id}/variants, and the compact syntax of
the upload form (`resize:800x600,fit:cover,grayscale,format:webp,quality:80`) with the form
fields width, height and preserve_ratio.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

Fit = Literal["contain", "cover", "fill"]
OutputFormat = Literal["jpeg", "png", "webp", "avif"]
FITS: tuple[str, ...] = get_args(Fit)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
DEFAULT_FORMAT: OutputFormat = "jpeg"
DEFAULT_QUALITY = 80
# Pillow's format names for ours.
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
# A fixed namespace: variant ids must stay the same across processes, versions and restarts.
NAMESPACE = uuid.UUID("6f1f7c1e-5b9a-4f0e-9a57-1d3c0b6e2a41")
_SIZE = re.compile(r"^(\d{1,6})?x(\d{1,6})?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SpecError(ValueError):
    """A spec that cannot be made; the message says which part and why (422 for the client)."""


class SyntaxProblem(SpecError):
    """A token of the compact syntax that cannot be read."""

    def __init__(self, token: str, reason: str) -> None:
        super().__init__(f"transformations: {token!r}: {reason}")
        self.token = token


@dataclass(frozen=True)
class VariantSpec:
    width: int | None
    height: int | None
    fit: Fit = "contain"
    grayscale: bool = False
    format: OutputFormat = DEFAULT_FORMAT
    quality: int | None = DEFAULT_QUALITY  # None for PNG (lossless; a quality changes nothing)

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "fit": self.fit,
            "grayscale": self.grayscale,
            "format": self.format,
            "quality": self.quality,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> VariantSpec:
        return make_spec(
            width=value.get("width"),
            height=value.get("height"),
            fit=value.get("fit"),
            grayscale=bool(value.get("grayscale", False)),
            format=value.get("format"),
            quality=value.get("quality"),
        )

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def longest_side(self) -> int:
        return max(self.width or 0, self.height or 0)

    @property
    def pillow_format(self) -> str:
        return PILLOW_FORMATS[self.format]


def make_spec(
    *,
    width: int | None = None,
    height: int | None = None,
    fit: str | None = None,
    grayscale: bool = False,
    format: str | None = None,
    quality: int | None = None,
) -> VariantSpec:
    """The normalised spec, or SpecError naming what is wrong."""
    for name, side in (("width", width), ("height", height)):
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 1):
            raise SpecError(f"{name} must be a positive whole number of pixels")
    if width is None and height is None:
        raise SpecError("give a width, a height or both")
    chosen_fit = fit or "contain"
    if chosen_fit not in FITS:
        raise SpecError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    if chosen_fit != "contain" and (width is None or height is None):
        raise SpecError(f"fit {chosen_fit} needs both a width and a height")
    chosen_format = (format or DEFAULT_FORMAT).lower()
    if chosen_format == "jpg":
        chosen_format = "jpeg"
    if chosen_format not in OUTPUT_FORMATS:
        raise SpecError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, not {format!r}")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
    ):
        raise SpecError("quality must be a whole number from 1 to 100")
    return VariantSpec(
        width=width,
        height=height,
        fit=cast(Fit, chosen_fit),
        grayscale=bool(grayscale),
        format=cast(OutputFormat, chosen_format),
        quality=None if chosen_format == "png" else (quality or DEFAULT_QUALITY),
    )


def variant_id(image_id: uuid.UUID, spec: VariantSpec) -> uuid.UUID:
    """The same image and the same normalised spec: the same id, in any process, at any time."""
    return uuid.uuid5(NAMESPACE, f"{image_id}/{spec.canonical()}")


def check_limits(spec: VariantSpec, max_side: int) -> None:
    """SpecError when a side is over MAX_VARIANT_SIZE."""
    if spec.longest_side() > max_side:
        raise SpecError(
            f"a variant may be at most {max_side} pixels on its longest side; "
            f"{spec.longest_side()} was asked for"
        )


def parse_transformations(text: str) -> dict[str, Any]:
    """The compact syntax as make_spec's arguments; SyntaxProblem names the first bad token.

    Tokens, comma-separated, each at most once: `resize:WxH` (`Wx` or `xH` for one side),
    `fit:contain|cover|fill`, `grayscale` (or `greyscale`), `format:jpeg|png|webp|avif`,
    `quality:1-100`.
    """
    found: dict[str, Any] = {}
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise SyntaxProblem(raw, "an empty transformation (two commas, or one at an end)")
        name, _, value = token.partition(":")
        name = name.strip().lower()
        value = value.strip()
        for key, parsed in _token(token, name, value).items():
            if key in found:
                raise SyntaxProblem(token, f"{name} is given more than once")
            found[key] = parsed
    return found


def _token(token: str, name: str, value: str) -> dict[str, Any]:
    if name in ("grayscale", "greyscale"):
        if value and value.lower() not in _TRUE | _FALSE:
            raise SyntaxProblem(token, "grayscale takes no value (or true/false)")
        return {"grayscale": not value or value.lower() in _TRUE}
    if not value:
        raise SyntaxProblem(token, f"{name or 'the name'} needs a value after ':'")
    if name == "resize":
        match = _SIZE.match(value.lower())
        if match is None or not any(match.groups()):
            raise SyntaxProblem(token, "resize takes WIDTHxHEIGHT, WIDTHx or xHEIGHT")
        sides = [int(side) if side else None for side in match.groups()]
        if any(side == 0 for side in sides):
            raise SyntaxProblem(token, "a side of 0 pixels")
        return {"width": sides[0], "height": sides[1]}
    if name == "fit":
        if value.lower() not in FITS:
            raise SyntaxProblem(token, f"fit is one of {', '.join(FITS)}")
        return {"fit": value.lower()}
    if name == "format":
        if value.lower() not in (*OUTPUT_FORMATS, "jpg"):
            raise SyntaxProblem(token, f"format is one of {', '.join(OUTPUT_FORMATS)}")
        return {"format": value.lower()}
    if name == "quality":
        if not value.isdigit() or not 1 <= int(value) <= 100:
            raise SyntaxProblem(token, "quality is a whole number from 1 to 100")
        return {"quality": int(value)}
    raise SyntaxProblem(token, "unknown; use resize, fit, grayscale, format or quality")


def spec_from_form(
    transformations: str | None,
    width: str | None = None,
    height: str | None = None,
    preserve_ratio: str | None = None,
) -> VariantSpec | None:
    """The variant an upload form asks for, or None when it asks for none.

    width/height/preserve_ratio say the same as `resize` and `fit` (preserve_ratio=false is
    fill); saying it twice is refused rather than guessed at.
    """
    given = {name: value for name, value in (("width", width), ("height", height)) if value}
    if not transformations and not given and preserve_ratio is None:
        return None
    found = parse_transformations(transformations) if transformations else {}
    for name, value in given.items():
        if not value.strip().isdigit() or int(value) < 1:
            raise SpecError(f"{name} must be a positive whole number of pixels, not {value!r}")
        if found.get(name) is not None:
            raise SpecError(f"{name} is given both as a field and in transformations")
        found[name] = int(value)
    if preserve_ratio is not None:
        keep = preserve_ratio.strip().lower()
        if keep not in _TRUE | _FALSE:
            raise SpecError(f"preserve_ratio must be true or false, not {preserve_ratio!r}")
        fit = "contain" if keep in _TRUE else "fill"
        if found.get("fit", fit) != fit:
            raise SpecError(f"preserve_ratio={keep} contradicts fit:{found['fit']}")
        found["fit"] = fit
    return make_spec(**found)
