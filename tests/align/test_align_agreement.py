"""Choosing the extraction without gold: synthetic maps where the right reading is known."""

from __future__ import annotations

import random

import pytest
import torch

from crossattn.align import extract_alignment
from crossattn.align.agreement import one_best_agreement, select_by_agreement

LAYERS, HEADS = 2, 3
TRUE_LAYER, TRUE_HEAD = 1, 2


def _map(peaks: list[int], n_cols: int, offset: int, rng: random.Random, true: bool):
    """(LAYERS, HEADS, rows + 1, n_cols + 1) map, the last column an EOS. In the true
    (layer, head) row ``j + offset`` puts 0.9 on ``peaks[j]``; every other head puts 0.95 on a
    random word of each row (different in each direction, so the directions disagree there)."""
    rows = len(peaks) + 1
    w = torch.full((LAYERS, HEADS, rows, n_cols + 1), 0.0)
    for layer in range(LAYERS):
        for head in range(HEADS):
            for r in range(rows):
                w[layer, head, r, :] = 0.05 / (n_cols + 1)
                if true and (layer, head) == (TRUE_LAYER, TRUE_HEAD):
                    j = r - offset
                    col = peaks[j] if 0 <= j < len(peaks) else n_cols  # else: the EOS
                    w[layer, head, r, col] += 0.9
                else:
                    w[layer, head, r, rng.randrange(n_cols)] += 0.95
    return w


def _pairs(offset: int, n: int = 40, seed: int = 0):
    rng = random.Random(seed)
    fwd, bwd, n_src, n_tgt, gold = [], [], [], [], []
    for _ in range(n):
        m = rng.randint(3, 9)  # one-to-one links, reordered
        perm = list(range(m))
        rng.shuffle(perm)  # target word j <-> source word perm[j]
        inverse = [perm.index(i) for i in range(m)]
        fwd.append(_map(perm, m, offset, rng, True))
        bwd.append(_map(inverse, m, offset, rng, True))
        n_src.append(m)
        n_tgt.append(m)
        gold.append({(perm[j], j) for j in range(m)})
    return fwd, bwd, n_src, n_tgt, gold


@pytest.mark.parametrize(("offset", "shift"), [(0, "predict"), (1, "feed")])
def test_the_agreeing_head_and_shift_are_found(offset, shift):
    fwd, bwd, n_src, n_tgt, gold = _pairs(offset)
    config = select_by_agreement(fwd, bwd, n_src, n_tgt)
    assert (config.layers, config.heads, config.shift) == ((TRUE_LAYER,), (TRUE_HEAD,), shift)
    assert config.dev_aer is None
    for w, ns, nt, g in zip(fwd, n_src, n_tgt, gold):
        assert extract_alignment(w, config, ns, nt) == g


def test_a_threshold_that_drops_links_loses_agreement():
    # the true head gives 0.9 to one word: thresholds above it link nothing and lose
    fwd, bwd, n_src, n_tgt, _ = _pairs(0)
    config = select_by_agreement(fwd, bwd, n_src, n_tgt, thresholds=(0.95, 0.5, 0.99))
    assert config.threshold == 0.5


def test_one_best_agreement_is_the_pooled_dice():
    forward = [{(0, 0), (1, 1)}, {(0, 0)}]
    backward = [{(0, 0), (1, 0)}, {(0, 0)}]
    assert one_best_agreement(forward, backward) == pytest.approx(2 * 2 / 6)
    assert one_best_agreement([set()], [set()]) == 0.0


def test_bad_inputs_are_named():
    fwd, bwd, n_src, n_tgt, _ = _pairs(0, n=3)
    with pytest.raises(ValueError, match="equal length"):
        select_by_agreement(fwd, bwd[:2], n_src, n_tgt)
    with pytest.raises(ValueError, match=r"backward_maps\[0\] has \(T, S\)"):
        select_by_agreement(fwd, [w[..., :2, :2] for w in bwd], n_src, n_tgt)
    with pytest.raises(ValueError, match="layers, heads"):
        select_by_agreement(fwd, [w[:1] for w in bwd], n_src, n_tgt)
    bad = [w.clone() for w in fwd]
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"forward_maps\[1\] holds NaN"):
        select_by_agreement(bad, bwd, n_src, n_tgt)
    with pytest.raises(ValueError, match="shifts"):
        select_by_agreement(fwd, bwd, n_src, n_tgt, shifts=("sideways",))
    with pytest.raises(ValueError, match="thresholds"):
        select_by_agreement(fwd, bwd, n_src, n_tgt, thresholds=(1.5,))
