"""Recompute attention maps from a module's queries and keys, block by block, through the op.

Used for modules that are not crossattn layers (torch MultiheadAttention, transformers and
diffusers attention): their forward keeps its own fast path, and the maps are recomputed from
the same inputs with `crossattn.cross_attention(..., return_weights=...)`, one block of queries
at a time, so the extra memory is one block's scores plus the map being recorded. Also used for
crossattn layers that hand over no weights (see `crossattn.layers.hooks`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import cross_attention

# Scores held at once per block: B * heads * block_len * S elements at most.
BLOCK_ELEMENTS = 1 << 22


def mask_4d(mask: Tensor | None) -> Tensor | None:
    """A mask broadcastable to (B, H, L, S), given with fewer leading dims, as 4-D."""
    if mask is None:
        return None
    if mask.dim() > 4:
        raise ValueError(f"attention mask must have at most 4 dims, got {tuple(mask.shape)}")
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))


def merge_masks(base: Tensor | None, extra: Tensor | None) -> Tensor | None:
    """One attention mask from an additive float `base` (or None) and `extra`: None, bool
    (True = may attend: -inf in `base` where False) or additive float (added)."""
    if base is None:
        return extra
    if extra is None:
        return base
    if extra.dtype == torch.bool:
        return base.masked_fill(~extra, float("-inf"))
    return base + extra


def recompute_weights(
    query: Tensor,
    key: Tensor,
    *,
    heads: str | tuple[int, ...],
    scale: float,
    attn_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    backend: str | None = "chunked",
) -> Tensor:
    """Attention weights of `query` over `key`, as the recorder keeps them.

    Args:
        query: (B, H, L, E), the module's projected (and normalised) queries.
        key: (B, Hk, S, E), its keys; H must be a multiple of Hk.
        heads: "mean" -> (B, L, S); "all" -> (B, H, L, S); head indices -> (B, len, L, S).
        scale: the module's score scale.
        attn_mask: bool (True = may attend) or additive float, broadcastable to (B, H, L, S).
        key_mask: (B, S) bool, True = valid context token.
        backend: the op's backend; "chunked" keeps memory bounded on every device.

    Returns:
        The weights, in the query's dtype, without gradient.
    """
    b, h, length, _ = query.shape
    hk, s = key.shape[1], key.shape[2]
    groups = h // hk
    attn_mask = mask_4d(attn_mask)
    if heads not in ("mean", "all"):
        index = torch.tensor(heads, device=query.device, dtype=torch.long)
        query = query.index_select(1, index)  # (B, H', L, E)
        key = key.index_select(1, torch.div(index, groups, rounding_mode="floor"))  # (B, H', S, E)
        if attn_mask is not None and attn_mask.shape[1] > 1:
            attn_mask = attn_mask.index_select(1, index)
        h = len(heads)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(query.dtype)
    # The op also returns an output; a one-wide value makes it cost next to nothing.
    value = key[..., :1]  # (B, Hk, S, 1)
    mode = "mean" if heads == "mean" else True
    if length == 0:  # no queries: an empty map
        shape = (b, 0, s) if mode == "mean" else (b, h, 0, s)
        return query.new_zeros(shape)
    block = max(1, BLOCK_ELEMENTS // max(1, b * h * s))
    pieces = []
    with torch.no_grad():
        for start in range(0, length, block):
            rows = slice(start, min(start + block, length))
            mask = attn_mask
            if mask is not None and mask.shape[2] > 1:
                mask = mask[:, :, rows]
            _, weights = cross_attention(
                query[:, :, rows],
                key,
                value,
                attn_mask=mask,
                key_mask=key_mask,
                scale=scale,
                backend=backend,
                return_weights=mode,
            )
            pieces.append(weights)  # (B, L_block, S) or (B, H', L_block, S)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)
