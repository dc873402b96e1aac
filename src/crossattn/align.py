"""Word alignments: the alignment error rate, and alignments read off cross-attention maps.

**AER** (Och & Ney 2003), links pooled over the whole corpus (not averaged per sentence)::

    AER = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|)    precision = |A ∩ P| / |A|    recall = |A ∩ S| / |S|

with S the sure gold links, P the sure and possible gold links (``sure | possible``) and A every
hypothesis link, sure or possible. `aer` reproduces the published figures on the shared gold sets
(see the README, "Word alignment").

**Extraction** from a force-decoded sentence pair's decoder-to-encoder attention
``weights (layers, heads, T, S)``. Layout of the positions:

* row ``t`` is the decoder position that *reads* token ``t`` of ``[start, w_0, ..., w_{m-1}]``
  and *predicts* the next one: row ``j`` predicts target word ``j`` and row ``j + 1`` reads
  (is fed) target word ``j``. Rows past ``m + 1`` (padding) are ignored;
* column ``source_start + i`` is source word ``i`` (``source_start`` counts leading special
  tokens such as a source BOS, 0 by default); columns of special tokens (EOS) and padding are
  ignored.

`ExtractionConfig` says how a map becomes links: which layers and heads to average, which of the
two rows speaks for target word ``j`` (``shift``: ``"predict"`` is row ``j``, the attention
while the decoder predicts ``w_j``; ``"feed"`` is row ``j + 1``, while it reads ``w_j``, which
shift-att (Chen et al. 2020) found better for large models; ``"average"`` their mean), and the
decision rule. On the small translators of ``crossattn train``, ``"predict"`` is far better
(about 2% AER against over 90% for ``"feed"``, which is off by one word). After selecting the rows and the word columns,
each row is renormalised to sum to 1 over the source words (attention to EOS is dropped).

`select_extraction` grid-searches the config on a dev split with gold alignments; without gold,
`DEFAULT_EXTRACTION` is used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

from .data.parallel import Link, parse_pharaoh, read_alignment_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_EXTRACTION",
    "AERResult",
    "ExtractionConfig",
    "aer",
    "alignment_scores",
    "extract_alignment",
    "read_alignments",
    "select_extraction",
    "word_links_from_subwords",
]

SHIFTS = ("feed", "predict", "average")
METHODS = ("threshold", "argmax", "argmax_threshold", "bidirectional")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _count_arg(value: Any, name: str) -> int:
    """An int argument >= 0 (any Integral but bool), else a TypeError / ValueError naming it."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int >= 0, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# AER


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
        for link in links:
            if not (
                isinstance(link, tuple)
                and len(link) == 2
                and all(isinstance(x, Integral) and not isinstance(x, bool) for x in link)
            ):
                raise TypeError(
                    f"{name}[{k}] holds {link!r}; a link is a (source index, target index) "
                    "tuple of two ints (or write the sentence as a Pharaoh line such as '0-1 2-3')"
                )
        out.append(links)
    return out[0], out[1]


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


