"""Choosing the extraction on a dev split with gold alignments: `select_extraction`.

A grid search over the (layers, heads) averages, shifts, methods and thresholds of
`ExtractionConfig`, scored by the pooled AER (`crossattn.align.metrics`) of the links that
`extract_alignment` would read with each config. Without gold, `DEFAULT_EXTRACTION` serves, or
`crossattn.align.agreement.select_by_agreement` with a model of each direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import _checks
from .config import METHODS, SHIFTS, ExtractionConfig
from .extract import (
    _as_4d,
    _check_sizes,
    _check_values,
    _decide,
    _live,
    _normalised,
    _one_thread,
    _resolve,
    _rows_needed,
    _shifted_rows,
)
from .metrics import _gold_sets

if TYPE_CHECKING:
    import torch

__all__ = ["select_extraction"]

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
    grid = sorted(
        {_checks.unit_real(t, f"thresholds[{k}]") for k, t in enumerate(thresholds)}
    )  # ascending, as _counts_above needs
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
    return [_checks.nonnegative_int(c, f"{name}[{k}]") for k, c in enumerate(counts)]


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


@dataclass
class _DevSet:
    """The dev pairs as padded tensors, what every config of the grid is scored on.

    ``padded`` holds the maps' real rows and columns, ``(N, layers, heads, T + 1, S)`` over the
    maps' grid (tokens with word maps, else words); ``valid`` ``(N, T, S)`` marks the real
    (target, source) pairs of that grid. ``sure`` and ``poss`` are the gold flags of the real
    word pairs, ``(M,)`` in the order of ``word_valid[word_valid]``; ``pool`` turns token
    values ``(N, T, S)`` into word values (None when the maps are over words).
    """

    padded: torch.Tensor
    valid: torch.Tensor
    word_valid: torch.Tensor
    sure: torch.Tensor
    poss: torch.Tensor
    n_sure: int
    pool: Callable[[torch.Tensor], torch.Tensor] | None

    def values(self, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """(M,) word-pair values; -1 where no link can be (no attention mass, padding)."""
        x = x.masked_fill(~live, -1.0)
        return (x if self.pool is None else self.pool(x))[self.word_valid]

    def flags(self, links: torch.Tensor) -> torch.Tensor:
        """(M,) word-pair links from token links (any token pair linked)."""
        return (links if self.pool is None else self.pool(links.float()) > 0)[self.word_valid]


def _pair_counts(gold_list, n_source_words, n_target_words, n: int) -> tuple[list, list]:
    """The word counts of each pair: as given, else from the gold examples."""
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
    return n_src, n_tgt


def _checked_maps(weights_list, gold_list) -> list[torch.Tensor]:
    """The maps as (layers, heads, T, S), all with the same layers and heads."""
    if len(weights_list) != len(gold_list) or not len(weights_list):
        raise ValueError(
            f"weights_list ({len(weights_list)}) and gold_list ({len(gold_list)}) must be "
            "non-empty and of equal length"
        )
    maps = [_as_4d(w) for w in weights_list]
    shape = tuple(maps[0].shape[:2])
    for k, w in enumerate(maps):
        if tuple(w.shape[:2]) != shape:
            raise ValueError(
                f"weights_list[{k}] has (layers, heads) = {tuple(w.shape[:2])} but "
                f"weights_list[0] has {shape}"
            )
    return maps


def _dev_set(
    weights_list, gold_list, n_source_words, n_target_words, source_start, shifts,
    source_word_of, target_word_of,
) -> _DevSet:  # fmt: skip
    """Check the dev pairs and lay them out for `_select` (see `select_extraction`)."""
    import torch

    maps = _checked_maps(weights_list, gold_list)
    source_start = _checks.nonnegative_int(source_start, "source_start")
    n = len(maps)
    words_src, words_tgt = _pair_counts(gold_list, n_source_words, n_target_words, n)
    n_src, n_tgt = words_src, words_tgt  # the maps' grid: words, or tokens with word maps
    if source_word_of is not None and target_word_of is not None:
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
    padded = torch.zeros(n, *maps[0].shape[:2], t_max + 1, s_max)
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
        word_valid[k, : words_tgt[k], : words_src[k]] = True
        n_sure += _fill_gold(sure[k], poss[k], g, k, words_src[k], words_tgt[k])
    if not n_sure:
        raise ValueError(
            f"gold_list has no sure gold links to select against (in {n} pairs); every config "
            "would score by precision alone and the one linking nothing would win"
        )
    return _DevSet(padded, valid, word_valid, sure[word_valid], poss[word_valid], n_sure, pool)


def _fill_gold(sure, poss, gold, k: int, n_source: int, n_target: int) -> int:
    """Mark one pair's gold in its ``(T_w, S_w)`` grids; returns its number of sure links."""
    g_sure, g_poss = _gold_sets(gold, "gold_list", k)
    for i, j in g_sure:
        if i < n_source and j < n_target:
            sure[j, i] = True
    for i, j in g_sure | g_poss:
        if i < n_source and j < n_target:
            poss[j, i] = True
    return len(g_sure)


