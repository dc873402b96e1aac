"""The chunked backend: online softmax over tiles of queries and keys, in PyTorch.

Its peak extra memory is bounded by the tile size, never by L x S: it holds one tile of scores
(``TILE_ELEMENTS`` of them, a few MiB) and reuses the same buffers for every tile. Statistics
(running max, sum, accumulator) are kept in float32 for float32 and lower-precision inputs, and
in float64 for float64 inputs. Weights, or their head mean, come from tiles of whole rows (every
key) in the output's own pass (see `plan`), or are recomputed tile by tile from the row
log-sum-exp, as the backward does, so training is memory-bounded too.

What makes it fast on the CPU (see ``benchmarks/RESULTS.md``):

- softmax in base 2: log2(e) is folded into the matmul's scale and `exp2` replaces `exp` (fp32
  `exp` goes through slow vector maths on some processors);
- one set of tile buffers per call, written with ``out=``: a fresh large allocation costs a page
  fault per 4 KiB, more than the arithmetic on it;
- bfloat16 matmuls (2.6x the float32 rate) with float32 statistics: scores come out of the
  matmul in bfloat16, are shifted by the row max into float32, exponentiated and summed there,
  and the normalised probabilities go back to bfloat16 for the value matmul;
- when the whole context fits one key block (text conditioning, decode steps) there is no online
  rescaling: one matmul, one softmax, one matmul per tile, over as many (batch, head) pairs at
  once as the tile holds (all of them for a decode step);
- the query heads that share a K/V head are folded into the query length when the mask allows.

float16 matmuls are not used (their scores overflow at 65504): float16 tiles are upcast to
float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LOG2E, AttentionInputs, Backend
from .chunked_plan import (  # noqa: F401  (the tiling's constants, importable from here too)
    FLOAT32_WHOLE_ROWS_MAX_S,
    KEYS_FIRST_MAX_S,
    MIN_ROWS,
    TILE_ELEMENTS,
    WEIGHTS_MIN_ROWS,
    _Plan,
    _Tile,
    plan,
)
from .policy import MAX_SINGLE_BLOCK, chunked_rank
from .reference import compute_dtype
from .traced_tiles import traced_forward


def _buffer(flat: Tensor, *shape: int) -> Tensor:
    """A contiguous view of the first prod(shape) elements of a reusable flat buffer."""
    return flat[: math.prod(shape)].view(shape)


class _Operands:
    """Per-call state: flattened (B*Hk) operands, scale in log2 units, mask access."""

    def __init__(self, inputs: AttentionInputs, plan_: _Plan):
        self.inputs = inputs
        self.plan = plan_
        self.acc = compute_dtype(inputs.dtype)
        # Matmul dtype: bfloat16 runs its own matmuls; float16 is upcast (its scores overflow).
        self.mm = torch.float32 if inputs.dtype == torch.float16 else inputs.dtype
        self.low = self.mm != self.acc
        b, h, length, e = inputs.query.shape
        hk, g, n = inputs.kv_heads, plan_.groups, plan_.entries
        ev = inputs.value.shape[-1]
        self.ev = ev
        q5 = inputs.query.reshape(b, hk, g, length, e)  # (B, Hk, G, L, E)
        if plan_.fold:
            self.q_groups = [q5.reshape(n, g * length, e)]  # (B*Hk, G*L, E)
        else:
            self.q_groups = [q5[:, :, gi].reshape(n, length, e) for gi in range(g)]  # (B*Hk, L, E)
        self.key_t = inputs.key.reshape(n, -1, e).transpose(1, 2)  # (B*Hk, E, S)
        self.value = inputs.value.reshape(n, -1, ev)  # (B*Hk, S, Ev)
        mask = inputs.mask
        self.mask = mask  # (B|1, H|1, L|1, S|1)
        self.mask_is_bool = mask is not None and mask.dtype == torch.bool
        self.floor = -torch.finfo(self.acc).max

    def q_rows(self, t: _Tile) -> Tensor:
        rows = self.q_groups[0 if t.group is None else t.group]
        return rows[t.i0 : t.i1, t.r0 : t.r1]  # (n, rows, E)

    def mask_tile(self, t: _Tile, ks: slice) -> Tensor | None:
        """The mask of one tile, broadcastable to (n, rows, sk)."""
        mask = self.mask
        if mask is None:
            return None
        p = self.plan
        bm, hm, lm, sm = mask.shape
        lsl = slice(t.r0, t.r1) if lm > 1 else slice(None)  # rows are queries when lm > 1
        ksl = ks if sm > 1 else slice(None)
        g = 0 if t.group is None else t.group
        b0, b1 = t.i0 // p.kv_heads, (t.i1 - 1) // p.kv_heads
        if bm == 1 and hm == 1:
            return mask[0, 0, lsl, ksl].unsqueeze(0)  # (1, rows|1, sk|1)
        if b0 == b1:
            h0 = (t.i0 % p.kv_heads) * p.groups + g
            h1 = ((t.i1 - 1) % p.kv_heads) * p.groups + g + 1
            hsl = slice(h0, h1, p.groups) if hm > 1 else slice(None)
            return mask[b0 if bm > 1 else 0, hsl, lsl, ksl]  # (n|1, rows|1, sk|1)
        entries = torch.arange(t.i0, t.i1, device=mask.device)
        b_idx = entries // p.kv_heads if bm > 1 else torch.zeros_like(entries)
        h_idx = (entries % p.kv_heads) * p.groups + g if hm > 1 else torch.zeros_like(entries)
        return mask[:, :, lsl, ksl][b_idx, h_idx]  # (n, rows|1, sk|1)

    def scores(
        self, t: _Tile, ks: slice, raw: Tensor, shifted: Tensor | None, log2: bool = True
    ) -> Tensor:
        """Masked scores of one tile into `raw` (matmul dtype): (n, rows, sk).

        In log2 units (for `exp2`) by default, in natural units (for `softmax`) with log2=False.

        For a float mask on low-precision inputs the masked scores land in `shifted` (float32)
        instead, so that the mask is added in float32; the returned tensor says which.
        """
        q = self.q_rows(t)
        k = self.key_t[t.i0 : t.i1, :, ks]
        if self.mm != q.dtype:
            q, k = q.to(self.mm), k.to(self.mm)
        unit = LOG2E if log2 else 1.0
        s = torch.baddbmm(raw, q, k, beta=0.0, alpha=self.inputs.scale * unit, out=raw)
        m = self.mask_tile(t, ks)
        if m is None:
            return s
        if self.mask_is_bool:
            return s.masked_fill_(~m, float("-inf"))
        if self.low:
            shifted.copy_(s)
            s = shifted
        s.add_(m, alpha=unit)
        # A mask of finfo.min times log2(e) overflows to -inf; keep such scores finite, as the
        # reference does, so that a row masked this way everywhere stays a uniform softmax.
        return s.clamp_(min=self.floor)

    def scores_keys_first(self, t: _Tile, ks: slice, raw: Tensor) -> Tensor:
        """Masked scores of one tile in natural units, laid out keys-first in `raw`.

        Returns the (n, rows, sk) view of a contiguous (n, sk, rows) tensor: a softmax over a
        short context then reduces across contiguous rows of queries, which vectorises far
        better than a reduction along a short, odd-length last dimension. Bool masks only.
        """
        q_t = self.q_rows(t).transpose(1, 2)  # (n, E, rows)
        k = self.key_t[t.i0 : t.i1, :, ks].transpose(1, 2)  # (n, sk, E)
        if self.mm != q_t.dtype:
            q_t, k = q_t.to(self.mm), k.to(self.mm)
        s_t = torch.baddbmm(raw, k, q_t, beta=0.0, alpha=self.inputs.scale, out=raw)
        m = self.mask_tile(t, ks)
        if m is not None:
            s_t.masked_fill_(~m.transpose(-1, -2), float("-inf"))
        return s_t.transpose(1, 2)  # (n, rows, sk)

    def values(self, t: _Tile, ks: slice) -> Tensor:
        v = self.value[t.i0 : t.i1, ks]  # (n, sk, Ev)
        return v.to(self.mm) if v.dtype != self.mm else v


def _keep_tile(seed: int, index: int, shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """The dropout keep-mask of one tile and key block, regenerated identically in backward."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed + 7919 * index) % (1 << 62))
    return torch.rand(shape, generator=gen, device=device) >= p


