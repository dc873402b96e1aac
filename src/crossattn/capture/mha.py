"""Maps from `torch.nn.MultiheadAttention`, by a forward hook that recomputes them.

The module runs as it always does (its fast path included); the hook takes the call's query,
key, value and masks and recomputes the weights through the op with the module's own
projection weights. When the call already returned weights that hold what is recorded (asked
with ``need_weights=True``, in eval mode or without dropout) they are used, with the rows that
may attend to no key (NaN in torch's weights) set to 0; the module's own weights are not
modified.

Conventions: torch's masks use True = "ignore"; they are turned into crossattn's True = "may
attend" here. A query row with no key it may attend to gets weights 0 (torch gives NaN).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._signature import call_arguments
from .recompute import mask_4d, merge_masks, recompute_weights

KIND = "torch.nn.MultiheadAttention"


def matches(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention)


def make_hook(recorder: Any, name: str):
    def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
        call = call_arguments(module, args, kwargs)
        query, key = call["query"], call["key"]
        if query is key:
            return  # self-attention: not recorded
        claim = recorder._claim(name, KIND)
        if claim is None:
            return
        weights, heads_done = _weights(module, call, output, recorder.heads)
        recorder._store(claim, weights, heads_done=heads_done)

    return hook


def _weights(
    mha: nn.MultiheadAttention, call: dict[str, Any], output: Any, heads: str | tuple[int, ...]
) -> tuple[Tensor, bool]:
    returned = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    unbatched = call["query"].dim() == 2
    if returned is not None and (not mha.training or mha.dropout == 0.0):
        averaged = bool(call["average_attn_weights"])
        if not averaged or heads == "mean":
            w = returned.detach()
            w = w.unsqueeze(0) if unbatched else w  # (B, L, S) averaged, else (B, H, L, S)
            empty = _empty_rows(mha, call, w.dtype)  # (B|1, H|1, L, 1) or None
            if empty is None:
                return w, averaged
            if not averaged:
                return w.masked_fill(empty, 0.0), False
            if empty.shape[1] == 1:
                return w.masked_fill(empty[:, 0], 0.0), True
            # Head-dependent empty rows: torch's head mean is NaN over the whole row, where
            # the convention is the mean of the heads' weights with the empty heads at 0.
    return _recompute(mha, call, heads), True


def _empty_rows(
    mha: nn.MultiheadAttention, call: dict[str, Any], dtype: torch.dtype
) -> Tensor | None:
    """(B|1, H|1, L, 1): True where a query row may attend to no key; None when none is."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return None  # torch leaves the extra key open in every row
    if call.get("key_padding_mask") is None and call.get("attn_mask") is None:
        return None
    query, key = call["query"], call["key"]
    if query.dim() == 2:
        b, length, s = 1, query.shape[0], key.shape[0]
    elif mha.batch_first:
        b, length, s = query.shape[0], query.shape[1], key.shape[1]
    else:
        b, length, s = query.shape[1], query.shape[0], key.shape[0]
    attn_mask, key_mask = _masks(call, b, mha.num_heads, length, s, 0, dtype)
    allowed = None
    if attn_mask is not None:
        allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
        allowed = mask_4d(allowed)
    if key_mask is not None:
        km = key_mask[:, None, None, :]  # (B, 1, 1, S)
        allowed = km if allowed is None else allowed & km
    empty = ~allowed.any(dim=-1, keepdim=True)
    return empty if bool(empty.any()) else None


def _recompute(mha: nn.MultiheadAttention, call: dict[str, Any], heads) -> Tensor:
    query, key = call["query"], call["key"]
    if query.is_nested or key.is_nested:
        raise ValueError(f"{KIND}: recording maps of nested-tensor inputs is not supported")
    if query.dim() == 2:  # unbatched (L, E), (S, kdim)
        query, key = query.unsqueeze(0), key.unsqueeze(0)
    elif not mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)  # (B, L, E), (B, S, kdim)
    b, length, e = query.shape
    h = mha.num_heads
    d = e // h
    if mha._qkv_same_embed_dim:
        w_q, w_k, _ = mha.in_proj_weight.chunk(3, dim=0)
    else:
        w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
    b_q = b_k = None
    if mha.in_proj_bias is not None:
        b_q, b_k, _ = mha.in_proj_bias.chunk(3, dim=0)
    with torch.no_grad():
        q = F.linear(query, w_q, b_q).view(b, length, h, d).transpose(1, 2)  # (B, H, L, D)
        k = F.linear(key, w_k, b_k)  # (B, S, E)
        extra = 0
        if mha.bias_k is not None:
            k = torch.cat([k, mha.bias_k.expand(b, 1, e)], dim=1)  # (B, S + 1, E)
            extra += 1
        s = k.shape[1]
        k = k.view(b, s, h, d).transpose(1, 2)  # (B, H, S, D)
        if mha.add_zero_attn:
            k = torch.cat([k, k.new_zeros(b, h, 1, d)], dim=2)  # (B, H, S + 1, D)
            extra += 1
    attn_mask, key_mask = _masks(call, b, h, length, k.shape[2], extra, q.dtype)
    return recompute_weights(
        q, k, heads=heads, scale=d**-0.5, attn_mask=attn_mask, key_mask=key_mask
    )


def _masks(
    call: dict[str, Any], b: int, h: int, length: int, s: int, extra: int, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """torch's (True = ignore) masks -> (attn_mask (B|1, H|1, L, S), key_mask (B, S))."""
    kpm, am = call.get("key_padding_mask"), call.get("attn_mask")
    key_mask = attn_mask = None
    if kpm is not None:
        kpm = kpm.reshape(-1, kpm.shape[-1])  # (B, S0) also for an unbatched (S0,)
        if kpm.dtype == torch.bool:
            key_mask = F.pad(~kpm, (0, extra), value=True)  # (B, S)
        else:
            attn_mask = F.pad(kpm.to(dtype), (0, extra))[:, None, None, :]  # (B, 1, 1, S)
    if am is not None:
        if am.dim() == 3:
            am = am.reshape(b, h, length, am.shape[-1])  # (B*H, L, S0) -> (B, H, L, S0)
        am = F.pad(am, (0, extra), value=False) if am.dtype == torch.bool else F.pad(am, (0, extra))
        attn_mask = merge_masks(attn_mask, ~am if am.dtype == torch.bool else am.to(dtype))
    return attn_mask, key_mask