def _select(
    weights_list, gold_list, n_source_words, n_target_words, source_start, shifts, methods,
    thresholds, units, source_word_of=None, target_word_of=None,
) -> ExtractionConfig:  # fmt: skip
    """The grid search of `select_extraction`, on grids it checked."""
    import torch

    dev = _dev_set(
        weights_list, gold_list, n_source_words, n_target_words, source_start, shifts,
        source_word_of, target_word_of,
    )  # fmt: skip
    n_layers, n_heads, t_max = dev.padded.shape[1], dev.padded.shape[2], dev.valid.shape[1]
    thr = torch.tensor(thresholds, dtype=torch.float32)
    best: tuple[float, ExtractionConfig] | None = None
    for layers, heads in units if units is not None else _unit_grid(n_layers, n_heads):
        li = _resolve(layers, n_layers, "layers")
        hi = _resolve(heads, n_heads, "heads")
        mean = dev.padded[:, li][:, :, hi].mean(dim=(1, 2))  # (N, T_max + 1, S_max)
        for shift in shifts:
            scores = _normalised(_shifted_rows(mean, shift, t_max) * dev.valid)  # (N, T, S)
            # pairs of rows with no attention mass are never linked (below every threshold)
            live = _live(scores, dev.valid)
            for method in methods:
                counts = _method_counts(dev, scores, live, method, thr, thresholds)
                for t, n_a, hit_s, hit_p in counts:
                    err = 1.0 - (hit_s + hit_p) / (n_a + dev.n_sure)
                    if best is None or err < best[0] - 1e-12:
                        best = (err, ExtractionConfig(layers, heads, shift, method, float(t)))
    assert best is not None  # the grids were checked non-empty
    # clamped into [0, 1] against float rounding; + 0.0 turns -0.0 into 0.0
    return replace(best[1], dev_aer=min(max(round(best[0], 6), 0.0), 1.0) + 0.0)


def _method_counts(
    dev: _DevSet,
    scores: torch.Tensor,
    live: torch.Tensor,
    method: str,
    thr: torch.Tensor,
    thresholds: Sequence[float],
) -> list[tuple[float, int, int, int]]:
    """(t, |A|, |A ∩ S|, |A ∩ P|) of ``method`` at every threshold t of the grid (one row at
    0.0 for ``"argmax"``), from the renormalised ``scores`` (N, T, S) of one reading."""
    import torch

    if method == "argmax":
        links = dev.flags(_decide(scores, dev.valid, "argmax", 0.0))
        return [(0.0, *_counts_fixed(links, dev.sure, dev.poss))]
    if method == "argmax_threshold":
        always = dev.flags(_decide(scores, dev.valid, "argmax", 0.0))
        fixed = _counts_fixed(always, dev.sure, dev.poss)
        v = dev.values(scores, live)
        rest = _counts_above(v[~always], dev.sure[~always], dev.poss[~always], thr, thresholds)
        return [(t, fixed[0] + a, fixed[1] + b, fixed[2] + c) for t, a, b, c in rest]
    if method == "threshold":
        return _counts_above(dev.values(scores, live), dev.sure, dev.poss, thr, thresholds)
    # bidirectional: a link needs both normalisations >= t
    both = torch.minimum(scores, _normalised(scores, dim=-2))
    return _counts_above(dev.values(both, live), dev.sure, dev.poss, thr, thresholds)


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
