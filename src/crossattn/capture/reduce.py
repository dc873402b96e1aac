"""Reductions applied to a map as it is recorded: heads, image grid, top-k; sizes in bytes.

A map is (B, L, S) for the head mean or (B, heads, L, S) when heads are kept: L query (target)
positions, S context (source) positions. Top-k maps are sparse CSR tensors of that same shape
with exactly k stored entries per query row (`to_dense` gives the dense map, zeros elsewhere).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks

HeadsArg = Literal["mean", "all"] | Sequence[int]


def check_heads(heads: object) -> str | tuple[int, ...]:
    """Validate the `heads` argument: "mean", "all", or a non-empty list of head indices."""
    if heads in ("mean", "all"):
        return heads  # type: ignore[return-value]
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or len(heads) == 0:
        raise ValueError(f"heads must be 'mean', 'all' or a non-empty list of ints, got {heads!r}")
    try:
        return _checks.nonnegative_ints(**{f"heads[{i}]": h for i, h in enumerate(heads)})
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"heads must list non-negative int head indices, got {heads!r} ({error})"
        ) from None


def check_head_indices(heads: tuple[int, ...], num_heads: int, layer: str) -> None:
    bad = [h for h in heads if h >= num_heads]
    if bad:
        raise ValueError(
            f"heads={list(heads)} asks for head(s) {bad}, but layer {layer!r} has {num_heads} "
            f"heads (indices 0..{num_heads - 1})"
        )


def select_heads(weights: Tensor, heads: str | tuple[int, ...], layer: str) -> Tensor:
    """(B, H, L, S) or (B, L, S) -> (B, L, S) for "mean", (B, H', L, S) otherwise."""
    if heads == "mean":
        return weights.mean(dim=1) if weights.dim() == 4 else weights  # (B, L, S)
    if weights.dim() != 4:
        raise ValueError(
            f"heads={heads!r} keeps heads, but layer {layer!r} gave head-mean weights of shape "
            f"{tuple(weights.shape)}; expected (B, heads, L, S)"
        )
    if heads == "all":
        return weights
    check_head_indices(heads, weights.shape[1], layer)  # type: ignore[arg-type]
    return weights[:, list(heads)]  # (B, H', L, S)


def check_grid(grid: object) -> tuple[int, int] | None:
    """None, or the grid (gh, gw) as ints from a positive int or a pair of them."""
    if grid is None:
        return None
    pair = grid if isinstance(grid, (tuple, list)) else (grid, grid)
    try:
        if len(pair) != 2:
            raise ValueError
        return _checks.positive_ints(gh=pair[0], gw=pair[1])  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise ValueError(
            f"grid must be None, a positive int or (gh, gw) positive ints, got {grid!r}"
        ) from None


def infer_hw(length: int, image_size: tuple[int, int] | None, layer: str) -> tuple[int, int]:
    """The (h, w) with h * w == length whose aspect ratio is nearest `image_size` (H, W).

    Without an image size the query positions must form a square.
    """
    if image_size is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(
                f"grid= needs the query positions of layer {layer!r} as an image, but L={length} "
                "is not a square and no image size is known; pass image_size=(H, W) to "
                "AttentionRecorder"
            )
        return side, side
    big_h, big_w = image_size
    target = math.log(big_h / big_w)
    best: tuple[float, int, int] | None = None
    for h in range(1, length + 1):
        if length % h:
            continue
        w = length // h
        if h > big_h or w > big_w:
            continue
        err = abs(math.log(h / w) - target)
        if best is None or err < best[0]:
            best = (err, h, w)
    if best is None or best[0] > math.log(2.0):
        raise ValueError(
            f"grid= needs the query positions of layer {layer!r} as an image, but L={length} "
            f"does not factor into (h, w) with the aspect ratio of image_size={image_size}"
        )
    return best[1], best[2]


def to_grid(weights: Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Resample the query positions of (..., h*w, S) to (..., gh*gw, S).

    Downsampling averages areas; upsampling is bilinear. Each output row is a weighted average
    of input rows with weights summing to 1, so a row of probabilities stays one.
    """
    *lead, length, s = weights.shape
    h, w = hw
    gh, gw = grid
    if (h, w) == (gh, gw):
        return weights
    x = weights.reshape(-1, h, w, s).permute(0, 3, 1, 2)  # (N, S, h, w)
    dtype = x.dtype
    x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    if gh <= h and gw <= w:
        x = F.interpolate(x, size=(gh, gw), mode="area")
    else:
        x = F.interpolate(x, size=(gh, gw), mode="bilinear", align_corners=False, antialias=True)
    x = x.to(dtype).permute(0, 2, 3, 1)  # (N, gh, gw, S)
    return x.reshape(*lead, gh * gw, s)  # (..., gh*gw, S)


def top_k(weights: Tensor, k: int) -> Tensor:
    """Keep the k largest weights of each query row: a sparse CSR tensor of the same shape.

    (..., L, S) -> sparse CSR (..., L, S) with batch dimensions (...), exactly min(k, S) stored
    entries per query row (zeros included), columns ascending, int32 indices: 8 bytes per kept
    float32 weight instead of 4 bytes per weight of the dense map.
    """
    k = min(k, weights.shape[-1])
    values, cols = weights.topk(k, dim=-1)  # (..., L, k)
    cols, order = cols.sort(dim=-1)
    return from_topk_parts(values.gather(-1, order), cols, weights.shape)


def topk_parts(sparse: Tensor) -> tuple[Tensor, Tensor]:
    """(values, indices), both (..., L, k), of a map made by `top_k` (indices ascending)."""
    *lead, length, _ = sparse.shape
    values = sparse.values()  # (..., L * k)
    k = values.shape[-1] // max(length, 1)
    return values.reshape(*lead, length, k), sparse.col_indices().reshape(*lead, length, k)


def from_topk_parts(values: Tensor, cols: Tensor, size: Sequence[int]) -> Tensor:
    """The sparse CSR map of shape `size` (..., L, S) from values and indices (..., L, k)."""
    *lead, length, k = values.shape
    crow = torch.arange(length + 1, dtype=torch.int32, device=values.device) * k  # (L + 1,)
    crow = crow.expand(*lead, length + 1).contiguous()  # (..., L + 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        return torch.sparse_csr_tensor(
            crow,
            cols.to(torch.int32).reshape(*lead, length * k),
            values.reshape(*lead, length * k),
            tuple(size),
            check_invariants=False,  # built valid: k sorted columns per row
        )


def is_topk(weights: Tensor) -> bool:
    """Whether a recorded map is a top-k (sparse CSR) map."""
    return weights.layout == torch.sparse_csr


def to_dense(weights: Tensor) -> Tensor:
    """The dense map of a recorded map (dense maps come back unchanged)."""
    return weights.to_dense() if is_topk(weights) else weights


def nbytes(weights: Tensor) -> int:
    """Bytes held by a recorded map (values and indices for a sparse one)."""
    if is_topk(weights):
        return (
            weights.values().nbytes + weights.col_indices().nbytes + weights.crow_indices().nbytes
        )
    return weights.nbytes
