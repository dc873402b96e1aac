"""Choosing the extraction without gold: the agreement of two translation directions.

Given the attention maps of the same pairs under a source-to-target model (the *forward*
direction) and a target-to-source model (the *backward* one), `select_by_agreement` picks the
layers, heads, shift, method and threshold of an `ExtractionConfig` in two stages, neither of
which looks at gold links:

1. **Layers, heads and shift**: the pair with the highest *one-best agreement*: each target
   word's most attended source word in the forward maps, and each source word's most attended
   target word in the backward maps (flipped to (source, target)), scored by the Dice overlap
   ``2 |F ∩ B| / (|F| + |B|)`` pooled over the pairs. Both sets have one link per word, so no
   setting can win by linking less. Readings that are off by one word (a shift that does not
   suit the model) or heads that attend elsewhere disagree between the directions.
2. **Method and threshold** for that reading: each direction's thresholded links scored (Dice)
   against the *other* direction's one-best links, the two scores averaged. A threshold too
   high loses links the other direction has, one too low adds links it has not.

Ties go to the broadest average, the first shift and method listed and the lowest threshold,
as in `crossattn.align.select.select_extraction`, the gold-tuned counterpart. The two are compared on
the toy languages in docs/alignment.md.

Maps are ``(layers, heads, T, S)`` word-level decoder-to-encoder attention, as
`Translator.align_batch` returns in ``decoder_attention``: forward ``T >= n_target + 1`` rows,
``S >= n_source`` columns; backward the same with the sides swapped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .config import METHODS, SHIFTS, ExtractionConfig
from .extract import _as_4d, _check_values, _decide, _one_thread, _reading, _resolve, _rows_needed
from .select import _THRESHOLDS, _unit_grid

if TYPE_CHECKING:
    import torch

__all__ = ["one_best_agreement", "select_by_agreement"]


def _scores(mean: torch.Tensor, shift: str, n_rows: int, n_cols: int) -> torch.Tensor:
    """(n_rows, n_cols) renormalised scores of one averaged map ``mean`` (T, S)."""
    return _reading(mean[:, :n_cols], shift, n_rows)


def _links(scores: torch.Tensor, method: str, threshold: float, flip: bool) -> set:
    """(source, target) links; ``scores`` is (target, source), or (source, target) if flip."""
    import torch

    valid = torch.ones_like(scores, dtype=torch.bool)
    rows, cols = _decide(scores, valid, method, threshold).nonzero(as_tuple=True)
    pairs = zip(rows.tolist(), cols.tolist())
    return set(pairs) if flip else {(i, j) for j, i in pairs}


def _dice(hits: int, a: int, b: int) -> float:
    return 2.0 * hits / (a + b) if a + b else 0.0


def one_best_agreement(forward: Sequence, backward: Sequence) -> float:
    """Pooled Dice overlap of per-pair link sets ``forward[k]`` and ``backward[k]`` (both
    (source, target) sets): ``2 sum |F ∩ B| / sum (|F| + |B|)``, in [0, 1]."""
    hits = sum(len(set(f) & set(b)) for f, b in zip(forward, backward))
    total = sum(len(f) + len(b) for f, b in zip(forward, backward))
    return _dice(hits, total, 0) if total else 0.0


def _check_maps(maps, n_rows, n_cols, name, shifts):
    out = []
    span = "predict" if set(shifts) == {"predict"} else "average"
    for k, (w, nr, nc) in enumerate(zip(maps, n_rows, n_cols)):
        w = _as_4d(w).float()
        if w.shape[-2] < _rows_needed(span, nr) or w.shape[-1] < nc:
            raise ValueError(
                f"{name}[{k}] has (T, S) = {tuple(w.shape[-2:])}, too small for {nr} words on "
                f"the decoder side (rows: {_rows_needed(span, nr)}) and {nc} on the encoder side"
            )
        _check_values(w[:, :, : _rows_needed(span, nr), :nc], f"{name}[{k}]")
        out.append(w)
    return out


def select_by_agreement(
    forward_maps: Sequence[torch.Tensor],
    backward_maps: Sequence[torch.Tensor],
    n_source_words: Sequence[int],
    n_target_words: Sequence[int],
    *,
    shifts: Iterable[str] = SHIFTS,
    methods: Iterable[str] = ("bidirectional", "threshold"),
    thresholds: Iterable[float] = _THRESHOLDS,
) -> ExtractionConfig:
    """The extraction on which the two directions agree best (see the module docstring).

    Args:
        forward_maps: per pair, the source-to-target model's map ``(layers, heads, T, S)``:
            row ``j`` predicts target word ``j``, column ``i`` is source word ``i``.
        backward_maps: per pair, the target-to-source model's map of the swapped pair
            ``(layers', heads', T', S')`` (rows: source words, columns: target words); it must
            have the forward model's layers and heads.
        n_source_words, n_target_words: word counts per pair (ints >= 1).
        shifts, methods, thresholds: the grid (non-empty; thresholds in [0, 1]).

    Returns:
        An `ExtractionConfig` (``dev_aer`` None: no gold was used), applied to both directions.

    Raises:
        ValueError: empty or mismatched inputs, maps too small for the counts or holding NaN,
            inf or negative weights, a layer/head count that differs between the directions.
    """
    shifts, methods = tuple(shifts), tuple(methods)
    grid = sorted({float(t) for t in thresholds})
    if not shifts or any(s not in SHIFTS for s in shifts):
        raise ValueError(f"shifts must be a non-empty subset of {SHIFTS}, got {shifts!r}")
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")
    if not grid or not all(0.0 <= t <= 1.0 for t in grid):
        raise ValueError(f"thresholds must be a non-empty list in [0, 1], got {grid!r}")
    n = len(forward_maps)
    lengths = (len(backward_maps), len(n_source_words), len(n_target_words))
    if not n or any(x != n for x in lengths):
        raise ValueError(
            f"forward_maps ({n}), backward_maps, n_source_words and n_target_words "
            f"({', '.join(map(str, lengths))}) must be non-empty and of equal length"
        )
    if any(int(c) < 1 for c in (*n_source_words, *n_target_words)):
        raise ValueError("n_source_words and n_target_words must be ints >= 1")
    fwd = _check_maps(forward_maps, n_target_words, n_source_words, "forward_maps", shifts)
    bwd = _check_maps(backward_maps, n_source_words, n_target_words, "backward_maps", shifts)
    shape = tuple(fwd[0].shape[:2])
    if any(tuple(w.shape[:2]) != shape for w in (*fwd, *bwd)):
        raise ValueError(
            f"every map needs the (layers, heads) = {shape} of forward_maps[0]; train the two "
            "directions with the same model shape"
        )
    with _one_thread():
        layers, heads, shift, f_scores, b_scores = _best_reading(
            fwd, bwd, n_source_words, n_target_words, shifts, shape
        )
        method, threshold = _best_rule(f_scores, b_scores, methods, grid)
    return ExtractionConfig(layers, heads, shift, method, threshold)


def _best_reading(fwd, bwd, n_src, n_tgt, shifts, shape):
    """Stage 1: the (layers, heads, shift) of the highest one-best agreement, with its
    per-pair forward (target, source) and backward (source, target) scores."""
    best = None
    for layers, heads in _unit_grid(*shape):
        li, hi = _resolve(layers, shape[0], "layers"), _resolve(heads, shape[1], "heads")
        f_mean = [w[li][:, hi].mean(dim=(0, 1)) for w in fwd]
        b_mean = [w[li][:, hi].mean(dim=(0, 1)) for w in bwd]
        for shift in shifts:
            fs = [_scores(m, shift, nt, ns) for m, nt, ns in zip(f_mean, n_tgt, n_src)]
            bs = [_scores(m, shift, ns, nt) for m, nt, ns in zip(b_mean, n_tgt, n_src)]
            score = one_best_agreement(
                [_links(s, "argmax", 0.0, flip=False) for s in fs],
                [_links(s, "argmax", 0.0, flip=True) for s in bs],
            )
            if best is None or score > best[0] + 1e-12:
                best = (score, layers, heads, shift, fs, bs)
    assert best is not None
    return best[1:]


def _best_rule(f_scores, b_scores, methods, grid):
    """Stage 2: (method, threshold) whose links agree best with the other direction's
    one-best links, averaged over the two directions."""
    f_best = [_links(s, "argmax", 0.0, flip=False) for s in f_scores]
    b_best = [_links(s, "argmax", 0.0, flip=True) for s in b_scores]
    best = None
    for method in methods:
        for t in grid if method != "argmax" else (0.0,):
            f_links = [_links(s, method, t, flip=False) for s in f_scores]
            b_links = [_links(s, method, t, flip=True) for s in b_scores]
            score = 0.5 * (
                one_best_agreement(f_links, b_best) + one_best_agreement(b_links, f_best)
            )
            if best is None or score > best[0] + 1e-12:
                best = (score, method, t)
    assert best is not None
    return best[1], best[2]
