"""`HierarchicalCrossAttention`: coarse-to-fine attention over a long context.

1. Coarse: the keys are cut into blocks of `block_size` tokens and mean-pooled over their valid
   tokens, (B, H, S, D) -> (B, H, nb, D). The queries attend to these summaries
   (`cross_attention` with weights); a block of queries (`query_block_size` queries, per head)
   sums its weights and selects its `top_k` blocks.
2. Fine: each query block attends with full attention to the tokens of its selected blocks,
   gathered into (B * H * nq, 1, top_k * block_size, D) and run through `cross_attention` in one
   call, padding and invalid tokens masked.

Cost: coarse O(L * S / block_size), fine O(L * top_k * block_size) instead of O(L * S); the
gathered keys and values take B * H * ceil(L / query_block_size) * top_k * block_size * D
elements each. With top_k >= ceil(S / block_size) every block is selected and the output equals
full attention (up to rounding). The selection is not differentiable; gradients flow to the
queries, keys and values through the fine attention. Accuracy against full attention and speed:
`benchmarks/bench_hierarchical.py`, table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import cross_attention
from ._common import check_positive
from .attention import CrossAttention, PreparedContext
from .hooks import AttentionCall, layer_call

COARSE_MAX_ELEMENTS = 1 << 24
"""Coarse weights up to this many elements (64 MiB in float32) use the "reference" backend."""


class HierarchicalCrossAttention(nn.Module):
    """Queries attend to pooled block summaries, then fully to their top-k key blocks.

    Args:
        query_dim: feature size of the queries.
        context_dim: feature size of the context; defaults to query_dim.
        heads, dim_head: attention heads (selection is per head).
        block_size: key tokens per block.
        top_k: blocks selected per query block and head.
        query_block_size: queries that share one selection (1 = per query; larger blocks
            gather fewer copies of the keys and run faster).
        bias: biases on the q/k/v projections.
        backend: backend of the fine `cross_attention` (None: dispatch). The coarse weights
            use "reference" while they are small, then dispatch (which picks a backend that
            returns weights).

    Shapes: forward(queries (B, L, query_dim), context (B, S, context_dim) or a
    `PreparedContext` from ``layer.attn.prepare_context`` (keys and values projected once), *,
    context_mask (B, S) bool or None, True = valid token) -> (B, L, query_dim); with
    return_selection=True also the selected blocks (B, heads, ceil(L / query_block_size), k),
    k = min(top_k, ceil(S / block_size)), block j covering keys [j * block_size, (j + 1) *
    block_size).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        *,
        heads: int = 8,
        dim_head: int = 64,
        block_size: int = 64,
        top_k: int = 8,
        query_block_size: int = 64,
        bias: bool = False,
        backend: str | None = None,
    ):
        super().__init__()
        # query_dim, context_dim, heads and dim_head are checked by the CrossAttention below
        block_size, top_k, query_block_size = check_positive(
            block_size=block_size, top_k=top_k, query_block_size=query_block_size
        )
        self.attn = CrossAttention(
            query_dim, context_dim, heads=heads, dim_head=dim_head, bias=bias, backend=backend
        )
        self.block_size, self.top_k, self.query_block_size = block_size, top_k, query_block_size
        self.backend = backend  # of the fine attention, as the layer's

    def forward(
        self,
        queries: Tensor,
        context: Tensor | PreparedContext,
        *,
        context_mask: Tensor | None = None,
        return_selection: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from `queries` to the top-k blocks of `context` that each query block selects.

        Args:
            queries: (B, L, query_dim). L = 0 gives an empty output (B, 0, query_dim).
            context: (B, S, context_dim) with S > 0, or a `PreparedContext` made by
                ``layer.attn.prepare_context`` (keys and values projected once).
            context_mask: (B, S) bool, True = valid token (may be attended); only with a raw
                context (a PreparedContext carries its own). Padding may hold NaN.
            return_selection: also return the selected blocks.

        Returns:
            (B, L, query_dim); with return_selection also the selected block indices
            (B, heads, ceil(L / query_block_size), min(top_k, ceil(S / block_size))), sorted.

        Queries and context must have the dtype and device of the layer's parameters.
        """
        attn = self.attn
        q = attn.project_queries(queries)  # (B, H, L, D)
        b, length = q.shape[0], q.shape[2]
        prepared = attn.context_for(context, context_mask=context_mask, batch=b)
        key, value, valid = _whole_blocks(prepared, self.block_size)  # (B, H, nb*bs, D), (B, nb*bs)
        selection = self._select(q, key, valid)  # (B, H, nq, k)
        out = self._attend_selected(q, key, value, valid, selection)  # (B, H, L, D)
        recording = layer_call(attn)  # None unless a recorder wants this call's maps
        if recording is not None:
            # The map is the fine attention's: each query over the tokens of its blocks.
            s, bs, qbs = prepared.length, self.block_size, self.query_block_size
            seen = _selected_tokens(selection, bs, qbs, length, s)  # (B, H, L, S)
            call = AttentionCall(attn, q, prepared.key, attn.scale, seen, prepared.key_mask)
            recording.hand_over(call, False)
        out = out.transpose(1, 2).reshape(b, length, attn.heads * attn.dim_head)  # (B, L, H*D)
        out = attn.to_out(out)  # (B, L, out_dim)
        return (out, selection) if return_selection else out

    def _select(self, q: Tensor, key: Tensor, valid: Tensor) -> Tensor:
        """Coarse step: the `top_k` blocks (B, H, nq, k) of each query block and head, sorted,
        from the queries' weights over the block means of `key` (B, H, nb*bs, D)."""
        b, h, length, d = q.shape
        bs, qbs = self.block_size, self.query_block_size
        nb, nq = key.shape[2] // bs, -(-length // qbs)
        with torch.no_grad():
            count = valid.view(b, nb, bs).sum(dim=-1)  # (B, nb)
            pooled = key.view(b, h, nb, bs, d).sum(dim=3)  # (B, H, nb, D)
            pooled = pooled / count.clamp(min=1)[:, None, :, None].to(pooled.dtype)
            block_ok = count > 0  # (B, nb)
            # The coarse weights (B, H, L, nb) are small: the plain einsum backend is the
            # fastest way to get them; past COARSE_MAX_ELEMENTS, a memory-bounded dispatch.
            small = b * h * length * nb <= COARSE_MAX_ELEMENTS
            _, coarse = cross_attention(
                q.detach(),
                pooled,
                pooled,
                key_mask=None if bool(block_ok.all()) else block_ok,
                backend="reference" if small else None,
                return_weights=True,
            )
            # coarse (B, H, L, nb); pad L with zero rows, sum per query block
            if nq * qbs != length:
                coarse = torch.cat([coarse, coarse.new_zeros(b, h, nq * qbs - length, nb)], 2)
            score = coarse.view(b, h, nq, qbs, nb).sum(dim=3)  # (B, H, nq, nb)
            return score.topk(min(self.top_k, nb), dim=-1).indices.sort(dim=-1).values

    def _attend_selected(
        self, q: Tensor, key: Tensor, value: Tensor, valid: Tensor, selection: Tensor
    ) -> Tensor:
        """Fine step: each query block attends fully to its selected blocks, gathered into
        (B*H*nq, 1, k*bs, D) for one `cross_attention` call. Returns (B, H, L, D)."""
        b, h, length, d = q.shape
        bs, qbs = self.block_size, self.query_block_size
        nb, nq, k_sel = key.shape[2] // bs, selection.shape[2], selection.shape[3]
        bh = torch.arange(b * h, device=q.device)[:, None]  # (B*H, 1)
        index = selection.reshape(b * h, nq * k_sel)  # (B*H, nq*k)
        k_blocks = key.reshape(b * h, nb, bs, d)[bh, index]  # (B*H, nq*k, bs, D)
        v_blocks = value.reshape(b * h, nb, bs, d)[bh, index]
        valid_b = valid.view(b, 1, nb, bs).expand(b, h, nb, bs)
        m_blocks = valid_b.reshape(b * h, nb, bs)[bh, index]
        n = b * h * nq
        k_blocks = k_blocks.reshape(n, 1, k_sel * bs, d)  # (B*H*nq, 1, k*bs, D)
        v_blocks = v_blocks.reshape(n, 1, k_sel * bs, d)
        m_blocks = m_blocks.reshape(n, k_sel * bs)  # (B*H*nq, k*bs)
        if nq * qbs != length:
            q = torch.cat([q, q.new_zeros(b, h, nq * qbs - length, d)], dim=2)  # (B, H, nq*qbs, D)
        q_blocks = q.reshape(n, 1, qbs, d)  # (B*H*nq, 1, qbs, D)
        if bool(m_blocks.all()):
            m_blocks = None  # nothing padded: let the backend run without a mask
        out = cross_attention(
            q_blocks, k_blocks, v_blocks, key_mask=m_blocks, backend=self.backend
        )  # (B*H*nq, 1, qbs, D)
        return out.reshape(b, h, nq * qbs, d)[:, :, :length]  # (B, H, L, D)


def _whole_blocks(prepared: PreparedContext, bs: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keys and values (B, H, nb*bs, D) padded to whole blocks of `bs` tokens, 0 wherever a
    token is padding (so that NaN padding cannot leak), and the valid tokens (B, nb*bs)."""
    key, value = prepared.key, prepared.value  # (B, H, S, D)
    b, h, s, d = key.shape
    nb = -(-s // bs)
    mask = prepared.key_mask
    valid = torch.ones(b, s, dtype=torch.bool, device=key.device) if mask is None else mask
    if nb * bs != s:  # pad S to whole blocks, padding invalid
        pad = nb * bs - s
        key = torch.cat([key, key.new_zeros(b, h, pad, d)], dim=2)  # (B, H, nb*bs, D)
        value = torch.cat([value, value.new_zeros(b, h, pad, d)], dim=2)
        valid = torch.cat([valid, valid.new_zeros(b, pad)], dim=1)  # (B, nb*bs)
    if not bool(valid.all()):
        key = key.masked_fill(~valid[:, None, :, None], 0.0)
        value = value.masked_fill(~valid[:, None, :, None], 0.0)
    return key, value, valid


def _selected_tokens(selection: Tensor, bs: int, qbs: int, length: int, s: int) -> Tensor:
    """(B, H, L, S) bool: True where query i's block selected the block of key token j."""
    b, h, nq, _ = selection.shape
    nb = -(-s // bs)
    blocks = torch.zeros(b, h, nq, nb, dtype=torch.bool, device=selection.device)
    blocks.scatter_(-1, selection, True)  # (B, H, nq, nb)
    tokens = blocks[..., None].expand(b, h, nq, nb, bs).reshape(b, h, nq, 1, nb * bs)[..., :s]
    return tokens.expand(b, h, nq, qbs, s).reshape(b, h, nq * qbs, s)[:, :, :length]
