"""The chunked backend: online softmax over blocks of queries and keys, in PyTorch.

Its peak extra memory is bounded by the block size, never by L x S: it never holds more than a
(B, Hk, q_block, k_block) tile of scores. Statistics (running max, sum, accumulator) are kept in
float32 for float32 and lower-precision inputs, and in float64 for float64 inputs. It returns
weights, or their head mean, by recomputing them tile by tile from the row log-sum-exp; its
backward recomputes tiles the same way, so training is memory-bounded too.

Two choices make it fast on the CPU:
- softmax in base 2: log2(e) is folded into the scale and `exp2` replaces `exp` (fp32 `exp` goes
  through slow vector maths on some processors);
- when the whole context fits one key block (text conditioning, decode steps) there is no online
  rescaling at all: one matmul, one softmax, one matmul per query block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import LOG2E, AttentionInputs, Backend, grouped_mask, reduce_grad_to
from .reference import compute_dtype

# A score tile holds at most this many elements (4 MiB of float32 statistics per tile).
TILE_ELEMENTS = 1 << 20
MAX_K_BLOCK = 1024
MIN_Q_BLOCK = 16


@dataclass(frozen=True)
class _Plan:
    """How the rows (B, Hk, G*L) and the keys S are cut into tiles."""

    groups: int
    q_len: int
    kv_len: int
    q_block: int
    k_block: int
    per_group: bool  # rows of different query heads in a group must stay in separate tiles

    def k_slices(self) -> list[slice]:
        return [
            slice(j, min(j + self.k_block, self.kv_len))
            for j in range(0, self.kv_len, self.k_block)
        ]

    def row_tiles(self) -> Iterator[tuple[int | None, slice, slice]]:
        """Yield (group index or None, rows in (G*L), query positions in L)."""
        if not self.per_group:
            total = self.groups * self.q_len
            for r in range(0, total, self.q_block):
                yield None, slice(r, min(r + self.q_block, total)), slice(None)
            return
        for g in range(self.groups):
            base = g * self.q_len
            for r in range(0, self.q_len, self.q_block):
                end = min(r + self.q_block, self.q_len)
                yield g, slice(base + r, base + end), slice(r, end)


def plan(inputs: AttentionInputs, q_block: int | None, k_block: int | None) -> _Plan:
    b, hk, s = inputs.batch, inputs.kv_heads, inputs.kv_len
    g, length = inputs.groups, inputs.q_len
    kb = k_block or min(s, MAX_K_BLOCK)
    qb = q_block or max(MIN_Q_BLOCK, TILE_ELEMENTS // max(1, b * hk * kb))
    mask = inputs.mask
    mask_varies = mask is not None and (mask.shape[1] > 1 or mask.shape[2] > 1)
    per_group = g > 1 and (mask_varies or bool(inputs.return_weights))
    return _Plan(g, length, s, qb, kb, per_group)


def _mask_tile(mask5: Tensor | None, g: int | None, qpos: slice, ks: slice) -> Tensor | None:
    """The (B|1, Hk|1, rows|1, sk) slice of a grouped mask (B|1, Hk|1, G|1, L|1, S|1)."""
    if mask5 is None:
        return None
    m = mask5[:, :, 0 if (g is None or mask5.shape[2] == 1) else g]  # (B|1, Hk|1, L|1, S|1)
    if m.shape[2] > 1:
        m = m[:, :, qpos]
    if m.shape[3] > 1:
        m = m[:, :, :, ks]
    return m


def _keep_tile(seed: int, index: int, shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """The dropout keep-mask of one tile, regenerated identically in the backward pass."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed + 7919 * index) % (1 << 62))
    return torch.rand(shape, generator=gen, device=device) >= p


