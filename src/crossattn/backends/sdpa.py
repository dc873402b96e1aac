"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention`.

It gives PyTorch's fused kernels (flash, memory-efficient, cuDNN on CUDA; the flash CPU kernel on
the CPU). SDPA returns no attention weights, so calls that ask for weights go elsewhere.

Some of those kernels give 0, not NaN, for a query row that holds NaN (the CPU kernel does for
some head sizes); the output of such rows is set to NaN, as every backend gives.

Dropout on the CPU: PyTorch's CPU kernel has none, and SDPA then runs its math path with
``bernoulli_`` draws. This backend runs the same math (scores, softmax, dropout, value matmul)
with the cheaper keep-mask of `crossattn.masks.dropout_mask` instead (16-bit inputs in float32,
as SDPA's math): an op call with a key mask at (64, 4, 22, 20, 64), forward and backward, 1.2x
faster in float32 and 1.25x under bfloat16 autocast (Intel Xeon, 2 threads), with the same law.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import dropout_mask
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
        attend = _math_with_dropout if _own_dropout(inputs) else _fused
        if inputs.groups == 1:
            out = attend(q, k, v, mask, inputs)
        else:
            # Fold the query heads of a group into the query length, (B, Hk, G*L, E), rather
            # than `enable_gqa`: faster, and every exporter can express it.
            folded = q.reshape(b, inputs.kv_heads, inputs.groups * length, -1)  # (B, Hk, G*L, E)
            mask = _folded_mask(mask, inputs.kv_heads, inputs.groups, length)
            out = attend(folded, k, v, mask, inputs).reshape(b, h, length, -1)  # (B, H, L, Ev)
        # A row sum is NaN where the row holds a NaN (never for finite values, which may only
        # overflow to Inf): ~100x cheaper than isnan(q).any(-1) on the CPU. The NaN is added to
        # those rows (0 to the others) through a (B, H, L, 1) tensor: a broadcast add is several
        # times cheaper than a broadcast torch.where over the whole output.
        nan_rows = torch.isnan(q.sum(dim=-1, keepdim=True))  # (B, H, L, 1)
        return out + torch.where(nan_rows, float("nan"), 0.0).to(out.dtype), None


def _own_dropout(inputs: AttentionInputs) -> bool:
    """Dropout on the CPU, where SDPA would fall back to its math path with bernoulli_ draws."""
    return inputs.dropout_p > 0.0 and inputs.device.type == "cpu"


def _fused(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, inputs: AttentionInputs):
    """SDPA of (B, Hq, Lq, E) queries over (B, Hq, S, E) keys: (B, Hq, Lq, Ev)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale
    )


def _math_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, inputs):
    """SDPA's math with the cheaper dropout keep-mask: (B, Hq, Lq, E) -> (B, Hq, Lq, Ev).
    16-bit inputs are computed in float32, as SDPA's math does. Every row has an allowed key
    here (the op opens the empty ones before any backend)."""
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(inputs.scale)  # (B, Hq, Lq, S)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    p = inputs.dropout_p
    return torch.matmul(probs * (dropout_mask(probs, p) if p < 1.0 else 0.0), v).to(dtype)


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
