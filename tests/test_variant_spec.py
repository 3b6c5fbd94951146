"""The variant spec, pure: normalisation, ids, the compact syntax and the form fields."""

from __future__ import annotations

import uuid

import pytest

from thumbnailer.variant_spec import (
    SpecError,
    SyntaxProblem,
    VariantSpec,
    check_limits,
    make_spec,
    parse_transformations,
    spec_from_form,
    variant_id,
)

IMAGE = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_defaults_are_filled_in() -> None:
    assert make_spec(width=300) == VariantSpec(300, None, "contain", False, "jpeg", 80)


def test_the_same_request_spelled_two_ways_is_one_id() -> None:
    explicit = make_spec(width=300, height=200, fit="contain", format="jpeg", quality=80)
    implicit = make_spec(width=300, height=200, format="JPG")
    assert variant_id(IMAGE, explicit) == variant_id(IMAGE, implicit)


def test_png_quality_does_not_make_another_variant() -> None:
    assert make_spec(width=10, format="png", quality=30) == make_spec(width=10, format="png")
    assert make_spec(width=10, format="png").quality is None


def test_ids_differ_by_image_and_by_spec_and_are_stable() -> None:
    spec = make_spec(width=300, height=300, fit="cover")
    other_image = uuid.UUID("00000000-0000-4000-8000-000000000002")
    assert variant_id(IMAGE, spec) != variant_id(other_image, spec)
    assert variant_id(IMAGE, spec) != variant_id(IMAGE, make_spec(width=300, height=300))
    # Derived, not random: a fixed value across processes and releases.
    assert variant_id(IMAGE, spec) == uuid.uuid5(
        uuid.UUID("6f1f7c1e-5b9a-4f0e-9a57-1d3c0b6e2a41"), f"{IMAGE}/{spec.canonical()}"
    )


def test_json_round_trip() -> None:
    spec = make_spec(width=64, height=48, fit="fill", grayscale=True, format="avif", quality=55)
    assert VariantSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({}, "width, a height or both"),
        ({"width": 0}, "width must be a positive"),
        ({"width": -3}, "width must be a positive"),
        ({"width": True}, "width must be a positive"),
        ({"width": 10, "fit": "stretch"}, "fit must be one of"),
        ({"width": 10, "fit": "cover"}, "needs both a width and a height"),
        ({"height": 10, "fit": "fill"}, "needs both a width and a height"),
        ({"width": 10, "format": "gif"}, "format must be one of"),
        ({"width": 10, "quality": 0}, "quality must be"),
        ({"width": 10, "quality": 101}, "quality must be"),
    ],
)
def test_impossible_specs_say_why(arguments: dict[str, object], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        make_spec(**arguments)  # type: ignore[arg-type]


def test_limits() -> None:
    check_limits(make_spec(width=4096, height=10), 4096)
    with pytest.raises(SpecError, match="at most 4096 pixels on its longest side; 4097"):
        check_limits(make_spec(width=10, height=4097), 4096)


def test_compact_syntax() -> None:
    parsed = parse_transformations("resize:800x600, fit:cover,grayscale,format:webp,quality:80")
    assert parsed == {
        "width": 800,
        "height": 600,
        "fit": "cover",
        "grayscale": True,
        "format": "webp",
        "quality": 80,
    }
    assert parse_transformations("resize:800x") == {"width": 800, "height": None}
    assert parse_transformations("RESIZE:x600") == {"width": None, "height": 600}
    assert parse_transformations("greyscale:false") == {"grayscale": False}


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("resize:800by600", "resize:800by600"),
        ("resize:x", "resize:x"),
        ("resize:0x10", "resize:0x10"),
        ("resize:", "resize:"),
        ("resize:100x100,blur:3", "blur:3"),
        ("fit:squash", "fit:squash"),
        ("format:bmp", "format:bmp"),
        ("quality:high", "quality:high"),
        ("quality:0", "quality:0"),
        ("grayscale:maybe", "grayscale:maybe"),
        ("resize:10x10,,grayscale", ""),
        ("resize:10x10,resize:20x20", "resize:20x20"),
    ],
)
def test_malformed_compact_syntax_names_the_bad_token(text: str, token: str) -> None:
    with pytest.raises(SyntaxProblem) as raised:
        parse_transformations(text)
    assert raised.value.token == token
    assert repr(token) in str(raised.value)


def test_form_fields_are_the_same_thing() -> None:
    assert spec_from_form(None) is None
    assert spec_from_form("") is None
    by_fields = spec_from_form(None, width="800", height="600", preserve_ratio="false")
    by_syntax = spec_from_form("resize:800x600,fit:fill")
    assert by_fields == by_syntax == make_spec(width=800, height=600, fit="fill")
    assert spec_from_form(None, width="800", preserve_ratio="true") == make_spec(width=800)
    mixed = spec_from_form("format:webp", width="300", height="200")
    assert mixed == make_spec(width=300, height=200, format="webp")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"width": "wide"}, "width must be a positive whole number"),
        ({"width": "0"}, "width must be a positive whole number"),
        ({"width": "10", "preserve_ratio": "perhaps"}, "preserve_ratio must be true or false"),
        ({"transformations": "resize:10x10", "width": "20"}, "given both"),
        (
            {"transformations": "fit:cover", "width": "5", "height": "5", "preserve_ratio": "no"},
            "contradicts fit:cover",
        ),
        ({"width": "10", "preserve_ratio": "false"}, "needs both a width and a height"),
        ({"preserve_ratio": "true"}, "width, a height or both"),
    ],
)
def test_form_fields_refused_with_a_reason(fields: dict[str, str], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        spec_from_form(
            fields.get("transformations"),
            fields.get("width"),
            fields.get("height"),
            fields.get("preserve_ratio"),
        )
