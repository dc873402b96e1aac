"""The ``--extraction`` mini-language of ``crossattn align``: which `ExtractionConfig` to use.

A spec is a comma-separated list. Its first item may name a base config; the ``key=value``
items after it override fields of that base::

    model                          the model's extraction.json (the default)
    default                        crossattn.align.DEFAULT_EXTRACTION
    agreement                      chosen on the pairs to align by the agreement of the two
                                   directions (needs a reverse model; see crossattn.align.agreement)
    shift=feed,threshold=0.2       the model's extraction with two fields changed
    default,method=argmax          DEFAULT_EXTRACTION with another method
    layers=-1,heads=0+2            layers and heads: ints joined by '+', or 'all'

Keys: ``layers``, ``heads``, ``shift`` (predict, feed, average), ``method`` (threshold, argmax,
argmax_threshold, bidirectional) and ``threshold`` (a number in [0, 1]). Parsing is torch-free.
"""

from __future__ import annotations

from dataclasses import replace

from .config import DEFAULT_EXTRACTION, METHODS, SHIFTS, ExtractionConfig

__all__ = ["BASES", "KEYS", "ExtractionSpec", "parse_extraction"]

BASES = ("model", "default", "agreement")
KEYS = ("layers", "heads", "shift", "method", "threshold")


class ExtractionSpec:
    """A parsed ``--extraction``: a base name and field overrides.

    Attributes:
        base: one of `BASES`.
        overrides: ``{field: value}`` already converted (tuples of ints or None, str, float).
    """

    def __init__(self, base: str, overrides: dict) -> None:
        self.base = base
        self.overrides = dict(overrides)

    def resolve(self, model_extraction: ExtractionConfig | None) -> ExtractionConfig:
        """The config for a model whose saved extraction is ``model_extraction`` (None: the
        model saved none). The ``agreement`` base resolves here as ``model``; the caller
        replaces it with the chosen config."""
        if self.base == "default" or model_extraction is None:
            base = DEFAULT_EXTRACTION
        else:
            base = model_extraction
        return replace(base, dev_aer=None, **self.overrides) if self.overrides else base

    def __repr__(self) -> str:
        return f"ExtractionSpec({self.base!r}, {self.overrides!r})"


def _int_list(key: str, text: str) -> tuple[int, ...] | None:
    if text == "all":
        return None
    try:
        return tuple(int(part) for part in text.split("+"))
    except ValueError:
        raise ValueError(
            f"--extraction {key}={text!r}: expected 'all' or ints joined by '+' (e.g. "
            f"{key}=-1 or {key}=0+1)"
        ) from None


def _value(key: str, text: str):
    if key in ("layers", "heads"):
        return _int_list(key, text)
    if key == "shift" and text not in SHIFTS:
        raise ValueError(f"--extraction shift={text!r}: expected one of {', '.join(SHIFTS)}")
    if key == "method" and text not in METHODS:
        raise ValueError(f"--extraction method={text!r}: expected one of {', '.join(METHODS)}")
    if key == "threshold":
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--extraction threshold={text!r}: expected a number in [0, 1]")
        return value
    return text


def parse_extraction(spec: str) -> ExtractionSpec:
    """Parse an ``--extraction`` value (see the module docstring).

    Raises:
        TypeError: ``spec`` is not a str.
        ValueError: an empty spec or item, an unknown base or key, a key given twice, or a value
            out of range; the message names the item and what is expected.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str such as 'model' or 'shift=feed', got {spec!r}")
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(
            f"--extraction {spec!r} has an empty item; expected a base ({', '.join(BASES)}) "
            "and/or key=value items separated by commas"
        )
    base = "model"
    if "=" not in items[0]:
        base = items.pop(0)
        if base not in BASES:
            raise ValueError(
                f"--extraction {base!r}: expected a base ({', '.join(BASES)}) or key=value "
                f"items with keys {', '.join(KEYS)}"
            )
    overrides: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or key not in KEYS:
            raise ValueError(
                f"--extraction item {item!r}: expected key=value with a key among "
                f"{', '.join(KEYS)} (a base such as 'default' comes first)"
            )
        if key in overrides:
            raise ValueError(f"--extraction gives {key} twice")
        overrides[key] = _value(key, text)
    ExtractionConfig(**{**DEFAULT_EXTRACTION.to_dict(), **overrides, "dev_aer": None})  # checks
    return ExtractionSpec(base, overrides)
