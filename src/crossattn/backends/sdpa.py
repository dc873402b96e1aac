"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention`.

It gives PyTorch's fused kernels (flash, memory-efficient, cuDNN on CUDA; the flash CPU kernel on
the CPU). SDPA returns no attention weights, so calls that ask for weights go elsewhere.

Some of those kernels give 0, not NaN, for a query row that holds NaN (the CPU kernel does for
some head sizes); the output of such rows is set to NaN, as every backend gives.

Where the fused CPU kernel is the slow choice, this backend runs SDPA's math itself (scores,
softmax, dropout, value matmul; 16-bit inputs in float32, as SDPA's math does), see `_use_math`:

- dropout: PyTorch's CPU kernel has none, and SDPA falls back to its math with ``bernoulli_``
  draws; here the cheaper keep-mask of `crossattn.masks.dropout_mask` draws them (same law): an
  op call with a key mask at (64, 4, 22, 20, 64), forward and backward, 1.2x faster in float32
  and 1.25x under bfloat16 autocast (Intel Xeon, 2 threads);
- the backward of 16-bit inputs over short sequences (at most ``MATH_BACKWARD_MAX_LEN`` query
  rows and keys): the fused kernel's backward took 12.0 ms at (64, 4, 22, 20, 64) in bfloat16,
  the math 2.65 ms (7.85 against 4.44 ms at (8, 4, 128, 128, 64); at 256 x 256 the fused
  kernel wins, 4.98 against 8.14 ms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import dropout_mask
from .base import AttentionInputs, Backend
from .policy import sdpa_rank

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)
# Query rows (G x L when grouped heads are folded) and keys up to which a 16-bit backward runs
# the math rather than the fused CPU kernel's backward (see the module docstring).
MATH_BACKWARD_MAX_LEN = 128


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
        attend = _math if _use_math(inputs) else _fused
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


def _use_math(inputs: AttentionInputs) -> bool:
    """Whether this call runs SDPA's math here rather than the fused kernel (module docstring):
    on the CPU, with dropout, or with gradients of 16-bit inputs over short sequences."""
    if inputs.device.type != "cpu":
        return False
    if inputs.dropout_p > 0.0:
        return True
    rows = inputs.groups * inputs.q_len
    short = rows <= MATH_BACKWARD_MAX_LEN and inputs.kv_len <= MATH_BACKWARD_MAX_LEN
    return inputs.requires_grad and inputs.dtype in _HALF and short


def _fused(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, inputs: AttentionInputs):
    """SDPA of (B, Hk, Lq, E) queries (grouped heads folded into Lq) over (B, Hk, S, E) keys:
    (B, Hk, Lq, Ev)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=inputs.dropout_p, scale=inputs.scale
    )


def _math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, inputs: AttentionInputs):
    """SDPA's math, dropout by the cheaper keep-mask: (B, Hk, Lq, E) queries (grouped heads
    folded into Lq) over (B, Hk, S, E) keys -> (B, Hk, Lq, Ev).
    16-bit inputs are computed in float32, as SDPA's math does. Every row has an allowed key
    here (the op opens the empty ones before any backend)."""
    dtype = q.dtype
    if dtype in _HALF:
        q, k, v = q.float(), k.float(), v.float()
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(inputs.scale)  # (B, Hk, Lq, S)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    if inputs.dropout_p > 0.0:  # the op checks 0 <= dropout_p < 1
        probs = probs * dropout_mask(probs, inputs.dropout_p)
    return torch.matmul(probs, v).to(dtype)


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
