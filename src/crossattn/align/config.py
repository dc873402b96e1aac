"""How an attention map becomes word links: `ExtractionConfig` and `DEFAULT_EXTRACTION`.

The config says which layers and heads to average, which of the two decoder rows speaks for
target word ``j`` (``shift``: ``"predict"`` is row ``j``, the attention while the decoder predicts
``w_j``; ``"feed"`` is row ``j + 1``, while it reads ``w_j``; ``"average"`` their mean), and the
decision rule (``method`` and ``threshold``). See `crossattn.align.extract` for the layout of the
rows and columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .. import _checks

__all__ = ["DEFAULT_EXTRACTION", "METHODS", "SHIFTS", "ExtractionConfig"]

SHIFTS = ("feed", "predict", "average")
METHODS = ("threshold", "argmax", "argmax_threshold", "bidirectional")


@dataclass(frozen=True)
class ExtractionConfig:
    """How an attention map becomes word links.

    Attributes:
        layers: decoder layers to average (0-based; negative counts from the last); ``None``
            for all.
        heads: heads to average in each of those layers; ``None`` for all.
        shift: which decoder row speaks for target word ``j``: ``"feed"`` (row ``j + 1``, the
            decoder reads ``w_j``), ``"predict"`` (row ``j``, it predicts ``w_j``) or
            ``"average"``.
        method: ``"threshold"`` links ``(i, j)`` where the renormalised attention of target
            word ``j`` on source word ``i`` is at least ``threshold``; ``"argmax"`` links each
            target word to its most attended source word; ``"argmax_threshold"`` is the union of
            both (every target word gets at least one link); ``"bidirectional"`` keeps ``(i, j)``
            where both the row-normalised (target to source) and the column-normalised (source
            to target) map are at least ``threshold``.
        threshold: see ``method`` (unused by ``"argmax"``); a number in [0, 1].
        dev_aer: the dev AER that chose this config (``None`` for a hand-set one), else a
            finite number in [0, 1].

    Whatever the method, a target word whose row has no attention on any source word gets no
    link. Layers and heads take any integers (NumPy ones too; not bools) and are stored as a
    tuple of ``int``; ``threshold`` and ``dev_aer`` take any real number and are stored as
    ``float``.
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    shift: str = "predict"
    method: str = "bidirectional"
    threshold: float = 0.3
    dev_aer: float | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "heads"):
            value = getattr(self, name)
            if value is not None:
                items = (
                    tuple(value)
                    if isinstance(value, Iterable) and not isinstance(value, (str, bytes))
                    else None
                )
                if not items:
                    raise ValueError(
                        f"ExtractionConfig.{name} must be None or a non-empty tuple of ints, "
                        f"got {value!r}"
                    )
                ints = (
                    _checks.integer(v, f"ExtractionConfig.{name}[{k}]") for k, v in enumerate(items)
                )
                object.__setattr__(self, name, tuple(ints))
        _checks.choice(self.shift, "ExtractionConfig.shift", SHIFTS)
        _checks.choice(self.method, "ExtractionConfig.method", METHODS)
        object.__setattr__(
            self, "threshold", _checks.unit_real(self.threshold, "ExtractionConfig.threshold")
        )
        if self.dev_aer is not None:
            object.__setattr__(
                self, "dev_aer", _checks.unit_real(self.dev_aer, "ExtractionConfig.dev_aer")
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        for name in ("layers", "heads"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractionConfig:
        """Inverse of `to_dict`; unknown keys raise a ValueError naming them, a ``data`` that
        is not a mapping a TypeError."""
        # __post_init__ turns lists into tuples and checks every field
        return cls(**_checks.known_fields(cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ExtractionConfig:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """One line for logs: ``layers all, heads all, shift feed, threshold >= 0.30``."""
        layers = "all" if self.layers is None else ",".join(map(str, self.layers))
        heads = "all" if self.heads is None else ",".join(map(str, self.heads))
        rule = self.method if self.method == "argmax" else f"{self.method} >= {self.threshold:.2f}"
        return f"layers {layers}, heads {heads}, shift {self.shift}, {rule}"


#: Works without gold: the mean over all layers and heads of the row that predicts the target
#: word, a link where the target word gives the source word at least 0.3 of its attention *and*
#: the source word gives the target word at least 0.3 of the attention it receives. On the toy
#: languages it beats the one-way thresholded mean and the argmax (see docs/alignment.md).
DEFAULT_EXTRACTION = ExtractionConfig(
    layers=None, heads=None, shift="predict", method="bidirectional", threshold=0.3
)