# ----------------------------------------------------------------------------------------------
# Extraction config


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
                if not items or not all(_is_int(v) for v in items):
                    raise ValueError(
                        f"ExtractionConfig.{name} must be None or a non-empty tuple of ints, "
                        f"got {value!r}"
                    )
                object.__setattr__(self, name, tuple(int(v) for v in items))
        if self.shift not in SHIFTS:
            raise ValueError(f"ExtractionConfig.shift must be one of {SHIFTS}, got {self.shift!r}")
        if self.method not in METHODS:
            raise ValueError(
                f"ExtractionConfig.method must be one of {METHODS}, got {self.method!r}"
            )
        if not _is_real(self.threshold):
            raise TypeError(
                f"ExtractionConfig.threshold must be a number in [0, 1], got {self.threshold!r}"
            )
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(
                f"ExtractionConfig.threshold must be in [0, 1], got {self.threshold!r}"
            )
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.dev_aer is not None:
            if not _is_real(self.dev_aer):
                raise TypeError(
                    "ExtractionConfig.dev_aer must be None or a number in [0, 1], "
                    f"got {self.dev_aer!r}"
                )
            if not 0.0 <= float(self.dev_aer) <= 1.0:  # NaN fails this too
                raise ValueError(
                    f"ExtractionConfig.dev_aer must be None or in [0, 1], got {self.dev_aer!r}"
                )
            object.__setattr__(self, "dev_aer", float(self.dev_aer))

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
        if not isinstance(data, Mapping):
            raise TypeError(
                "ExtractionConfig.from_dict: data must be a dict of ExtractionConfig fields, "
                f"got {type(data).__name__}"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(map(repr, set(data) - names))
        if unknown:
            raise ValueError(
                f"unknown ExtractionConfig keys [{', '.join(unknown)}]; expected a subset of "
                f"{sorted(names)}"
            )
        return cls(**data)  # __post_init__ turns lists into tuples and checks every field

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
#: languages it beats the one-way thresholded mean and the argmax (see the README, "Word alignment").
DEFAULT_EXTRACTION = ExtractionConfig(
    layers=None, heads=None, shift="predict", method="bidirectional", threshold=0.3
)


# ----------------------------------------------------------------------------------------------
# Extraction


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run small CPU tensor work on one thread: on these (T, S)-sized maps thread hand-off costs
    more than the work, 5 to 30 times more on a busy machine. The thread count is restored."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_4d(weights: torch.Tensor) -> torch.Tensor:
    import torch

    if not isinstance(weights, torch.Tensor):
        raise TypeError(
            f"weights must be a torch.Tensor (layers, heads, T, S), got {type(weights).__name__}"
        )
    if weights.dim() == 2:
        return weights[None, None]
    if weights.dim() == 3:
        return weights[None]
    if weights.dim() != 4:
        raise ValueError(
            f"weights must have shape (layers, heads, T, S), (heads, T, S) or (T, S); "
            f"got {tuple(weights.shape)}"
        )
    return weights


def _resolve(index: tuple[int, ...] | None, size: int, what: str) -> list[int]:
    if index is None:
        return list(range(size))
    out = []
    for k in index:
        if not -size <= k < size:
            raise ValueError(f"ExtractionConfig.{what} has {k} but the weights have {size} {what}")
        out.append(k % size)
    return out


def _rows_needed(shift: str, n_target: int) -> int:
    return n_target + (0 if shift == "predict" else 1)


def _rows_used(shift: str, n_target: int) -> slice:
    """The decoder rows that speak for the target words under ``shift``."""
    return slice(1 if shift == "feed" else 0, _rows_needed(shift, n_target))


def _check_config(config: Any) -> ExtractionConfig:
    if not isinstance(config, ExtractionConfig):
        raise TypeError(
            "config must be an ExtractionConfig (build one from a dict with "
            f"ExtractionConfig.from_dict), got {type(config).__name__}"
        )
    return config


def _check_values(region: torch.Tensor, name: str) -> None:
    """Refuse NaN, inf and negative attention at the positions of real words."""
    import torch

    if not torch.isfinite(region).all():
        raise ValueError(f"{name} holds NaN or inf at the positions of real words")
    if region.numel() and float(region.min()) < 0:
        raise ValueError(
            f"{name} must be non-negative attention weights, got a minimum of "
            f"{float(region.min()):.3g} at the positions of real words"
        )


def _check_sizes(
    weights: torch.Tensor, n_source: int, n_target: int, source_start: int, shift: str
) -> None:
    t, s = weights.shape[-2:]
    if n_source < 1 or n_target < 1:
        raise ValueError(
            f"n_source_words and n_target_words must be >= 1, got {n_source} and {n_target}"
        )
    if source_start < 0 or source_start + n_source > s:
        raise ValueError(
            f"weights have S={s} source positions but source words {source_start}.."
            f"{source_start + n_source - 1} were asked for (n_source_words={n_source}, "
            f"source_start={source_start})"
        )
    rows = _rows_needed(shift, n_target)
    if rows > t:
        raise ValueError(
            f"weights have T={t} decoder positions but shift={shift!r} with n_target_words="
            f"{n_target} needs {rows} (row 0 reads the start token, row j + 1 reads target word j)"
        )


def alignment_scores(
    weights: torch.Tensor,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    n_source_words: int | None = None,
    n_target_words: int | None = None,
    *,
    source_start: int = 0,
) -> torch.Tensor:
    """The averaged, shifted and renormalised map that `extract_alignment` thresholds.

    Args:
        weights: ``(layers, heads, T, S)`` decoder-to-encoder attention of one force-decoded
            pair (``(heads, T, S)`` and ``(T, S)`` are read as one layer / one head); see the
            module docstring for the row and column layout.
        config: layers, heads and shift to use.
        n_source_words: source words (columns ``source_start ..``); default ``S - source_start``.
        n_target_words: target words; default ``T - 1`` (rows: start token + words).
        source_start: index of the first source word's column.

    Returns:
        ``(n_target_words, n_source_words)`` float tensor; each row sums to 1 (a row with no
        attention on any source word stays 0).

    Raises:
        TypeError: ``config`` is not an `ExtractionConfig` (use `ExtractionConfig.from_dict`
            for a dict), or a count or ``source_start`` is not an int.
        ValueError: sizes that do not fit the weights, or NaN, inf or negative weights at the
            positions of real words (in the layers and heads the config averages).
    """
    import torch

    config = _check_config(config)
    w = _as_4d(weights)
    n_layers, n_heads, t, s = w.shape
    source_start = _count_arg(source_start, "source_start")
    n_source = (
        s - source_start if n_source_words is None else _count_arg(n_source_words, "n_source_words")
    )
    n_target = t - 1 if n_target_words is None else _count_arg(n_target_words, "n_target_words")
    _check_sizes(w, n_source, n_target, source_start, config.shift)
    layers = _resolve(config.layers, n_layers, "layers")
    heads = _resolve(config.heads, n_heads, "heads")
    w = w[layers][:, heads].to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    w = w[..., source_start : source_start + n_source]  # (layers, heads, T, n_source)
    _check_values(w[:, :, _rows_used(config.shift, n_target)], "weights")
    w = w.mean(dim=(0, 1))  # (T, n_source)
    if config.shift == "feed":
        rows = w[1 : n_target + 1]
    elif config.shift == "predict":
        rows = w[:n_target]
    else:
        rows = 0.5 * (w[:n_target] + w[1 : n_target + 1])
    total = rows.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, rows / total.clamp_min(1e-30), torch.zeros_like(rows))


