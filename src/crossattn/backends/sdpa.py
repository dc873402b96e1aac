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

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SDPABackend(Backend):
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention (PyTorch's fused kernels)"

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
        elif mask is None or (mask.shape[1] == 1 and mask.shape[2] == 1):
            # Fold the query heads of a group into the query length: (B, Hk, G*L, E). The mask
            # does not vary over heads or queries, so it broadcasts unchanged.
            folded = q.reshape(b, inputs.kv_heads, inputs.groups * length, -1)  # (B, Hk, G*L, E)
            out = F.scaled_dot_product_attention(
                folded, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale
            )
            out = out.reshape(b, h, length, -1)  # (B, H, L, Ev)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale,
                enable_gqa=True,
            )  # fmt: skip
        # A row sum is NaN where the row holds a NaN (never for finite values, which may only
        # overflow to Inf): ~100x cheaper than isnan(q).any(-1) on the CPU.
        nan_rows = torch.isnan(q.sum(dim=-1, keepdim=True))  # (B, H, L, 1)
        return out.masked_fill(nan_rows, float("nan")), None
