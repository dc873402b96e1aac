"""`DiffusersAttention`: read a diffusers ``Attention`` module in crossattn's layout.

The one place that knows how such a module is put together: its head geometry (read from its
projections, grouped key/value heads included), its score scale, the norms on its inputs
(``group_norm``, ``norm_cross``) and on its heads (``norm_q``, ``norm_k``), and its attention
mask helper. `CrossAttention.from_diffusers`, the attention processor `CrossAttnProcessor` and
the recorder's diffusers hook (`crossattn.capture.diffusers`) all read modules through it.

diffusers is not imported: the module's attributes are read (``to_q``, ``to_k``, ``to_v``,
``heads``, ``norm_q``, ...), so any ``diffusers.models.attention_processor.Attention`` of the
versions named in the README works.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


class DiffusersAttention:
    """A diffusers ``Attention`` module, read in crossattn's layout.

    Attributes:
        module: the module.
        heads, kv_heads, dim_head: its query heads, key/value heads and head size.
        scale: its score scale (``attn.scale``; 1/sqrt(dim_head) unless ``scale_qk=False``).
    """

    def __init__(self, attn: Any):
        self.module = attn
        self.heads = int(attn.heads)
        inner = attn.to_q.out_features
        if inner % self.heads != 0:
            raise ValueError(
                f"to_q has {inner} output features, not a multiple of heads={self.heads}"
            )
        self.dim_head = inner // self.heads
        kv_inner = attn.to_k.out_features
        if kv_inner % self.dim_head != 0:
            raise ValueError(
                f"to_k has {kv_inner} output features, not a multiple of dim_head={self.dim_head}"
            )
        self.kv_heads = kv_inner // self.dim_head
        self.scale = float(getattr(attn, "scale", self.dim_head**-0.5))

    def normed_hidden(self, hidden_states: Tensor) -> Tensor:
        """(B, L, C) hidden states after the module's ``group_norm`` (if any)."""
        group_norm = getattr(self.module, "group_norm", None)
        if group_norm is None:
            return hidden_states
        return group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    def normed_context(self, encoder_hidden_states: Tensor) -> Tensor:
        """(B, S, cross_attention_dim) encoder states after ``norm_cross`` (if any)."""
        if getattr(self.module, "norm_cross", None):
            return self.module.norm_encoder_hidden_states(encoder_hidden_states)
        return encoder_hidden_states

    def project_queries(self, hidden: Tensor) -> Tensor:
        """(B, L, C) normed hidden states -> queries (B, heads, L, dim_head), ``norm_q`` applied."""
        b, length, _ = hidden.shape
        q = self.module.to_q(hidden).view(b, length, self.heads, self.dim_head).transpose(1, 2)
        return self._norm("norm_q", q)

    def split_keys(self, projected: Tensor) -> Tensor:
        """``to_k`` output (B, S, kv_heads * dim_head) -> keys (B, kv_heads, S, dim_head),
        ``norm_k`` applied."""
        b, s, _ = projected.shape
        k = projected.view(b, s, self.kv_heads, self.dim_head).transpose(1, 2)
        return self._norm("norm_k", k)

    def project_keys(self, context: Tensor) -> Tensor:
        """(B, S, D) normed context -> keys (B, kv_heads, S, dim_head), ``norm_k`` applied."""
        return self.split_keys(self.module.to_k(context))

    def project_values(self, context: Tensor) -> Tensor:
        """(B, S, D) normed context -> values (B, kv_heads, S, dim_head)."""
        b, s, _ = context.shape
        return self.module.to_v(context).view(b, s, self.kv_heads, self.dim_head).transpose(1, 2)

    def attention_mask(self, attention_mask: Tensor, s: int, b: int) -> Tensor:
        """diffusers' mask ((B, S) or (B, 1|L, S), additive float or bool True = keep) for S keys,
        by the module's own ``prepare_attention_mask``, as (B, heads, 1|L, S)."""
        mask = self.module.prepare_attention_mask(attention_mask, s, b)  # (B*heads, 1|L, S)
        return mask.view(b, self.heads, -1, mask.shape[-1])  # (B, heads, 1|L, S)

    def _norm(self, name: str, heads: Tensor) -> Tensor:
        norm = getattr(self.module, name, None)
        return heads if norm is None else norm(heads)
