"""`crossattn align --extraction`: the spec mini-language and its errors."""

from __future__ import annotations

import pytest

from crossattn.align import DEFAULT_EXTRACTION, ExtractionConfig
from crossattn.align.spec import parse_extraction

SAVED = ExtractionConfig(layers=(1,), heads=(0, 2), shift="predict", method="threshold",
                         threshold=0.45, dev_aer=0.02)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("model", SAVED),
        ("default", DEFAULT_EXTRACTION),
        ("agreement", SAVED),  # resolved by the command once both directions are aligned
        ("shift=feed", ExtractionConfig((1,), (0, 2), "feed", "threshold", 0.45)),
        ("default,method=argmax", ExtractionConfig(None, None, "predict", "argmax", 0.3)),
        (
            " shift=average , method=bidirectional,threshold=0.3,layers=-1 ",
            ExtractionConfig((-1,), (0, 2), "average", "bidirectional", 0.3),
        ),
        ("layers=0+1,heads=all", ExtractionConfig((0, 1), None, "predict", "threshold", 0.45)),
    ],
)
def test_specs_resolve_against_the_saved_extraction(spec, expected):
    assert parse_extraction(spec).resolve(SAVED) == expected


def test_a_model_without_extraction_json_starts_from_the_default():
    assert parse_extraction("threshold=0.5").resolve(None) == ExtractionConfig(threshold=0.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty item"),
        ("shift=feed,", "empty item"),
        ("best", "expected a base"),
        ("shift=sideways", "shift='sideways': expected one of"),
        ("method=max", "method='max'"),
        ("threshold=1.5", "threshold='1.5': expected a number in [0, 1]"),
        ("threshold=abc", "threshold='abc'"),
        ("threshold=nan", "threshold='nan'"),
        ("layers=1,2", "item '2'"),
        ("layers=one", "layers='one': expected 'all' or ints joined by '+'"),
        ("colour=red", "item 'colour=red'"),
        ("shift=feed,shift=predict", "gives shift twice"),
        ("shift=feed,default", "item 'default'"),
    ],
)
def test_bad_specs_say_what_is_expected(spec, message):
    with pytest.raises(ValueError, match="--extraction") as info:
        parse_extraction(spec)
    assert message in str(info.value)


def test_a_spec_that_is_not_a_string_is_a_type_error():
    with pytest.raises(TypeError, match="spec must be a str"):
        parse_extraction(None)  # type: ignore[arg-type]
