"""The lse backend: the output of PyTorch's fused kernel, weights rebuilt from its log-sum-exp.

PyTorch's fused attention kernels return the row log-sum-exp of the scaled scores next to the
output: the flash kernel of the CPU (``aten._scaled_dot_product_flash_attention_for_cpu``) and the
memory-efficient kernel of CUDA (``aten._scaled_dot_product_efficient_attention``). With it the
attention weights of any block of queries are exact without a second softmax pass over the keys::

    weights[b, h, l, :] = exp(scale * q[b, h, l] @ k[b, h // G].T + mask - lse[b, h, l])

so this backend returns the fused kernel's output unchanged and, when weights are asked for,
recomputes them one block of queries at a time (every head of the block, every key): its extra
memory is one block of scores (``TILE_BYTES``) plus the weights themselves. The exponent is
taken in base 2 with log2(e) folded into the matmul's scale (``exp2`` is the fast one on some
CPUs). bfloat16 scores come out of a bfloat16 matmul, float16 ones out of a float32 matmul (their
scores overflow); the log-sum-exp is subtracted in float32 (float64 for float64 inputs).

Gradients flow through the output by the fused kernel's own backward. Weights carry no gradient
(calls that need one go to ``reference``). Calls the kernel cannot run (dropout, a float mask
that needs a gradient, a value head dim Ev different from E, other devices) take the output from
public SDPA instead, and the weights pass then finds each row's log-sum-exp in its own block,
whose rows hold every key.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .base import LOG2E, AttentionInputs, Backend
from .policy import lse_rank
from .reference import compute_dtype
from .sdpa import SDPABackend

# Extra memory of the weights pass: one block of scores, every buffer of it together.
TILE_BYTES = 32 << 20
_CPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The memory-efficient CUDA kernel wants the rows of a bias aligned to this many elements.
_BIAS_ALIGNMENT = 16


def kernel_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The mask as the fused kernels take it: additive, in the query dtype, same shape."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf")
    )


def _cuda_bias(mask: Tensor | None, shape: tuple[int, int, int, int]) -> Tensor | None:
    """An additive mask (B|1, H|1, L|1, S|1) as the memory-efficient kernel's bias (B, H, L, S).

    Its rows are padded to an aligned stride and sliced back, then expanded (no copy), as
    PyTorch's own SDPA does before calling the kernel.
    """
    if mask is None:
        return None
    s = mask.shape[-1]
    if any(st % _BIAS_ALIGNMENT for st in mask.stride()[:-1]) or mask.stride(-1) != 1:
        padded = -(-s // _BIAS_ALIGNMENT) * _BIAS_ALIGNMENT
        mask = torch.nn.functional.pad(mask, (0, padded - s))[..., :s]
    return mask.expand(shape)


def fused_with_lse(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """One fused kernel call with as many K/V heads as query heads.

    query (B, H, L, E), key (B, H, S, E), value (B, H, S, E), mask None or additive in the
    query dtype, broadcastable to (B, H, L, S). Returns out (B, H, L, E) in the query dtype and
    lse (B, H, L), the natural log-sum-exp of the masked, scaled scores (float32; float64 for
    float64 inputs on the CPU). Differentiable in query, key and value.
    """
    if query.device.type == "cuda":
        b, h, length, _ = query.shape
        bias = _cuda_bias(mask, (b, h, length, key.shape[2]))
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, True, 0.0, False, scale=scale
        )
        return out, lse[..., :length]  # the kernel pads lse's last dim
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=mask, scale=scale
    )


def attention_with_lse(inputs: AttentionInputs) -> tuple[Tensor, Tensor]:
    """out (B, H, L, Ev) and lse (B, H, L) of `inputs` from the fused kernel, grouped heads too.

    The G query heads that share a K/V head are folded into the query length when the mask is
    the same for every head and query, and otherwise run as G calls, one per group.
    """
    q, k, v = inputs.query, inputs.key, inputs.value
    mask = kernel_mask(inputs.mask, q.dtype)
    g = inputs.groups
    if g == 1:
        return fused_with_lse(q, k, v, mask, inputs.scale)
    b, h, length, e = q.shape
    hk = inputs.kv_heads
    if mask is None or (mask.shape[1] == 1 and mask.shape[2] == 1):
        folded = q.reshape(b, hk, g * length, e)  # (B, Hk, G*L, E)
        out, lse = fused_with_lse(folded, k, v, mask, inputs.scale)
        return out.reshape(b, h, length, -1), lse.reshape(b, h, length)
    q5 = q.view(b, hk, g, length, e)  # (B, Hk, G, L, E)
    m5 = mask.reshape(mask.shape[0], -1, g if mask.shape[1] > 1 else 1, *mask.shape[2:])
    outs, lses = [], []
    for gi in range(g):
        m = m5[:, :, gi if m5.shape[2] > 1 else 0]  # (B|1, Hk|1, L|1, S|1)
        out, lse = fused_with_lse(q5[:, :, gi], k, v, m, inputs.scale)
        outs.append(out)
        lses.append(lse)
    out = torch.stack(outs, dim=2).reshape(b, h, length, -1)  # (B, H, L, Ev)
    return out, torch.stack(lses, dim=2).reshape(b, h, length)  # (B, H, L)


def row_block(inputs: AttentionInputs, tile_bytes: int = TILE_BYTES) -> int:
    """Queries per block of the weights pass: every head of the block's scores in `tile_bytes`."""
    acc = compute_dtype(inputs.dtype)
    mm = _matmul_dtype(inputs.dtype)
    per_score = acc.itemsize + (mm.itemsize if mm != acc else 0)
    rows = max(1, tile_bytes // (per_score * inputs.heads * inputs.kv_len))
    length = inputs.q_len
    rows = min(rows, length)
    return -(-length // -(-length // rows))  # even blocks, no small last one


def _matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """bfloat16 scores from a bfloat16 matmul; float16 ones in float32 (they overflow)."""
    return torch.float32 if dtype == torch.float16 else dtype


class _Block:
    """Reusable buffers of the weights pass and the arithmetic of one block of queries."""

    def __init__(self, inputs: AttentionInputs, lse: Tensor | None, rows: int):
        q = inputs.query
        self.inputs = inputs
        self.acc, self.mm = compute_dtype(inputs.dtype), _matmul_dtype(inputs.dtype)
        h, s = inputs.heads, inputs.kv_len
        self.raw_flat = torch.empty(h * rows * s, dtype=self.mm, device=q.device)
        self.p_flat = self.raw_flat
        if self.mm != self.acc:
            self.p_flat = torch.empty(h * rows * s, dtype=self.acc, device=q.device)
        mask = inputs.mask
        self.float_mask = mask is not None and mask.is_floating_point()
        # Log2 units for exp2, except with a float mask: it is added in natural units after the
        # shift, so that a mask of finfo.min cannot overflow to -inf when scaled by log2(e).
        self.unit = 1.0 if self.float_mask else LOG2E
        self.neg_lse = None  # (B, Hk, G*L, 1): subtracted by the score matmul itself
        if lse is not None:
            b, length = inputs.batch, inputs.q_len
            neg = (lse * -self.unit).to(self.acc)  # (B, H, L)
            self.neg_lse = neg.view(b, inputs.kv_heads, inputs.groups, length)  # (B, Hk, G, L)

    def probs(self, bi: int, r0: int, r1: int, q_blk: Tensor, k_t: Tensor) -> Tensor:
        """Weights (H, r, S) of batch entry `bi`, queries [r0, r1): head hk * G + g in order.

        q_blk (Hk, G*r, E) and k_t (Hk, E, S) in the matmul dtype.
        """
        inputs, h, s, r = self.inputs, self.inputs.heads, self.inputs.kv_len, r1 - r0
        hk, rows = inputs.kv_heads, q_blk.shape[1]
        alpha = inputs.scale * self.unit
        p = self.p_flat[: h * r * s].view(hk, rows, s)
        if self.neg_lse is not None and p.dtype == self.mm:
            # scores - lse in one matmul: the output starts as -lse (beta = 1)
            neg = self.neg_lse[bi, :, :, r0:r1].reshape(hk, rows, 1).expand(hk, rows, s)
            torch.baddbmm(neg, q_blk, k_t, alpha=alpha, out=p)
        else:
            raw = self.raw_flat[: h * r * s].view(hk, rows, s)
            torch.baddbmm(raw, q_blk, k_t, beta=0.0, alpha=alpha, out=raw)
            if self.neg_lse is not None:  # 16-bit scores: the shift in float32
                neg = self.neg_lse[bi, :, :, r0:r1].reshape(hk, rows, 1)
                torch.add(raw, neg, out=p)
            elif p is not raw:
                p.copy_(raw)
        p = p.view(h, r, s)
        mask = inputs.mask
        if mask is not None:
            lsl = slice(r0, r1) if mask.shape[2] > 1 else slice(None)
            m = mask[bi if mask.shape[0] > 1 else 0, :, lsl]  # (H|1, r|1, S|1)
            if self.float_mask:
                p.add_(m)
            else:
                p.masked_fill_(~m, float("-inf"))
        if self.neg_lse is None:
            p.sub_(torch.amax(p, dim=-1, keepdim=True))  # every row has a key it may attend
        if self.float_mask:
            p.mul_(LOG2E)
        torch.exp2(p, out=p)
        if self.neg_lse is None:
            p.div_(torch.sum(p, dim=-1, keepdim=True))
        return p


def weights_from_lse(
    inputs: AttentionInputs, lse: Tensor | None, tile_bytes: int = TILE_BYTES
) -> Tensor:
    """The weights of `inputs`, (B, H, L, S) or their head mean (B, L, S), from lse (B, H, L).

    One block of queries at a time, all heads and keys: scores (H, rows, S) = scale * q @ k^T
    (+ mask), then ``exp(scores - lse)``. Without `lse` (calls the kernel cannot run) each row's
    log-sum-exp comes from the block itself, whose rows are whole. Extra memory: one block of
    scores (at most `tile_bytes`).
    """
    q, k = inputs.query, inputs.key
    b, h, length, e = q.shape
    hk, g, s = inputs.kv_heads, inputs.groups, inputs.kv_len
    mean = inputs.return_weights == "mean"
    shape = (b, length, s) if mean else (b, h, length, s)
    weights = torch.empty(shape, dtype=inputs.dtype, device=q.device)
    rows = row_block(inputs, tile_bytes)
    block = _Block(inputs, lse, rows)
    head_sum = None  # float32 head sums of 16-bit weights, one block of rows
    if mean and inputs.dtype != block.acc:
        head_sum = torch.empty(rows * s, dtype=block.acc, device=q.device)
    q5 = q.view(b, hk, g, length, e)  # (B, Hk, G, L, E)
    for bi in range(b):
        k_t = k[bi].transpose(1, 2).to(block.mm)  # (Hk, E, S)
        for r0 in range(0, length, rows):
            r1 = min(r0 + rows, length)
            q_blk = q5[bi, :, :, r0:r1].reshape(hk, g * (r1 - r0), e).to(block.mm)  # (Hk, G*r, E)
            p = block.probs(bi, r0, r1, q_blk, k_t)  # (H, r, S)
            if not mean:
                weights[bi, :, r0:r1].copy_(p)
            elif head_sum is None:
                torch.sum(p, dim=0, out=weights[bi, r0:r1])
            else:
                dst = head_sum[: (r1 - r0) * s].view(r1 - r0, s)
                weights[bi, r0:r1].copy_(torch.sum(p, dim=0, out=dst).div_(h))
    if mean and head_sum is None:
        weights.div_(h)
    return weights


def kernel_runs(inputs: AttentionInputs) -> bool:
    """Whether the fused kernel with a log-sum-exp can run `inputs` (else the output comes from
    public SDPA and the weights pass finds each row's log-sum-exp itself). Asked only with
    weights, hence without gradients (`LSEBackend.not_supported_reasons`)."""
    device = inputs.device.type
    dtypes = _CUDA_DTYPES if device == "cuda" else _CPU_DTYPES
    # The memory-efficient CUDA kernel wants head dims in whole 16-byte vectors.
    aligned = device != "cuda" or inputs.query.shape[-1] % 8 == 0
    return (
        device in ("cpu", "cuda")
        and aligned
        and inputs.dtype in dtypes
        and inputs.value.shape[-1] == inputs.query.shape[-1]
        and inputs.dropout_p == 0.0
    )


class LSEBackend(Backend):
    """PyTorch's fused kernel for the output; weights rebuilt per query block from its lse."""

    name = "lse"
    description = "fused kernel output and log-sum-exp; exact weights recomputed per query block"

    def __init__(self, tile_bytes: int = TILE_BYTES):
        self.tile_bytes = tile_bytes

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        reasons = _SDPA.not_supported_reasons(replace(inputs, return_weights=False))
        if inputs.return_weights and inputs.requires_grad:
            reasons.append(
                "its weights carry no gradient; weights that need gradients come from 'reference'"
            )
        return reasons

    def rank(self, inputs: AttentionInputs) -> int | None:
        return lse_rank(inputs)

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        lse = None
        # Without weights the log-sum-exp is not needed: the public op gives the same output
        # (and exports). While tracing, the aten kernel is left out too: the weights pass then
        # finds each row's log-sum-exp from its own block.
        if inputs.return_weights and kernel_runs(inputs) and not torch.jit.is_tracing():
            out, lse = attention_with_lse(inputs)
            # The kernel may give 0 for a query row holding NaN (Inf gives NaN scores already):
            # NaN in, NaN out, as on every backend. A NaN row sum marks them cheaply.
            nan_rows = torch.isnan(inputs.query.sum(dim=-1, keepdim=True))  # (B, H, L, 1)
            out = torch.where(nan_rows, float("nan"), out)
        else:  # no weights; or dropout, Ev != E: the public op
            out, _ = _SDPA.forward(replace(inputs, return_weights=False))
        if not inputs.return_weights:
            return out, None
        with torch.no_grad():
            weights = weights_from_lse(
                inputs, None if lse is None else lse.detach(), self.tile_bytes
            )
            # a row whose scores hold NaN is NaN throughout, masked keys included (as softmax)
            bad = ~torch.isfinite(out).all(dim=-1, keepdim=True)  # (B, H, L, 1)
            if inputs.return_weights == "mean":
                bad = bad.any(dim=1)  # (B, L, 1): any head of the row
            weights = torch.where(bad, float("nan"), weights)
        return out, weights


_SDPA = SDPABackend()
