"""`SelfDocAttention`: SelfDoc's cross-modality attention with swapped roles.

Queries and values come from sequence A, keys from sequence B, aligned token by token (e.g. the
text and the visual features of the same document blocks): token i of A gathers the values of
A weighted by how well its query matches B's keys. It is `CrossAttention` called with
``context=b, values=a``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .. import _checks
from ._common import check_features
from .attention import CrossAttention


class SelfDocAttention(nn.Module):
    """Queries and values from a (B, L, query_dim), keys from b (B, L, context_dim).

    Args:
        query_dim: feature size of A (queries and values).
        context_dim: feature size of B (keys).
        heads, dim_head: attention heads.
        bias: biases on the q/k/v projections.
        dropout: dropout on the attention probabilities, in training mode.
        backend: backend of `cross_attention` (None: dispatch).

    Shapes: forward(a (B, L, query_dim), b (B, L, context_dim), *, mask (B, L) bool or None,
    True = valid token; padded tokens may hold NaN and get output 0) -> (B, L, query_dim); with
    return_weights also (B, heads, L, L) or the head mean (B, L, L). A and B must have the same
    length L; L = 0 gives empty outputs. A padded token is never attended to (its weight column
    is 0) and attends to nothing (its weight row is exactly 0, as in
    `BidirectionalCrossAttention`).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        *,
        heads: int = 8,
        dim_head: int = 64,
        bias: bool = False,
        dropout: float = 0.0,
        backend: str | None = None,
    ):
        super().__init__()
        query_dim, context_dim, heads, dim_head = _checks.positive_ints(
            query_dim=query_dim, context_dim=context_dim, heads=heads, dim_head=dim_head
        )
        self.query_dim, self.context_dim = query_dim, context_dim
        self.attn = CrossAttention(
            query_dim, context_dim, query_dim, heads=heads, dim_head=dim_head, bias=bias,
            dropout=dropout, backend=backend,
        )  # fmt: skip

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        *,
        mask: Tensor | None = None,
        return_weights: bool | Literal["mean"] = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Token i of `a` attends to the keys of `b` and gathers the values of `a`.

        Args:
            a: (B, L, query_dim), the queries and values.
            b: (B, L, context_dim), the keys; token i of b pairs with token i of a.
            mask: (B, L) bool, True = valid token (may attend and be attended), shared by a and
                b; None: all valid. Padded tokens may hold NaN.
            return_weights: False; True for the weights (B, heads, L, L); "mean" for their head
                mean (B, L, L).

        Returns:
            (B, L, query_dim), 0 at padded tokens; with return_weights also the weights, whose
            rows and columns at padded tokens are exactly 0. L = 0 gives empty tensors of these
            shapes.

        a and b must have the dtype and device of the layer's parameters.
        """
        attn = self.attn
        check_features("a", a, self.query_dim, "(B, L, query_dim)", like=attn.to_q.weight)
        check_features("b", b, self.context_dim, "(B, L, context_dim)", like=attn.to_k.weight)
        if a.shape[:2] != b.shape[:2]:
            raise ValueError(
                f"SelfDocAttention needs a and b of the same batch and length (token i of a pairs "
                f"with token i of b): got a {tuple(a.shape)} (B, L, query_dim), b "
                f"{tuple(b.shape)}; expected b ({a.shape[0]}, {a.shape[1]}, {self.context_dim})"
            )
        _checks.token_mask("mask", mask, tuple(a.shape[:2]), "(B, L)")
        batch, length = a.shape[:2]
        if length == 0:  # nothing to attend from or to: empty outputs of the documented shapes
            out = a.new_zeros(batch, 0, attn.out_dim)
            if not return_weights:
                return out
            shape = (batch, 0, 0) if return_weights == "mean" else (batch, attn.heads, 0, 0)
            return out, a.new_zeros(shape)
        if mask is None:
            return attn(a, b, a, return_weights=return_weights)
        # Padded tokens (NaN allowed) are zeroed on the way in; their output rows and weight
        # rows are set to exactly 0 afterwards (cheaper than a (B, L, L) row mask in the op).
        a = a.masked_fill(~mask[..., None], 0.0)
        b = b.masked_fill(~mask[..., None], 0.0)
        res = attn(a, b, a, context_mask=mask, return_weights=return_weights)
        out = res[0] if return_weights else res
        out = out.masked_fill(~mask[..., None], 0.0)  # (B, L, query_dim)
        if not return_weights:
            return out
        weights = res[1]  # (B, L, L) head mean, or (B, heads, L, L)
        rows = mask[:, :, None] if weights.dim() == 3 else mask[:, None, :, None]
        return out, weights.masked_fill(~rows, 0.0)
