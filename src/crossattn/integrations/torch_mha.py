"""torch interop: `torch.nn.MultiheadAttention` as a `CrossAttention`.

Both parameter layouts of the module (packed ``in_proj_weight``, and separate q/k/v weights when
kdim/vdim differ) are read; see `CrossAttention.from_torch`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import CrossAttention


def crossattention_from_torch(mha: nn.MultiheadAttention) -> CrossAttention:
    """The `CrossAttention` equivalent to `mha` (see `CrossAttention.from_torch`)."""
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"from_torch expects torch.nn.MultiheadAttention, got {type(mha).__name__}")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError(
            "from_torch: add_bias_kv and add_zero_attn have no CrossAttention equivalent"
        )
    e, h = mha.embed_dim, mha.num_heads
    has_bias = mha.in_proj_bias is not None
    layer = CrossAttention(
        e,
        mha.kdim,
        mha.vdim,
        heads=h,
        dim_head=e // h,
        bias=has_bias,
        out_bias=mha.out_proj.bias is not None,
        dropout=mha.dropout,
    )
    ref = mha.out_proj.weight
    layer = layer.to(device=ref.device, dtype=ref.dtype)
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.chunk(3, dim=0)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    with torch.no_grad():
        layer.to_q.weight.copy_(wq)
        layer.to_k.weight.copy_(wk)
        layer.to_v.weight.copy_(wv)
        if has_bias:
            bq, bk, bv = mha.in_proj_bias.chunk(3, dim=0)
            layer.to_q.bias.copy_(bq)
            layer.to_k.bias.copy_(bk)
            layer.to_v.bias.copy_(bv)
        layer.to_out.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            layer.to_out.bias.copy_(mha.out_proj.bias)
    return layer.train(mha.training)