class _Weights:
    """Where the weights go: per head (B, H, L, S), or their head mean (B, L, S), reduced per
    tile or accumulated (each head divided by H) in the statistics dtype."""

    def __init__(self, inputs: AttentionInputs, plan_: _Plan):
        self.mode = inputs.return_weights
        self.plan = plan_
        b, h, length, s = plan_.batch, inputs.heads, plan_.q_len, plan_.kv_len
        # One query head per K/V head and tiles of whole batch rows: each tile holds every head
        # of its batch rows, so the head mean is one reduction straight into the result.
        self.direct = plan_.groups == 1 and plan_.batch_block % plan_.kv_heads == 0
        self.summed = inputs.dtype in (torch.bfloat16, torch.float16)
        if self.mode == "mean" and self.direct:
            self.mean = torch.empty(b, length, s, dtype=inputs.dtype, device=inputs.device)
        elif self.mode == "mean":
            acc = compute_dtype(inputs.dtype)
            self.mean_acc = torch.zeros(b, length, s, dtype=acc, device=inputs.device)
        elif self.mode:
            self.full = torch.empty(b, h, length, s, dtype=inputs.dtype, device=inputs.device)
            hk, g = plan_.kv_heads, plan_.groups
            w5 = self.full.view(b, hk, g, length, s)  # (B, Hk, G, L, S)
            if plan_.fold:
                self.rows = [w5.view(b * hk, g * length, s)]  # (B*Hk, G*L, S)
            else:
                self.rows = [w5[:, :, gi].view(b * hk, length, s) for gi in range(g)]
        self.heads = h

    def store(self, t: _Tile, ks: slice, probs: Tensor) -> None:
        """Write one tile of normalised probabilities (n, rows, sk)."""
        if self.mode != "mean":
            self.rows[0 if t.group is None else t.group][t.i0 : t.i1, t.r0 : t.r1, ks] = probs
            return
        p, length = self.plan, self.plan.q_len
        if self.direct:
            b0, b1 = t.i0 // p.kv_heads, t.i1 // p.kv_heads
            heads = probs.view(b1 - b0, p.kv_heads, *probs.shape[1:])  # (b, Hk, rows, sk)
            dst = self.mean[b0:b1, t.r0 : t.r1, ks]
            # A float32 mean of 16-bit inputs would first copy the whole tile to float32; their
            # sum accumulates in float32 without the copy, and is divided once at the end.
            reduce = torch.sum if self.summed else torch.mean
            if probs.stride(-1) != 1:
                # A keys-first tile: reduce the heads in its own layout, transpose once.
                kf = probs.transpose(1, 2).view(b1 - b0, p.kv_heads, probs.shape[2], -1)
                dst.copy_(reduce(kf, dim=1).transpose(1, 2))  # (b, rows, sk)
            elif dst.is_contiguous() and probs.dtype == dst.dtype:
                reduce(heads, dim=1, out=dst)
            else:
                dst.copy_(reduce(heads, dim=1))
            return
        inv_heads = 1.0 / self.heads
        for b in range(t.i0 // p.kv_heads, (t.i1 - 1) // p.kv_heads + 1):
            lo, hi = max(t.i0, b * p.kv_heads), min(t.i1, (b + 1) * p.kv_heads)
            if hi - lo == 1:
                head_sum = probs[lo - t.i0]  # one head: added in place, no temporary
            else:
                head_sum = probs[lo - t.i0 : hi - t.i0].sum(dim=0, dtype=self.mean_acc.dtype)
            if t.group is not None or p.groups == 1:
                self.mean_acc[b, t.r0 : t.r1, ks].add_(head_sum, alpha=inv_heads)
                continue
            # Folded rows r = g * L + l: add each group's segment at its query positions.
            for g in range(t.r0 // length, (t.r1 - 1) // length + 1):
                a, z = max(t.r0, g * length), min(t.r1, (g + 1) * length)
                dst = self.mean_acc[b, a - g * length : z - g * length, ks]
                dst.add_(head_sum[a - t.r0 : z - t.r0], alpha=inv_heads)

    def result(self, dtype: torch.dtype) -> Tensor | None:
        if self.mode == "mean" and self.direct:
            return self.mean.div_(self.heads) if self.summed else self.mean  # (B, L, S)
        if self.mode == "mean":
            return self.mean_acc.to(dtype)  # (B, L, S): each head was added divided by H
        if self.mode:
            return self.full  # (B, H, L, S)
        return None


class _Run:
    """One call of the tile loop: its operands, the buffers every tile reuses, its results."""

    def __init__(self, inputs: AttentionInputs, plan_: _Plan, seed: int, need_lse: bool):
        self.ops = ops = _Operands(inputs, plan_)
        self.plan, self.seed, self.acc, self.dev = plan_, seed, ops.acc, inputs.device
        b, _, length, _ = inputs.query.shape
        n_all, g, ev = plan_.entries, plan_.groups, ops.ev
        acc, dev = self.acc, self.dev
        self.out = torch.empty(b, plan_.kv_heads, g, length, ev, dtype=inputs.dtype, device=dev)
        if plan_.fold:
            self.out_rows = [self.out.view(n_all, g * length, ev)]  # (B*Hk, G*L, Ev)
        else:  # strided views (B*Hk, L, Ev)
            self.out_rows = [self.out[:, :, gi].view(n_all, length, ev) for gi in range(g)]
        self.lse2 = None
        if need_lse:
            groups = 1 if plan_.fold else g
            self.lse2 = [
                torch.empty(n_all, plan_.rows, dtype=acc, device=dev) for _ in range(groups)
            ]
        self.weights = _Weights(inputs, plan_)
        self.k_slices = plan_.k_slices()
        self.single = len(self.k_slices) == 1
        self.p_drop = inputs.dropout_p
        self.keep_frac = 1.0 - self.p_drop
        # One set of buffers for every tile.
        self.tile_max = tile_max = plan_.batch_block * plan_.row_block
        tile_elems = tile_max * plan_.k_block
        # The fused-softmax path of a single key block needs no float32 copy of low-precision
        # scores unless a float mask is added (in float32) or the log-sum-exp is kept.
        self.fused = self.single and not need_lse
        float_mask = inputs.mask is not None and inputs.mask.is_floating_point()
        # Short contexts: lay the scores out keys-first, so the softmax reduces across contiguous
        # query rows (see `scores_keys_first`); with or without weights, so that asking for them
        # never changes the output.
        self.keys_first = self.fused and not float_mask and plan_.kv_len <= KEYS_FIRST_MAX_S
        self.raw_flat = torch.empty(tile_elems, dtype=ops.mm, device=dev)
        self.shifted_flat = self.raw_flat
        if ops.low and (float_mask or not self.fused):
            self.shifted_flat = torch.empty(tile_elems, dtype=acc, device=dev)  # float32 stats
        self.stat_flat = torch.empty(3 * tile_max, dtype=acc, device=dev)
        self.acc_flat = None if self.single else torch.empty(tile_max * ev, dtype=acc, device=dev)
        self.pv_flat = torch.empty(tile_max * ev, dtype=ops.mm, device=dev) if ops.low else None

    def tile_buffers(self, n: int, rows: int, sk: int) -> tuple[Tensor, Tensor]:
        """The raw (matmul dtype) and shifted (statistics dtype) score views of one tile."""
        return _buffer(self.raw_flat, n, rows, sk), _buffer(self.shifted_flat, n, rows, sk)

    def drop_(self, probs: Tensor, t: _Tile, j: int = 0) -> None:
        """Zero the dropped probabilities of tile `t`, key block `j`, in place (not rescaled)."""
        n_k = len(self.k_slices)
        probs.mul_(_keep_tile(self.seed, t.index * n_k + j, probs.shape, self.p_drop, self.dev))


def chunked_forward(
    inputs: AttentionInputs, plan_: _Plan, seed: int, need_lse: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Returns out (B, H, L, Ev), weights (as asked, or None), lse2 (B*Hk, rows...) or None.

    lse2 is the row log2-sum-exp2 of the scaled scores, one (B*Hk, rows) tensor per query
    group (a single one when the groups are folded), in the statistics dtype.
    """
    run = _Run(inputs, plan_, seed, need_lse)
    tile = _fused_tile if run.fused else _single_block_tile if run.single else _online_tile
    for t in plan_.tiles():
        gi = 0 if t.group is None else t.group
        tile(run, t, gi, run.out_rows[gi][t.i0 : t.i1, t.r0 : t.r1])  # dst (n, rows, Ev)
    b, h, length, _ = inputs.query.shape
    out = run.out.view(b, h, length, run.ops.ev)  # (B, H, L, Ev)
    return out, run.weights.result(inputs.dtype), run.lse2


def _fused_tile(run: _Run, t: _Tile, gi: int, dst: Tensor) -> None:
    """One key block, no log-sum-exp kept: PyTorch's fused softmax (float32 inside for 16-bit
    inputs) in place, then the value matmul into `dst` (n, rows, Ev)."""
    n, rows, s = t.i1 - t.i0, t.r1 - t.r0, run.plan.kv_len
    ks = run.k_slices[0]
    if run.keys_first:
        s_t = run.ops.scores_keys_first(t, ks, _buffer(run.raw_flat, n, s, rows))
        torch.ops.aten._softmax.out(s_t.transpose(1, 2), 1, False, out=s_t.transpose(1, 2))
        probs = s_t  # (n, rows, S), keys-first in memory
    else:
        raw, shifted = run.tile_buffers(n, rows, s)
        scores = run.ops.scores(t, ks, raw, shifted, log2=False)
        _softmax_(scores)
        probs = raw.copy_(scores) if scores is not raw else raw
    if run.weights.mode:
        run.weights.store(t, ks, probs)
    if run.p_drop > 0.0:
        run.drop_(probs, t)
        probs.div_(run.keep_frac)
    _matmul_into(dst, probs, run.ops.values(t, ks))


def _single_block_tile(run: _Run, t: _Tile, gi: int, dst: Tensor) -> None:
    """One key block in base 2 with the row statistics kept (log-sum-exp for the backward, or
    float32 statistics of 16-bit inputs), then the value matmul into `dst` (n, rows, Ev)."""
    ops, n, rows = run.ops, t.i1 - t.i0, t.r1 - t.r0
    ks = run.k_slices[0]
    raw, shifted = run.tile_buffers(n, rows, ks.stop - ks.start)
    s = ops.scores(t, ks, raw, shifted)
    row_max = torch.amax(s, dim=-1, keepdim=True)  # (n, rows, 1)
    row_max = row_max.to(run.acc).clamp_(min=ops.floor)
    torch.sub(s, row_max, out=shifted)
    torch.exp2(shifted, out=shifted)
    denom = torch.sum(shifted, dim=-1, keepdim=True, out=_buffer(run.stat_flat, n, rows, 1))
    if run.lse2 is not None:
        run.lse2[gi][t.i0 : t.i1, t.r0 : t.r1] = (row_max + torch.log2(denom)).squeeze(-1)
    if run.weights.mode:
        shifted.div_(denom)
        run.weights.store(t, ks, shifted)
        denom = None
    if run.p_drop > 0.0:
        run.drop_(shifted, t)
        denom = run.keep_frac if denom is None else denom.mul_(run.keep_frac)
    if ops.low:
        # probabilities back to the matmul dtype, normalised on the way when not yet
        probs = raw  # the raw scores are no longer needed: reuse their buffer
        if denom is None:
            probs.copy_(shifted)
        else:
            torch.div(shifted, denom, out=probs)
    else:
        probs = shifted if denom is None else shifted.div_(denom)
    _matmul_into(dst, probs, ops.values(t, ks))


def _online_tile(run: _Run, t: _Tile, gi: int, dst: Tensor) -> None:
    """Online softmax over the key blocks into `dst` (n, rows, Ev); then the row log-sum-exp
    and the weights, where asked, from a second pass over the blocks."""
    ops, acc, n, rows, tile_max = run.ops, run.acc, t.i1 - t.i0, t.r1 - t.r0, run.tile_max
    run_max = _buffer(run.stat_flat, n, rows, 1).fill_(float("-inf"))
    run_sum = _buffer(run.stat_flat[tile_max:], n, rows, 1).zero_()
    safe_max = _buffer(run.stat_flat[2 * tile_max :], n, rows, 1)
    acc_o = _buffer(run.acc_flat, n, rows, ops.ev).zero_()
    for j, ks in enumerate(run.k_slices):
        raw, shifted = run.tile_buffers(n, rows, ks.stop - ks.start)
        s = ops.scores(t, ks, raw, shifted)
        new_max = torch.maximum(run_max, torch.amax(s, dim=-1, keepdim=True).to(acc))
        torch.clamp(new_max, min=ops.floor, out=safe_max)
        torch.sub(s, safe_max, out=shifted)
        torch.exp2(shifted, out=shifted)
        alpha = torch.exp2(run_max.sub_(safe_max))  # rescales what came before
        run_sum.mul_(alpha).add_(shifted.sum(dim=-1, keepdim=True))
        if run.p_drop > 0.0:
            run.drop_(shifted, t, j)
        acc_o.mul_(alpha)
        v = ops.values(t, ks)
        if ops.low:
            probs = raw.copy_(shifted)
            acc_o.add_(torch.bmm(probs, v, out=_buffer(run.pv_flat, n, rows, ops.ev)))
        else:
            torch.baddbmm(acc_o, shifted, v, out=acc_o)
        run_max.copy_(new_max)
    denom = run_sum if run.p_drop == 0.0 else run_sum * run.keep_frac
    dst.copy_(acc_o.div_(denom))
    if run.lse2 is None and not run.weights.mode:
        return
    row_lse2 = safe_max.copy_(run_max).clamp_(min=ops.floor).add_(torch.log2(run_sum))
    if run.lse2 is not None:
        run.lse2[gi][t.i0 : t.i1, t.r0 : t.r1] = row_lse2.squeeze(-1)
    if run.weights.mode:
        for ks in run.k_slices:  # exact weights: exp2(scores - lse2), block by block
            raw, shifted = run.tile_buffers(n, rows, ks.stop - ks.start)
            torch.sub(ops.scores(t, ks, raw, shifted), row_lse2, out=shifted)
            run.weights.store(t, ks, torch.exp2(shifted, out=shifted))


def _softmax_(scores: Tensor) -> Tensor:
    """Softmax over the last dimension, in place (16-bit inputs are computed in float32)."""
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


def _matmul_into(dst: Tensor, probs: Tensor, value: Tensor) -> None:
    """dst (n, rows, Ev) = probs (n, rows, sk) @ value (n, sk, Ev), without a temporary."""
    if dst.dtype == probs.dtype and dst.is_contiguous():
        torch.bmm(probs, value, out=dst)
    else:
        dst.copy_(torch.bmm(probs, value))


class _ChunkedAttention(torch.autograd.Function):
    """Memory-bounded forward and backward: tiles are recomputed from the row log-sum-exp."""

    @staticmethod
    def forward(ctx, query, key, value, mask, inputs, plan_, seed):  # type: ignore[override]
        out, _, lse2 = chunked_forward(inputs, plan_, seed, need_lse=True)
        ctx.save_for_backward(query, key, value, mask, out, *lse2)
        ctx.meta = (inputs, plan_, seed)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        query, key, value, mask, out, *lse2 = ctx.saved_tensors
        inputs, plan_, seed = ctx.meta
        grads = chunked_backward(inputs, plan_, seed, out, lse2, grad_out, ctx.needs_input_grad)
        return (*grads, None, None, None)


def chunked_backward(
    inputs: AttentionInputs,
    plan_: _Plan,
    seed: int,
    out: Tensor,
    lse2: list[Tensor],
    grad_out: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of query, key, value and a float mask, tile by tile, in the statistics dtype."""
    ops = _Operands(inputs, plan_)
    acc = ops.acc
    b, h, length, e = inputs.query.shape
    hk, g, n_all, ev = plan_.kv_heads, plan_.groups, plan_.entries, ops.ev
    k = inputs.key.reshape(n_all, -1, e).to(acc)  # (B*Hk, S, E)
    v = inputs.value.reshape(n_all, -1, ev).to(acc)  # (B*Hk, S, Ev)
    d_out5 = grad_out.reshape(b, hk, g, length, ev).to(acc)  # (B, Hk, G, L, Ev)
    o5 = out.reshape(b, hk, g, length, ev).to(acc)
    if plan_.fold:
        d_out = [d_out5.reshape(n_all, g * length, ev)]  # (B*Hk, G*L, Ev)
        o_rows = [o5.reshape(n_all, g * length, ev)]
    else:
        d_out = [d_out5[:, :, gi].reshape(n_all, length, ev) for gi in range(g)]
        o_rows = [o5[:, :, gi].reshape(n_all, length, ev) for gi in range(g)]
    delta = [(do * o).sum(dim=-1, keepdim=True) for do, o in zip(d_out, o_rows)]  # (N, rows, 1)
    dq5 = torch.zeros(b, hk, g, length, e, dtype=acc, device=inputs.device)
    dq_rows = (
        [dq5.view(n_all, g * length, e)]
        if plan_.fold
        else [dq5[:, :, gi].view(n_all, length, e) for gi in range(g)]
    )
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    mask = inputs.mask
    d_mask = None
    if needs[3] and mask is not None and mask.is_floating_point():
        d_mask = torch.zeros(mask.shape, dtype=acc, device=inputs.device)
    p_drop = inputs.dropout_p
    drop_scale = 1.0 / (1.0 - p_drop) if p_drop > 0 else 1.0
    k_slices = plan_.k_slices()
    n_k = len(k_slices)
    for t in plan_.tiles():
        gi = 0 if t.group is None else t.group
        n, rows = t.i1 - t.i0, t.r1 - t.r0
        qf = ops.q_rows(t).to(acc)  # (n, rows, E)
        do = d_out[gi][t.i0 : t.i1, t.r0 : t.r1]  # (n, rows, Ev)
        row_lse2 = lse2[gi][t.i0 : t.i1, t.r0 : t.r1].unsqueeze(-1)  # (n, rows, 1)
        row_delta = delta[gi][t.i0 : t.i1, t.r0 : t.r1]
        for j, ks in enumerate(k_slices):
            sk = ks.stop - ks.start
            raw = torch.empty(n, rows, sk, dtype=ops.mm, device=inputs.device)
            shifted = raw if not ops.low else torch.empty(n, rows, sk, dtype=acc, device=raw.device)
            s = ops.scores(t, ks, raw, shifted)
            p = torch.sub(s, row_lse2, out=shifted) if s is not shifted else s.sub_(row_lse2)
            torch.exp2(p, out=p)  # probabilities (n, rows, sk)
            keep = None
            if p_drop > 0.0:
                keep = _keep_tile(seed, t.index * n_k + j, p.shape, p_drop, inputs.device)
            pd = p if keep is None else p * keep * drop_scale
            dv[t.i0 : t.i1, ks] += torch.bmm(pd.transpose(1, 2), do)
            dp = torch.bmm(do, v[t.i0 : t.i1, ks].transpose(1, 2))  # (n, rows, sk)
            if keep is not None:
                dp = dp * keep * drop_scale
            ds = p.mul_(dp.sub_(row_delta))  # gradient of the natural-log scores
            if d_mask is not None:
                _accumulate_mask_grad(d_mask, ds, t, ks, plan_)
            dq_rows[gi][t.i0 : t.i1, t.r0 : t.r1] += torch.bmm(ds, k[t.i0 : t.i1, ks]).mul_(
                inputs.scale
            )
            dk[t.i0 : t.i1, ks] += torch.bmm(ds.transpose(1, 2), qf).mul_(inputs.scale)
    d_query = dq5.view(b, h, length, e).to(inputs.dtype) if needs[0] else None
    d_key = dk.view(inputs.key.shape).to(inputs.dtype) if needs[1] else None
    d_value = dv.view(inputs.value.shape).to(inputs.dtype) if needs[2] else None
    if d_mask is not None:
        d_mask = d_mask.to(mask.dtype)
    return d_query, d_key, d_value, d_mask


def _accumulate_mask_grad(d_mask: Tensor, ds: Tensor, t: _Tile, ks: slice, p: _Plan) -> None:
    """Add one tile's score gradient (n, rows, sk) into the gradient of a (Bm, Hm, Lm, Sm) mask."""
    bm, hm, lm, sm = d_mask.shape
    g = 0 if t.group is None else t.group
    ksl = ks if sm > 1 else slice(None)
    if sm == 1:
        ds = ds.sum(dim=-1, keepdim=True)
    for i in range(t.i0, t.i1):
        bi, hi = i // p.kv_heads, i % p.kv_heads
        part = ds[i - t.i0]  # (rows, sk|1)
        if t.group is None and p.groups > 1:
            # Folded rows: the mask is the same for every head and query (lm == hm == 1).
            target = d_mask[bi if bm > 1 else 0, 0]  # (1, Sm)
            target[:, ksl] += part.sum(dim=0, keepdim=True)
            continue
        h_idx = hi * p.groups + g
        target = d_mask[bi if bm > 1 else 0, h_idx if hm > 1 else 0]  # (Lm, Sm)
        if lm > 1:
            target[t.r0 : t.r1, ksl] += part
        else:
            target[:, ksl] += part.sum(dim=0, keepdim=True)


class ChunkedBackend(Backend):
    """Online-softmax tiles in PyTorch; ``tile_elements``, ``k_block`` and ``single_block``
    override the tiling (``k_block`` forces the online path when shorter than the context)."""

    name = "chunked"
    description = "online softmax over query/key tiles; memory bounded by the tile size"

    def __init__(self, tile_elements: int | None = None, k_block: int | None = None,
                 single_block: int = MAX_SINGLE_BLOCK):  # fmt: skip
        self.tile_elements, self.k_block, self.single_block = tile_elements, k_block, single_block

    def rank(self, inputs: AttentionInputs) -> int | None:
        return chunked_rank(inputs)

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        reasons = []
        if inputs.return_weights and inputs.requires_grad:
            reasons.append(
                "its weights carry no gradient; weights that need gradients come from 'reference'"
            )
        if inputs.value.shape[-1] == 0:
            reasons.append("value has Ev=0 features: there is no output to compute in blocks")
        if inputs.dropout_p > 0.0 and torch.compiler.is_compiling():
            reasons.append("its seeded per-tile dropout cannot be captured by torch.compile")
        return reasons

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        plan_ = plan(inputs, self.tile_elements, self.k_block, self.single_block)
        if torch.jit.is_tracing():  # the same tiles, out of place (see traced_tiles)
            return traced_forward(inputs, plan_, _Operands(inputs, plan_))
        seed = 0
        if inputs.dropout_p > 0:
            seed = int(torch.randint(0, 1 << 62, (), dtype=torch.int64).item())
        if not inputs.requires_grad:
            with torch.no_grad():
                out, weights, _ = chunked_forward(inputs, plan_, seed, need_lse=False)
            return out, weights
        out = _ChunkedAttention.apply(
            inputs.query, inputs.key, inputs.value, inputs.mask, inputs, plan_, seed
        )
        return out, None
