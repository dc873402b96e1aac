"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention`.

It gives PyTorch's fused kernels (flash, memory-efficient, cuDNN on CUDA; the flash CPU kernel on
the CPU). SDPA returns no attention weights, so calls that ask for weights go elsewhere.

Some of those kernels give 0, not NaN, for a query row that holds NaN (the CPU kernel does for
some head sizes); the output of such rows is set to NaN, as every backend gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionInputs, Backend
from .policy import sdpa_rank

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SDPABackend(Backend):
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention (PyTorch's fused kernels)"

    def rank(self, inputs: AttentionInputs) -> int | None:
        return sdpa_rank(inputs)

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        reasons = []
        if inputs.return_weights:
            reasons.append("SDPA returns no attention weights (return_weights was asked)")
        if inputs.dtype not in _DTYPES:
            reasons.append(f"dtype {inputs.dtype} is not one of {_DTYPES}")
        return reasons

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        q, k, v, mask = inputs.query, inputs.key, inputs.value, inputs.mask
        b, h, length, _ = q.shape
        if inputs.groups == 1:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale
            )
        else:
            # Fold the query heads of a group into the query length, (B, Hk, G*L, E), rather
            # than `enable_gqa`: faster, and every exporter can express it.
            folded = q.reshape(b, inputs.kv_heads, inputs.groups * length, -1)  # (B, Hk, G*L, E)
            out = F.scaled_dot_product_attention(
                folded,
                k,
                v,
                attn_mask=_folded_mask(mask, inputs.kv_heads, inputs.groups, length),
                dropout_p=inputs.dropout_p,
                scale=inputs.scale,
            )
            out = out.reshape(b, h, length, -1)  # (B, H, L, Ev)
        # A row sum is NaN where the row holds a NaN (never for finite values, which may only
        # overflow to Inf): ~100x cheaper than isnan(q).any(-1) on the CPU.
        nan_rows = torch.isnan(q.sum(dim=-1, keepdim=True))  # (B, H, L, 1)
        return torch.where(nan_rows, float("nan"), out), None


def _folded_mask(mask: Tensor | None, kv_heads: int, groups: int, length: int) -> Tensor | None:
    """A mask broadcastable to (B, H, L, S) as one broadcastable to the folded (B, Hk, G*L, S):
    folded row g*L + l of K/V head j is query l of head j*G + g."""
    if mask is None:
        return None
    bm, hm, lm, sm = mask.shape
    if hm == 1 and lm == 1:
        return mask  # the same for every head and query: broadcasts unchanged
    if hm == 1:  # the same for every head: repeat it for the G heads of a group
        return mask.unsqueeze(2).expand(bm, 1, groups, lm, sm).reshape(bm, 1, groups * lm, sm)
    m = mask.expand(bm, hm, length, sm)  # (B|1, H, L, S|1)
    return m.reshape(bm, kv_heads, groups * length, sm)  # (B|1, Hk, G*L, S|1)