def _live(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``valid`` less the rows (target words) with no attention on any real source word."""
    return valid & (scores.masked_fill(~valid, 0) > 0).any(dim=-1, keepdim=True)


def _decide(
    scores: torch.Tensor, valid: torch.Tensor, method: str, threshold: float
) -> torch.Tensor:
    """Links (bool) from scores ``(..., T, S)``; ``valid`` masks real word pairs. Rows with no
    attention mass get no link, whatever the method."""
    import torch

    valid = _live(scores, valid)
    neg = torch.finfo(scores.dtype).min
    if method in ("argmax", "argmax_threshold"):
        masked = scores.masked_fill(~valid, neg)
        best = masked.argmax(dim=-1, keepdim=True)
        links = torch.zeros_like(valid).scatter_(-1, best, True) & valid
        if method == "argmax_threshold":
            links |= (scores >= threshold) & valid
        return links
    if method == "threshold":
        return (scores >= threshold) & valid
    # bidirectional: column-normalised (source -> target) as well
    col_total = (scores * valid).sum(dim=-2, keepdim=True)
    cols = torch.where(col_total > 0, scores / col_total.clamp_min(1e-30), torch.zeros_like(scores))
    return (scores >= threshold) & (cols >= threshold) & valid


def extract_alignment(
    weights: torch.Tensor,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    n_source_words: int | None = None,
    n_target_words: int | None = None,
    *,
    source_start: int = 0,
) -> set[Link]:
    """Word links ``{(source_index, target_index)}`` (0-indexed) read off one pair's attention.

    Args:
        weights: ``(layers, heads, T, S)`` decoder-to-encoder attention (see the module
            docstring: row ``j + 1`` reads target word ``j``, column ``source_start + i`` is
            source word ``i``).
        config: an `ExtractionConfig` (a dict is refused with a TypeError: convert it with
            `ExtractionConfig.from_dict`); `DEFAULT_EXTRACTION` needs no gold.
        n_source_words, n_target_words: word counts, ints >= 1 (default: ``S - source_start``,
            ``T - 1``).
        source_start: index of the first source word's column, an int >= 0.

    A target word with no attention on any source word gets no link. Raises as
    `alignment_scores` does.
    """
    import torch

    config = _check_config(config)
    with _one_thread():
        scores = alignment_scores(
            weights, config, n_source_words, n_target_words, source_start=source_start
        )
        valid = torch.ones_like(scores, dtype=torch.bool)
        links = _decide(scores, valid, config.method, float(config.threshold))
        return {(int(i), int(j)) for j, i in links.nonzero().tolist()}


def word_links_from_subwords(
    links: Iterable[Link], source_word_of: Sequence[int], target_word_of: Sequence[int]
) -> set[Link]:
    """Map links between subword positions back to links between words.

    Words ``(a, b)`` are linked when any subword of ``a`` is linked to any subword of ``b`` (the
    convention of awesome-align). ``source_word_of[k]`` is the word index of source subword
    ``k`` (e.g. ``[0, 0, 1]`` for ``un ##able cat``); ``target_word_of`` likewise.
    """
    out: set[Link] = set()
    n_src, n_tgt = len(source_word_of), len(target_word_of)
    for i, j in links:
        if not (0 <= i < n_src and 0 <= j < n_tgt):
            raise ValueError(
                f"subword link ({i}, {j}) is out of range for {n_src} source and {n_tgt} target "
                "subwords (len(source_word_of), len(target_word_of))"
            )
        out.add((source_word_of[i], target_word_of[j]))
    return out


# ----------------------------------------------------------------------------------------------
# Selection on a dev split

_THRESHOLDS = tuple(round(0.05 + 0.025 * k, 3) for k in range(35))  # 0.05 .. 0.9


def _unit_grid(
    n_layers: int, n_heads: int
) -> list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]]:
    """Candidate (layers, heads) averages, broadest first (ties go to the broader one)."""
    units: list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = [(None, None)]
    for size in range(n_layers - 1, 0, -1):  # contiguous layer ranges, all heads
        for start in range(n_layers - size + 1):
            units.append((tuple(range(start, start + size)), None))
    if n_heads > 1:
        for layer in range(n_layers):
            for head in range(n_heads):
                units.append(((layer,), (head,)))
    return units


def select_extraction(
    weights_list: Sequence[torch.Tensor],
    gold_list: Sequence[Any],
    *,
    n_source_words: Sequence[int] | None = None,
    n_target_words: Sequence[int] | None = None,
    source_start: int = 0,
    shifts: Iterable[str] = SHIFTS,
    methods: Iterable[str] = METHODS,
    thresholds: Iterable[float] = _THRESHOLDS,
    units: Sequence[tuple[tuple[int, ...] | None, tuple[int, ...] | None]] | None = None,
    source_word_of: Sequence[Sequence[int]] | None = None,
    target_word_of: Sequence[Sequence[int]] | None = None,
) -> ExtractionConfig:
    """Grid-search the `ExtractionConfig` with the lowest pooled AER on a dev split.

    Args:
        weights_list: one ``(layers, heads, T, S)`` attention tensor per pair, all with the same
            number of layers and heads (T and S may differ); non-negative and finite at the
            positions of real words.
        gold_list: one gold per pair: `ParallelExample` (its word counts are used) or
            ``(sure, possible)`` link sets (then give ``n_source_words``/``n_target_words``).
            At least one sure link is needed in all.
        n_source_words, n_target_words: word counts per pair, one int >= 1 per entry of
            ``weights_list`` (default: from the gold examples).
        source_start: index of the first source word's column.
        shifts, methods, thresholds: the grid (non-empty; thresholds in [0, 1], in any order,
            duplicates ignored; they may be empty when ``methods`` is only ``"argmax"``);
            ``units`` the (layers, heads) averages to try (default: all layers, every
            contiguous range of layers, every single head).
        source_word_of, target_word_of: for maps over subword tokens, per pair the word of
            each token (as `word_links_from_subwords` takes them; give both or neither). Links
            are then extracted between tokens and merged into word links (a word pair is
            linked when any of their token pairs is) before they are scored against the word
            gold; the counts above stay word counts, the token counts are the lengths.

    Returns:
        The best config, its ``dev_aer`` set (the AER that `extract_alignment` with it gets on
        these pairs, up to float32 rounding). Ties go to the broadest average, the first shift
        and method listed, and the lowest threshold.

    Raises:
        ValueError: empty or mismatched inputs or grids (naming the argument and the lengths),
            weights that do not fit the counts or hold NaN, inf or negative values, or a gold
            without any sure link.

    The search is vectorised over sentences and thresholds and runs on one CPU thread (the
    thread count is restored after): about a second for 500 pairs of a 3-layer, 4-head model.
    """
    shifts = tuple(shifts)
    methods = tuple(methods)
    thresholds = tuple(thresholds)
    for name, grid, allowed in (("shifts", shifts, SHIFTS), ("methods", methods, METHODS)):
        if not grid:
            raise ValueError(f"{name} is empty; give at least one of {allowed}")
        bad = [x for x in grid if x not in allowed]
        if bad:
            raise ValueError(f"{name} holds {bad!r}; each must be one of {allowed}")
    for t in thresholds:
        if not _is_real(t) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"thresholds must be numbers in [0, 1], got {t!r}")
    grid = sorted({float(t) for t in thresholds})  # ascending, as _counts_above needs
    if not grid and any(m != "argmax" for m in methods):
        raise ValueError(
            f"thresholds is empty but methods {[m for m in methods if m != 'argmax']} need "
            "at least one threshold"
        )
    if units is not None:
        units = list(units)
        if not units:
            raise ValueError("units is empty; give at least one (layers, heads) pair or None")
        checked = []
        for k, unit in enumerate(units):
            if not (isinstance(unit, Sequence) and len(unit) == 2):
                raise ValueError(f"units[{k}] must be a (layers, heads) pair, got {unit!r}")
            config = ExtractionConfig(layers=unit[0], heads=unit[1])
            checked.append((config.layers, config.heads))
        units = checked
    with _one_thread():
        return _select(
            weights_list, gold_list, n_source_words, n_target_words, source_start,
            shifts, methods, grid, units, source_word_of, target_word_of,
        )  # fmt: skip


def _word_counts(counts: Sequence[int] | None, name: str, n: int) -> list[int] | None:
    if counts is None:
        return None
    counts = list(counts)
    if len(counts) != n:
        raise ValueError(
            f"{name} has {len(counts)} entries but weights_list has {n}; give one per pair"
        )
    return [_count_arg(c, f"{name}[{k}]") for k, c in enumerate(counts)]


def _word_pool(source_word_of, target_word_of, n, t_max, s_max, t_words, s_words):
    """None without word maps, else ``pool(x)``: ``(N, T, S)`` token values -> ``(N, T_w, S_w)``
    word values, the largest over each word pair's tokens (-1 where a word has no token)."""
    import torch

    if source_word_of is None and target_word_of is None:
        return None
    if (
        source_word_of is None
        or target_word_of is None
        or not (len(source_word_of) == len(target_word_of) == n)
    ):
        raise ValueError(
            "give source_word_of and target_word_of together, one word map per pair of "
            f"weights_list ({n})"
        )
    t_words = max(t_words, 1 + max((max(w, default=0) for w in target_word_of), default=0))
    s_words = max(s_words, 1 + max((max(w, default=0) for w in source_word_of), default=0))
    dummy = t_words * s_words  # where padding cells go
    index = torch.full((n, t_max, s_max), dummy, dtype=torch.long)
    for k, (src, tgt) in enumerate(zip(source_word_of, target_word_of)):
        src_t = torch.as_tensor(list(src), dtype=torch.long)
        tgt_t = torch.as_tensor(list(tgt), dtype=torch.long)
        index[k, : len(tgt), : len(src)] = tgt_t[:, None] * s_words + src_t[None, :]
    index = index.flatten(1)

    def pool(x):
        out = torch.full((n, dummy + 1), -1.0, dtype=x.dtype)
        out.scatter_reduce_(1, index, x.flatten(1), "amax")
        return out[:, :dummy].view(n, t_words, s_words)

    return pool


def _select(
    weights_list, gold_list, n_source_words, n_target_words, source_start, shifts, methods,
    thresholds, units, source_word_of=None, target_word_of=None,
) -> ExtractionConfig:  # fmt: skip
    import torch

    if len(weights_list) != len(gold_list) or not len(weights_list):
        raise ValueError(
            f"weights_list ({len(weights_list)}) and gold_list ({len(gold_list)}) must be "
            "non-empty and of equal length"
        )
    source_start = _count_arg(source_start, "source_start")
    maps = [_as_4d(w) for w in weights_list]
    n_layers, n_heads = maps[0].shape[:2]
    for k, w in enumerate(maps):
        if tuple(w.shape[:2]) != (n_layers, n_heads):
            raise ValueError(
                f"weights_list[{k}] has (layers, heads) = {tuple(w.shape[:2])} but "
                f"weights_list[0] has {(n_layers, n_heads)}"
            )
    n = len(maps)
    n_src = _word_counts(n_source_words, "n_source_words", n)
    n_tgt = _word_counts(n_target_words, "n_target_words", n)
    if n_src is None or n_tgt is None:
        if not all(hasattr(g, "source") and hasattr(g, "target") for g in gold_list):
            raise ValueError(
                "give n_source_words and n_target_words, or gold_list as ParallelExample "
                "objects whose source and target give the word counts"
            )
        if n_src is None:
            n_src = [len(g.source) for g in gold_list]
        if n_tgt is None:
            n_tgt = [len(g.target) for g in gold_list]
    words_src, words_tgt = n_src, n_tgt  # the gold's grid
    if source_word_of is not None and target_word_of is not None:  # the maps' grid: tokens
        n_src = [len(w) for w in source_word_of]
        n_tgt = [len(w) for w in target_word_of]
    if len(n_src) != n or len(n_tgt) != n:
        raise ValueError(f"give one word map per pair of weights_list ({n})")
    s_max, t_max = max(n_src), max(n_tgt)
    pool = _word_pool(
        source_word_of, target_word_of, n, t_max, s_max, max(words_tgt), max(words_src)
    )
    # the rows any listed shift reads: 0 .. n_target (predict alone: 0 .. n_target - 1)
    shift_span = "predict" if set(shifts) == {"predict"} else "average"
    # padded (N, layers, heads, T_max + 1, S_max) word maps and dense gold
    padded = torch.zeros(n, n_layers, n_heads, t_max + 1, s_max)
    valid = torch.zeros(n, t_max, s_max, dtype=torch.bool)
    tw, sw = (t_max, s_max) if pool is None else tuple(pool(valid.float()).shape[1:])
    word_valid = torch.zeros(n, tw, sw, dtype=torch.bool)
    sure = torch.zeros(n, tw, sw, dtype=torch.bool)
    poss = torch.zeros(n, tw, sw, dtype=torch.bool)
    n_sure = 0
    for k, (w, g) in enumerate(zip(maps, gold_list)):
        ns, nt = n_src[k], n_tgt[k]
        _check_sizes(w, ns, nt, source_start, shift_span)
        rows = _rows_needed(shift_span, nt)  # <= T, as _check_sizes made sure
        region = w[:, :, :rows, source_start : source_start + ns].float()
        _check_values(region, f"weights_list[{k}]")
        padded[k, :, :, :rows, :ns] = region
        valid[k, :nt, :ns] = True
        ws, wt = words_src[k], words_tgt[k]
        word_valid[k, :wt, :ws] = True
        g_sure, g_poss = _gold_sets(g, "gold_list", k)
        for i, j in g_sure:
            if i < ws and j < wt:
                sure[k, j, i] = True
        for i, j in g_sure | g_poss:
            if i < ws and j < wt:
                poss[k, j, i] = True
        n_sure += len(g_sure)
    if not n_sure:
        raise ValueError(
            f"gold_list has no sure gold links to select against (in {n} pairs); every config "
            "would score by precision alone and the one linking nothing would win"
        )
    thr = torch.tensor(thresholds, dtype=torch.float32)
    best: tuple[float, ExtractionConfig] | None = None
    sure_v, poss_v = sure[word_valid], poss[word_valid]  # (M,) flags of the real word pairs

    def values(x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """(M,) word-pair values; -1 where no link can be (no attention mass, padding)."""
        x = x.masked_fill(~live, -1.0)
        return (x if pool is None else pool(x))[word_valid]

    def flags(links: torch.Tensor) -> torch.Tensor:
        """(M,) word-pair links from token links (any token pair linked)."""
        return (links if pool is None else pool(links.float()) > 0)[word_valid]

    for layers, heads in units if units is not None else _unit_grid(n_layers, n_heads):
        li = _resolve(layers, n_layers, "layers")
        hi = _resolve(heads, n_heads, "heads")
        mean = padded[:, li][:, :, hi].mean(dim=(1, 2))  # (N, T_max + 1, S_max)
        for shift in shifts:
            if shift == "feed":
                rows = mean[:, 1:]
            elif shift == "predict":
                rows = mean[:, :-1]
            else:
                rows = 0.5 * (mean[:, 1:] + mean[:, :-1])
            rows = rows * valid
            total = rows.sum(dim=-1, keepdim=True)
            scores = torch.where(total > 0, rows / total.clamp_min(1e-30), torch.zeros_like(rows))
            # pairs of rows with no attention mass are never linked (below every threshold)
            live = _live(scores, valid)
            for method in methods:
                if method == "argmax":
                    links = flags(_decide(scores, valid, "argmax", 0.0))
                    counts = _counts_fixed(links, sure_v, poss_v)
                    candidates = [(0.0, *counts)]
                elif method == "argmax_threshold":
                    always = flags(_decide(scores, valid, "argmax", 0.0))
                    fixed = _counts_fixed(always, sure_v, poss_v)
                    v = values(scores, live)
                    rest = _counts_above(
                        v[~always], sure_v[~always], poss_v[~always], thr, thresholds
                    )
                    candidates = [
                        (t, fixed[0] + a, fixed[1] + b, fixed[2] + c) for t, a, b, c in rest
                    ]
                elif method == "threshold":
                    v = values(scores, live)
                    candidates = _counts_above(v, sure_v, poss_v, thr, thresholds)
                else:  # bidirectional: a link needs both normalisations >= t
                    col_total = scores.sum(dim=-2, keepdim=True)
                    cols = torch.where(
                        col_total > 0, scores / col_total.clamp_min(1e-30), torch.zeros_like(scores)
                    )
                    both = values(torch.minimum(scores, cols), live)
                    candidates = _counts_above(both, sure_v, poss_v, thr, thresholds)
                for t, n_a, hit_s, hit_p in candidates:
                    err = 1.0 - (hit_s + hit_p) / (n_a + n_sure)
                    if best is None or err < best[0] - 1e-12:
                        best = (err, ExtractionConfig(layers, heads, shift, method, float(t)))
    assert best is not None  # the grids were checked non-empty
    # clamped into [0, 1] against float rounding; + 0.0 turns -0.0 into 0.0
    return replace(best[1], dev_aer=min(max(round(best[0], 6), 0.0), 1.0) + 0.0)


def _counts_fixed(
    links: torch.Tensor, sure: torch.Tensor, poss: torch.Tensor
) -> tuple[int, int, int]:
    return int(links.sum()), int((links & sure).sum()), int((links & poss).sum())


def _counts_above(
    values: torch.Tensor,
    sure: torch.Tensor,
    poss: torch.Tensor,
    thresholds: torch.Tensor,
    reported: Sequence[float],
) -> list[tuple[float, int, int, int]]:
    """(t, |A|, |A ∩ S|, |A ∩ P|) for A = {values >= t}, for every t of the grid, which must be
    ascending (`torch.bucketize` needs a sorted boundary list). ``thresholds`` is the grid as a
    tensor; ``reported`` the same thresholds as given, which label the counts."""
    import torch

    k = thresholds.numel()
    # bucket b = how many thresholds are <= the value: the value is >= t_i exactly when b > i
    bucket = torch.bucketize(values, thresholds.to(values.dtype), right=True)
    per = torch.stack(
        [
            torch.bincount(bucket, minlength=k + 1),
            torch.bincount(bucket[sure], minlength=k + 1),
            torch.bincount(bucket[poss], minlength=k + 1),
        ]
    )  # (3, K + 1)
    above = per.flip(1).cumsum(1).flip(1)[:, 1:]  # (3, K): counts with bucket > i
    return [
        (float(t), int(a), int(b), int(c)) for t, (a, b, c) in zip(reported, above.t().tolist())
    ]
