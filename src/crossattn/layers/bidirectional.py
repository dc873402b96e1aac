"""`BidirectionalCrossAttention`: two sequences attend to each other in one block.

Two modes:

- ``"two"``: two attentions, ``attn_a_to_b`` (tokens of A attend to B) and ``attn_b_to_a``, each
  a `CrossAttention` with its own projections into a common inner size heads * dim_head.
- ``"shared"``: one similarity matrix sim = qk_a @ qk_b^T (B, heads, La, Lb), softmaxed over Lb
  for A's update and over La for B's update (`crossattn.functional.bidirectional_attention`):
  fewer parameters, and the two maps are tied.

Masks on both sides (True = valid token); a padded token's output is exactly 0 and its
inputs (NaN included) never reach a valid output.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .. import _checks
from ..functional import bidirectional_attention
from ._common import check_features, check_nonempty
from .attention import CrossAttention
from .hooks import hand_over_maps

Mode = Literal["two", "shared"]


class BidirectionalCrossAttention(nn.Module):
    """Sequence A (B, La, dim_a) attends to B (B, Lb, dim_b) and B attends to A, in one block.

    Args:
        dim_a: feature size of A (e.g. image tokens).
        dim_b: feature size of B (e.g. text tokens).
        heads, dim_head: attention heads; both sides are projected to heads * dim_head.
        mode: "two" (two attentions) or "shared" (one similarity matrix, softmax per axis).
        out_dim: project both outputs to this common size; None keeps dim_a and dim_b.
        bias: biases on the q/k/v projections.
        backend: backend of `cross_attention` (None: dispatch).

    Shapes: forward(a (B, La, dim_a), b (B, Lb, dim_b), *, a_mask (B, La), b_mask (B, Lb))
    -> (a_out (B, La, out_dim or dim_a), b_out (B, Lb, out_dim or dim_b)); with
    return_weights also the maps A->B (B, heads, La, Lb) and B->A (B, heads, Lb, La) (head
    means (B, La, Lb), (B, Lb, La) for "mean").
    """

    def __init__(
        self,
        dim_a: int,
        dim_b: int,
        *,
        heads: int = 8,
        dim_head: int = 64,
        mode: Mode = "two",
        out_dim: int | None = None,
        bias: bool = False,
        backend: str | None = None,
    ):
        super().__init__()
        dim_a, dim_b, heads, dim_head = _checks.positive_ints(
            dim_a=dim_a, dim_b=dim_b, heads=heads, dim_head=dim_head
        )
        if out_dim is not None:
            out_dim = _checks.positive_int(out_dim, "out_dim")
        mode = _checks.choice(mode, "mode", ("two", "shared"))
        self.dim_a, self.dim_b, self.mode = dim_a, dim_b, mode
        self.heads, self.dim_head, self.backend = heads, dim_head, backend
        out_a = dim_a if out_dim is None else out_dim
        out_b = dim_b if out_dim is None else out_dim
        inner = heads * dim_head
        if mode == "two":
            self.attn_a_to_b = CrossAttention(
                dim_a, dim_b, heads=heads, dim_head=dim_head, out_dim=out_a, bias=bias,
                backend=backend,
            )  # fmt: skip
            self.attn_b_to_a = CrossAttention(
                dim_b, dim_a, heads=heads, dim_head=dim_head, out_dim=out_b, bias=bias,
                backend=backend,
            )  # fmt: skip
        else:
            self.to_qk_a = nn.Linear(dim_a, inner, bias=bias)
            self.to_qk_b = nn.Linear(dim_b, inner, bias=bias)
            self.to_v_a = nn.Linear(dim_a, inner, bias=bias)
            self.to_v_b = nn.Linear(dim_b, inner, bias=bias)
            self.to_out_a = nn.Linear(inner, out_a)
            self.to_out_b = nn.Linear(inner, out_b)
            self.attention_parts = ("attn_a_to_b", "attn_b_to_a")  # recorded maps, as in "two"

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        *,
        a_mask: Tensor | None = None,
        b_mask: Tensor | None = None,
        return_weights: bool | Literal["mean"] = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
        """Args: a (B, La, dim_a); b (B, Lb, dim_b); a_mask (B, La) and b_mask (B, Lb) bool,
        True = valid token; return_weights False, True or "mean". See the class docstring.

        a and b must have the dtype and device of the block's parameters, and at least one token
        each (each side attends to the other)."""
        if self.mode == "two":
            like_a, like_b = self.attn_a_to_b.to_q.weight, self.attn_b_to_a.to_q.weight
        else:
            like_a, like_b = self.to_qk_a.weight, self.to_qk_b.weight
        check_features("a", a, self.dim_a, "(B, La, dim_a)", like=like_a)
        check_features("b", b, self.dim_b, "(B, Lb, dim_b)", like=like_b)
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"a and b must have one batch size: a {tuple(a.shape)}, b {tuple(b.shape)}"
            )
        batch, la, lb = a.shape[0], a.shape[1], b.shape[1]
        for name, t, length, other in (("a", a, la, "b"), ("b", b, lb, "a")):
            check_nonempty(
                name,
                length,
                t.shape,
                f"L{name}=0 tokens",
                f"{other} attends to {name}, so {name} needs at least one token per row (keep "
                f"padding tokens and mark them False in {name}_mask)",
            )
        _checks.token_mask("a_mask", a_mask, (batch, la), "(B, La)")
        _checks.token_mask("b_mask", b_mask, (batch, lb), "(B, Lb)")
        if a_mask is not None:
            a = a.masked_fill(~a_mask[..., None], 0.0)  # NaN padding cannot reach a projection
        if b_mask is not None:
            b = b.masked_fill(~b_mask[..., None], 0.0)
        if self.mode == "two":
            # Padded tokens' own rows are fully masked: their weights are exactly 0, as in "shared".
            a_rows = (
                None if a_mask is None else a_mask[:, :, None].expand(-1, -1, lb)
            )  # (B, La, Lb)
            b_rows = (
                None if b_mask is None else b_mask[:, :, None].expand(-1, -1, la)
            )  # (B, Lb, La)
            a_res = self.attn_a_to_b(
                a, b, context_mask=b_mask, attn_mask=a_rows, return_weights=return_weights
            )
            b_res = self.attn_b_to_a(
                b, a, context_mask=a_mask, attn_mask=b_rows, return_weights=return_weights
            )
            if return_weights:
                (a_out, a_w), (b_out, b_w) = a_res, b_res
            else:
                a_out, b_out = a_res, b_res
        else:
            h, d = self.heads, self.dim_head
            qk_a = self.to_qk_a(a).view(batch, la, h, d).transpose(1, 2)  # (B, H, La, D)
            qk_b = self.to_qk_b(b).view(batch, lb, h, d).transpose(1, 2)  # (B, H, Lb, D)
            v_a = self.to_v_a(a).view(batch, la, h, d).transpose(1, 2)  # (B, H, La, D)
            v_b = self.to_v_b(b).view(batch, lb, h, d).transpose(1, 2)  # (B, H, Lb, D)
            res = bidirectional_attention(
                qk_a, qk_b, v_a, v_b, a_mask=a_mask, b_mask=b_mask, backend=self.backend,
                return_weights=return_weights,
            )  # fmt: skip
            hand_over_maps(self, "attn_a_to_b", qk_a, qk_b, key_mask=b_mask, query_mask=a_mask)
            hand_over_maps(self, "attn_b_to_a", qk_b, qk_a, key_mask=a_mask, query_mask=b_mask)
            a_out = res[0].transpose(1, 2).reshape(batch, la, h * d)  # (B, La, H*D)
            b_out = res[1].transpose(1, 2).reshape(batch, lb, h * d)  # (B, Lb, H*D)
            a_out, b_out = self.to_out_a(a_out), self.to_out_b(b_out)
            if return_weights:
                a_w, b_w = res[2], res[3]
        if a_mask is not None:
            a_out = a_out.masked_fill(~a_mask[..., None], 0.0)
        if b_mask is not None:
            b_out = b_out.masked_fill(~b_mask[..., None], 0.0)
        if return_weights:
            return a_out, b_out, a_w, b_w
        return a_out, b_out
