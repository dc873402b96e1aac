"""The alignment error rate (Och & Ney 2003), with precision and recall, pooled over a corpus::

    AER = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|)    precision = |A ∩ P| / |A|    recall = |A ∩ S| / |S|

with S the sure gold links, P the sure and possible gold links (``sure | possible``) and A every
hypothesis link, sure or possible. Links are pooled over the whole corpus (not averaged per
sentence). `aer` reproduces the published figures on the shared gold sets (see
docs/alignment.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import _checks
from ..data.parallel import read_alignment_file
from ..data.pharaoh import Link, parse_pharaoh

__all__ = ["AERResult", "aer", "read_alignments"]


@dataclass(frozen=True)
class AERResult:
    """Corpus-level alignment error rate, precision and recall (fractions in [0, 1]) and the
    pooled counts they come from."""

    aer: float
    precision: float
    recall: float
    n_hypothesis: int = 0  # |A|
    n_sure: int = 0  # |S|
    hits_sure: int = 0  # |A ∩ S|
    hits_possible: int = 0  # |A ∩ P|
    sentences: int = 0

    def __str__(self) -> str:
        return f"AER {100 * self.aer:.2f} P {100 * self.precision:.2f} R {100 * self.recall:.2f}"

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def read_alignments(
    path: str | os.PathLike[str], one_indexed: bool = False
) -> list[tuple[frozenset[Link], frozenset[Link]]]:
    """Read a Pharaoh file (``i-j`` sure, ``ipj`` possible): one 0-indexed ``(sure, possible)``
    pair of disjoint link sets per line. Raises `ParallelFormatError` naming the file and line."""
    return read_alignment_file(path, one_indexed=one_indexed)


def _gold_sets(
    item: Any, name: str = "gold", k: int = 0
) -> tuple[frozenset[Link], frozenset[Link]]:
    """(sure, possible) of one sentence's alignment in any of the forms `aer` takes."""
    if isinstance(item, str):  # a Pharaoh line, 0-indexed
        return parse_pharaoh(item, path=f"{name}[{k}]")
    if hasattr(item, "sure") and hasattr(item, "possible"):
        sure, possible = item.sure, item.possible
    elif (
        isinstance(item, tuple)
        and len(item) == 2
        and all(isinstance(x, (set, frozenset)) for x in item)
    ):
        sure, possible = item
    else:
        sure, possible = item, ()
    out = []
    for links in (sure, possible):
        try:
            links = frozenset(links)
        except TypeError:
            raise TypeError(
                f"{name}[{k}] must be a set of (i, j) links, a (sure, possible) pair of sets, "
                f"an object with .sure and .possible, or a Pharaoh line; got "
                f"{type(item).__name__}"
            ) from None
        out.append(frozenset(_link(link, name, k) for link in links))
    return out[0], out[1]


def _link(link: Any, name: str, k: int) -> Link:
    """`link` as a (source, target) pair of plain ints (`crossattn._checks.integer`: NumPy and
    0-d torch ints too, no bools), or the TypeError naming sentence `k` of `name`."""
    try:
        if isinstance(link, tuple) and len(link) == 2:
            return _checks.integer(link[0], "i"), _checks.integer(link[1], "j")
    except _checks.ArgumentTypeError:
        pass
    raise TypeError(
        f"{name}[{k}] holds {link!r}; a link is a (source index, target index) "
        "tuple of two ints (or write the sentence as a Pharaoh line such as '0-1 2-3')"
    )


def _hyp_set(item: Any, k: int) -> frozenset[Link]:
    sure, possible = _gold_sets(item, "hypothesis", k)
    return sure | possible


def aer(gold: Sequence[Any], hypothesis: Sequence[Any], *, reverse: bool = False) -> AERResult:
    """Alignment error rate of ``hypothesis`` against ``gold``, pooled over the corpus.

    Args:
        gold: one item per sentence: a `ParallelExample`, an object with ``sure`` and
            ``possible`` link sets, a ``(sure, possible)`` tuple of sets (as `read_alignments`
            returns), a plain set of ``(i, j)`` links (all sure), or a 0-indexed Pharaoh line
            such as ``"0-0 1-2 2p1"``.
        hypothesis: one item per sentence, in the same forms; every link counts, sure or
            possible.
        reverse: swap ``(i, j)`` to ``(j, i)`` in the hypothesis (for a hypothesis written
            target-source).

    An empty hypothesis has precision 0; a gold without sure links has recall 1; with neither
    hypothesis nor sure links the AER is 0.
    """
    if len(gold) != len(hypothesis):
        raise ValueError(
            f"gold has {len(gold)} sentences but hypothesis has {len(hypothesis)}; "
            "they need one alignment per sentence pair, in the same order"
        )
    n_a = n_s = hit_s = hit_p = 0
    for k, (g, h) in enumerate(zip(gold, hypothesis)):
        sure, possible = _gold_sets(g, "gold", k)
        links = _hyp_set(h, k)
        if reverse:
            links = frozenset((j, i) for i, j in links)
        n_a += len(links)
        n_s += len(sure)
        hit_s += len(links & sure)
        hit_p += len(links & (sure | possible))
    precision = hit_p / n_a if n_a else 0.0
    recall = hit_s / n_s if n_s else 1.0
    error = 1.0 - (hit_s + hit_p) / (n_a + n_s) if n_a + n_s else 0.0
    return AERResult(error, precision, recall, n_a, n_s, hit_s, hit_p, len(gold))
