"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention`.

It gives PyTorch's fused kernels (flash, memory-efficient, cuDNN on CUDA; the flash CPU kernel on
the CPU). SDPA returns no attention weights, so calls that ask for weights go elsewhere.
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
        gqa = inputs.groups > 1
        if gqa and (mask is None or (mask.shape[1] == 1 and mask.shape[2] == 1)):
            # Fold the query heads of a group into the query length: (B, Hk, G*L, E). The mask
            # does not vary over heads or queries, so it broadcasts unchanged.
            b, h, length, _ = q.shape
            q = q.reshape(b, inputs.kv_heads, inputs.groups * length, -1)  # (B, Hk, G*L, E)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale
            )
            return out.reshape(b, h, length, -1), None  # (B, H, L, Ev)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale, enable_gqa=gqa
        )
        return out, None