class _Tiles:
    """Shared per-call state: grouped tensors, scaled queries, log2-domain mask."""

    def __init__(self, inputs: AttentionInputs, plan_: _Plan, seed: int):
        self.inputs = inputs
        self.plan = plan_
        self.seed = seed
        self.acc = compute_dtype(inputs.dtype)
        b, h, length, e = inputs.query.shape
        hk = inputs.kv_heads
        self.rows_q = inputs.query.reshape(b, hk, plan_.groups * length, e)  # (B, Hk, G*L, E)
        self.scale2 = inputs.scale * LOG2E  # scores in log2 units
        self.key_t = inputs.key.transpose(-1, -2)  # (B, Hk, E, S)
        mask5 = grouped_mask(inputs.mask, h, plan_.groups)  # (B|1, Hk|1, G|1, L|1, S|1)
        self.mask_is_bool = mask5 is not None and mask5.dtype == torch.bool
        if mask5 is not None:
            # Bool: positions to block. Float: the additive mask in log2 units, statistics dtype.
            mask5 = ~mask5 if self.mask_is_bool else mask5.detach().to(self.acc) * LOG2E
        self.mask5 = mask5

    def scores(self, q_tile: Tensor, g: int | None, qpos: slice, ks: slice) -> Tensor:
        """Scores of one tile in log2 units, statistics dtype: (B, Hk, rows, sk)."""
        s = torch.matmul(q_tile, self.key_t[..., ks])
        s = s.to(self.acc) if s.dtype != self.acc else s
        s.mul_(self.scale2)
        m = _mask_tile(self.mask5, g, qpos, ks)
        if m is not None:
            if self.mask_is_bool:
                s.masked_fill_(m, float("-inf"))
            else:
                s.add_(m)
        return s

    def keep(self, tile_index: int, shape: torch.Size) -> Tensor | None:
        p = self.inputs.dropout_p
        if p <= 0.0:
            return None
        return _keep_tile(self.seed, tile_index, shape, p, self.inputs.device)


def _neg_inf_to_zero(m: Tensor) -> Tensor:
    return torch.where(m == float("-inf"), torch.zeros_like(m), m)


