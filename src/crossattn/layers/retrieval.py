"""`RetrievalCrossAttention`: RETRO's chunked cross-attention to retrieved neighbours.

(Named apart from the "chunked" backend of `cross_attention`, which is unrelated.)

Layout. The tokens (B, L, dim) are cut into C = ceil(L / chunk_size) chunks of m = chunk_size
tokens (the last may be shorter). For each chunk c, K neighbours of R tokens each were retrieved
and encoded: ``neighbours (B, C, K, R, context_dim)``, with an optional
``neighbour_mask (B, C, K, R)`` bool (True = valid neighbour token).

Which tokens see which neighbours:

- ``causal_offset=False``: token p attends to the K * R tokens retrieved for its own chunk
  c = p // m (for encoders, or when the neighbours were retrieved without seeing the chunk).
- ``causal_offset=True`` (RETRO, for autoregressive models): the neighbours of chunk c were
  retrieved with the content of chunk c, so only the last token of chunk c and the first m - 1
  tokens of chunk c + 1 may use them: token p attends to the neighbours of chunk
  c = (p + 1) // m - 1. The first m - 1 tokens have no chunk to attend to and get 0 (the layer
  is meant for a residual branch, where that is the identity).

A token with no valid neighbour token gets exactly 0. All the chunks run in one
`CrossAttention` call, chunks folded into the batch: (B, C', m, dim) -> (B * C', m, dim).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .. import _checks
from ._common import (
    check_features,
    check_like_params,
    check_nonempty,
)
from .attention import CrossAttention


class RetrievalCrossAttention(nn.Module):
    """Each chunk of the sequence attends to the neighbours retrieved for it (RETRO's CCA).

    Args:
        dim: feature size of the tokens.
        context_dim: feature size of the encoded neighbours.
        chunk_size: m, tokens per chunk.
        heads, dim_head: attention heads.
        causal_offset: RETRO's shift by m - 1 for autoregressive models (see the module
            docstring); False: each chunk attends to its own neighbours.
        dropout: dropout on the attention probabilities, in training mode.
        backend: backend of `cross_attention` (None: dispatch).

    Shapes: forward(tokens (B, L, dim), neighbours (B, C, K, R, context_dim),
    neighbour_mask (B, C, K, R) bool or None) -> (B, L, dim), C = ceil(L / chunk_size).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        *,
        chunk_size: int,
        heads: int = 8,
        dim_head: int = 64,
        causal_offset: bool = True,
        dropout: float = 0.0,
        backend: str | None = None,
    ):
        super().__init__()
        dim, context_dim, chunk_size, heads, dim_head = _checks.positive_ints(
            dim=dim, context_dim=context_dim, chunk_size=chunk_size, heads=heads, dim_head=dim_head
        )
        self.dim, self.context_dim, self.chunk_size = dim, context_dim, chunk_size
        self.causal_offset = causal_offset
        self.attn_chunks_to_neighbours = CrossAttention(
            dim, context_dim, heads=heads, dim_head=dim_head, dropout=dropout, backend=backend
        )

    def forward(
        self,
        tokens: Tensor,
        neighbours: Tensor,
        *,
        neighbour_mask: Tensor | None = None,
        return_weights: bool | Literal["mean"] = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Each chunk of `tokens` attends to the neighbours retrieved for it.

        Args:
            tokens: (B, L, dim).
            neighbours: (B, C, K, R, context_dim), C = ceil(L / chunk_size), K > 0 neighbours of
                R > 0 tokens per chunk.
            neighbour_mask: (B, C, K, R) bool, True = valid neighbour token (may be attended);
                None: all valid. A token with no valid neighbour token gets exactly 0.
            return_weights: False; True for per-head weights; "mean" for their head mean.

        Returns:
            (B, L, dim); with return_weights also the weights (B, C', heads, m, K * R) (head
            mean: (B, C', m, K * R)) of the C' attending chunks, the shifted ones with
            causal_offset.

        Tokens and neighbours must have the dtype and device of the layer's parameters.
        """
        attn = self.attn_chunks_to_neighbours
        check_features("tokens", tokens, self.dim, "(B, L, dim)", like=attn.to_q.weight)
        b, length, _ = tokens.shape
        m = self.chunk_size
        chunks = -(-length // m)
        if not isinstance(neighbours, Tensor):
            raise TypeError(f"neighbours must be a torch.Tensor, got {type(neighbours).__name__}")
        if (
            neighbours.dim() != 5
            or neighbours.shape[:2] != (b, chunks)
            or neighbours.shape[-1] != self.context_dim
        ):
            raise ValueError(
                f"neighbours must have shape (B, C, K, R, context_dim) = ({b}, {chunks}, K, R, "
                f"{self.context_dim}) for tokens {tuple(tokens.shape)} and chunk_size={m} "
                f"(C = ceil(L / chunk_size)), got {tuple(neighbours.shape)}"
            )
        if not neighbours.is_floating_point():
            raise TypeError(
                f"neighbours must be a floating-point tensor, got dtype {neighbours.dtype}"
            )
        check_like_params("neighbours", neighbours, attn.to_k.weight)
        k, r = neighbours.shape[2], neighbours.shape[3]
        check_nonempty(
            "neighbours",
            k * r,
            neighbours.shape,
            f"K={k} neighbours of R={r} tokens per chunk",
            "pass at least one neighbour token per chunk; for chunks without neighbours pass a "
            "dummy neighbour masked False in neighbour_mask (those tokens then get exactly 0)",
        )
        _checks.token_mask(
            "neighbour_mask", neighbour_mask, tuple(neighbours.shape[:4]), "(B, C, K, R)"
        )
        shift = m - 1 if self.causal_offset else 0
        attending = tokens[:, shift:]  # (B, L - shift, dim): token p -> chunk (p + shift) // m
        n_att = -(-attending.shape[1] // m)
        out = tokens.new_zeros(b, length, attn.out_dim)
        if n_att == 0:
            if return_weights:
                heads = attn.heads
                shape = (b, 0, m, k * r) if return_weights == "mean" else (b, 0, heads, m, k * r)
                return out, tokens.new_zeros(shape)
            return out
        pad = n_att * m - attending.shape[1]
        if pad:
            attending = torch.cat([attending, attending.new_zeros(b, pad, self.dim)], dim=1)
        queries = attending.reshape(b * n_att, m, self.dim)  # (B*C', m, dim)
        context = neighbours[:, :n_att].reshape(b * n_att, k * r, self.context_dim)  # (B*C', KR, D)
        mask = None
        if neighbour_mask is not None:
            mask = neighbour_mask[:, :n_att].reshape(b * n_att, k * r)  # (B*C', K*R)
        res = attn(queries, context, context_mask=mask, return_weights=return_weights)
        att, weights = res if return_weights else (res, None)
        if mask is not None:
            att = att.masked_fill(~mask.any(dim=1)[:, None, None], 0.0)  # no valid neighbour
        att = att.reshape(b, n_att * m, -1)[:, : length - shift]  # (B, L - shift, dim)
        out = torch.cat([out[:, :shift], att], dim=1)  # (B, L, dim)
        if return_weights:
            return out, weights.reshape(b, n_att, *weights.shape[1:])
        return out