def chunked_forward(
    inputs: AttentionInputs, plan_: _Plan, seed: int, need_lse: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Returns out (B, H, L, Ev), weights (as asked, or None), lse2 (B, Hk, G*L) or None."""
    t = _Tiles(inputs, plan_, seed)
    b, h, length, _ = inputs.query.shape
    hk, ev, acc_dtype = inputs.kv_heads, inputs.value.shape[-1], t.acc
    rows_total = plan_.groups * length
    v = inputs.value
    out = torch.empty(b, hk, rows_total, ev, dtype=inputs.dtype, device=inputs.device)
    lse2 = (
        torch.empty(b, hk, rows_total, dtype=acc_dtype, device=inputs.device) if need_lse else None
    )
    mode = inputs.return_weights
    if mode == "mean":
        weights = torch.zeros(b, length, plan_.kv_len, dtype=acc_dtype, device=inputs.device)
    elif mode:
        weights = torch.empty(
            b, hk, plan_.groups, length, plan_.kv_len, dtype=inputs.dtype, device=inputs.device
        )
    else:
        weights = None
    k_slices = plan_.k_slices()
    single = len(k_slices) == 1
    low_precision = v.dtype != acc_dtype
    drop_scale = 1.0 / (1.0 - inputs.dropout_p) if inputs.dropout_p > 0 else 1.0
    tile_index = 0
    for g, rows, qpos in plan_.row_tiles():
        q_tile = t.rows_q[:, :, rows]  # (B, Hk, rows, E)
        if single:
            ks = k_slices[0]
            p = t.scores(q_tile, g, qpos, ks)  # (B, Hk, rows, S)
            m = p.amax(dim=-1, keepdim=True)
            p.sub_(m)
            torch.exp2(p, out=p)
            denom = p.sum(dim=-1, keepdim=True)  # (B, Hk, rows, 1)
            if weights is not None:
                _store_weights(weights, mode, p / denom, g, qpos, rows, length, plan_)
            keep = t.keep(tile_index, p.shape)
            tile_index += 1
            pv = p.to(v.dtype) if low_precision else p
            if keep is not None:
                pv = pv * keep * drop_scale
            o = torch.matmul(pv, v)  # (B, Hk, rows, Ev)
            if low_precision:
                o = o.to(acc_dtype)
            o.div_(denom)
            out[:, :, rows] = o
            if lse2 is not None:
                lse2[:, :, rows] = (m + torch.log2(denom)).squeeze(-1)
            continue
        n = rows.stop - rows.start
        run_max = torch.full((b, hk, n, 1), float("-inf"), dtype=acc_dtype, device=inputs.device)
        run_sum = torch.zeros(b, hk, n, 1, dtype=acc_dtype, device=inputs.device)
        acc = torch.zeros(b, hk, n, ev, dtype=acc_dtype, device=inputs.device)
        for ks in k_slices:
            p = t.scores(q_tile, g, qpos, ks)  # (B, Hk, rows, sk)
            new_max = torch.maximum(run_max, p.amax(dim=-1, keepdim=True))
            safe_max = _neg_inf_to_zero(new_max)
            p.sub_(safe_max)
            torch.exp2(p, out=p)
            alpha = torch.exp2(run_max - safe_max)
            run_sum.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
            keep = t.keep(tile_index, p.shape)
            tile_index += 1
            pv = p.to(v.dtype) if low_precision else p
            if keep is not None:
                pv = pv * keep * drop_scale
            acc.mul_(alpha).add_(torch.matmul(pv, v[:, :, ks]))
            run_max = new_max
        row_lse2 = run_max + torch.log2(run_sum)  # (B, Hk, rows, 1)
        out[:, :, rows] = acc.div_(run_sum)
        if lse2 is not None:
            lse2[:, :, rows] = row_lse2.squeeze(-1)
        if weights is not None:
            for ks in k_slices:
                p = t.scores(q_tile, g, qpos, ks)
                p.sub_(row_lse2)
                torch.exp2(p, out=p)
                _store_weights(weights, mode, p, g, qpos, rows, length, plan_, ks)
    out = out.view(b, h, length, ev)  # (B, H, L, Ev)
    if mode == "mean":
        weights = weights.div_(h).to(inputs.dtype)  # (B, L, S)
    elif mode:
        weights = weights.view(b, h, length, plan_.kv_len)  # (B, H, L, S)
    return out, weights, lse2


def _store_weights(
    weights: Tensor,
    mode: object,
    probs: Tensor,
    g: int | None,
    qpos: slice,
    rows: slice,
    length: int,
    plan_: _Plan,
    ks: slice = slice(None),
) -> None:
    """Write one tile of normalised probabilities (B, Hk, rows, sk) into the weights."""
    if g is None:  # a single query head per K/V head: rows are query positions
        g, qpos = 0, rows
    if mode == "mean":
        weights[:, qpos, ks] += probs.sum(dim=1)  # (B, rows, sk): sum over heads, / H later
    else:
        weights[:, :, g, qpos, ks] = probs


class _ChunkedAttention(torch.autograd.Function):
    """Memory-bounded forward and backward: tiles are recomputed from the row log-sum-exp."""

    @staticmethod
    def forward(ctx, query, key, value, mask, inputs, plan_, seed):  # type: ignore[override]
        out, _, lse2 = chunked_forward(inputs, plan_, seed, need_lse=True)
        ctx.save_for_backward(query, key, value, mask, out, lse2)
        ctx.meta = (inputs, plan_, seed)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        query, key, value, mask, out, lse2 = ctx.saved_tensors
        inputs, plan_, seed = ctx.meta
        grads = chunked_backward(inputs, plan_, seed, out, lse2, grad_out, ctx.needs_input_grad)
        return (*grads, None, None, None)


def chunked_backward(
    inputs: AttentionInputs,
    plan_: _Plan,
    seed: int,
    out: Tensor,
    lse2: Tensor,
    grad_out: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    t = _Tiles(inputs, plan_, seed)
    acc_dtype = t.acc
    b, h, length, e = inputs.query.shape
    hk = inputs.kv_heads
    rows_total = plan_.groups * length
    q_rows = t.rows_q.to(acc_dtype)  # (B, Hk, G*L, E)
    k = inputs.key.to(acc_dtype)  # (B, Hk, S, E)
    v = inputs.value.to(acc_dtype)  # (B, Hk, S, Ev)
    d_out = grad_out.reshape(b, hk, rows_total, -1).to(acc_dtype)  # (B, Hk, G*L, Ev)
    o = out.reshape(b, hk, rows_total, -1).to(acc_dtype)
    delta = (d_out * o).sum(dim=-1, keepdim=True)  # (B, Hk, G*L, 1)
    dq = torch.zeros_like(q_rows)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    mask5 = t.mask5
    dmask5 = torch.zeros_like(mask5) if (needs[3] and mask5 is not None) else None
    drop_scale = 1.0 / (1.0 - inputs.dropout_p) if inputs.dropout_p > 0 else 1.0
    scale = inputs.scale
    k_slices = plan_.k_slices()
    tile_index = 0
    for g, rows, qpos in plan_.row_tiles():
        q_tile = t.rows_q[:, :, rows]
        qf = q_rows[:, :, rows]
        do = d_out[:, :, rows]
        row_lse2 = lse2[:, :, rows].unsqueeze(-1)
        row_delta = delta[:, :, rows]
        for ks in k_slices:
            p = t.scores(q_tile, g, qpos, ks)
            p.sub_(row_lse2)
            torch.exp2(p, out=p)  # probabilities (B, Hk, rows, sk)
            keep = t.keep(tile_index, p.shape)
            tile_index += 1
            pd = p if keep is None else p * keep * drop_scale
            dv[:, :, ks] += torch.matmul(pd.transpose(-1, -2), do)
            dp = torch.matmul(do, v[:, :, ks].transpose(-1, -2))  # (B, Hk, rows, sk)
            if keep is not None:
                dp = dp * keep * drop_scale
            ds = p.mul_(dp.sub_(row_delta))  # gradient of the natural-log scores
            if dmask5 is not None:
                _accumulate_mask_grad(dmask5, ds, g, qpos, rows, ks)
            dq[:, :, rows] += torch.matmul(ds, k[:, :, ks]).mul_(scale)
            dk[:, :, ks] += torch.matmul(ds.transpose(-1, -2), qf).mul_(scale)
    d_query = dq.reshape(b, h, length, e).to(inputs.dtype) if needs[0] else None
    d_key = dk.to(inputs.dtype) if needs[1] else None
    d_value = dv.to(inputs.dtype) if needs[2] else None
    d_mask = None
    if dmask5 is not None:
        d_mask = dmask5.reshape(inputs.mask.shape).to(inputs.mask.dtype)
    return d_query, d_key, d_value, d_mask


def _accumulate_mask_grad(
    dmask5: Tensor, ds: Tensor, g: int | None, qpos: slice, rows: slice, ks: slice
) -> None:
    """Add one tile's score gradient (B, Hk, rows, sk) into the grouped mask gradient."""
    gi = 0 if (g is None or dmask5.shape[2] == 1) else g
    target = dmask5[:, :, gi]  # (B|1, Hk|1, L|1, S|1)
    if g is None and dmask5.shape[2] == 1:
        qpos = rows
    if target.shape[2] > 1:
        target = target[:, :, qpos]
    if target.shape[3] > 1:
        target = target[:, :, :, ks]
    target += reduce_grad_to(ds, target.shape)


class ChunkedBackend(Backend):
    name = "chunked"
    description = "online softmax over query/key blocks; memory bounded by the block size"

    def __init__(self, q_block: int | None = None, k_block: int | None = None):
        self.q_block = q_block
        self.k_block = k_block

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        reasons = []
        if inputs.return_weights and inputs.requires_grad:
            reasons.append(
                "its weights carry no gradient; weights that need gradients come from 'reference'"
            )
        return reasons

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        plan_ = plan(inputs, self.q_block, self.k_block)
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
