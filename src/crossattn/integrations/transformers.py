"""Hugging Face transformers interop: BERT's cross-attention as a `CrossAttention`.

transformers is not imported here: the converter reads the attributes of the module it is given
(``self.query``, ``self.key``, ``self.value``, ``self.num_attention_heads``,
``self.attention_head_size``, ``output.dense``), so it accepts BERT-style attention modules from
any transformers version named in the README, however they were created.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers.attention import CrossAttention

_CORE_ATTRS = ("query", "key", "value", "num_attention_heads", "attention_head_size")


def crossattention_from_transformers(module: nn.Module) -> CrossAttention:
    """The `CrossAttention` equivalent to a BERT attention (see
    `CrossAttention.from_transformers`)."""
    core: Any
    dense: nn.Linear | None
    if all(hasattr(module, a) for a in ("self", "output")):
        core = module.self
        dense = getattr(module.output, "dense", None)
        if not isinstance(dense, nn.Linear):
            raise TypeError(
                f"from_transformers: {type(module).__name__}.output has no dense nn.Linear "
                "(the output projection of a BertAttention)"
            )
    elif all(hasattr(module, a) for a in _CORE_ATTRS):
        core, dense = module, None
    else:
        raise TypeError(
            "from_transformers expects a BERT attention: a BertAttention (with .self and "
            ".output.dense), e.g. model.encoder.layer[i].crossattention, or its .self; got "
            f"{type(module).__name__}"
        )
    missing = [a for a in _CORE_ATTRS if not hasattr(core, a)]
    if missing:
        raise TypeError(
            f"from_transformers: {type(core).__name__} is not a BERT self/cross-attention; it "
            f"lacks {missing}"
        )
    position = getattr(core, "position_embedding_type", "absolute")
    if position not in (None, "absolute"):
        raise ValueError(
            f"from_transformers: position_embedding_type={position!r} adds relative position "
            "scores, which CrossAttention does not have; only 'absolute' converts"
        )
    heads, dim_head = int(core.num_attention_heads), int(core.attention_head_size)
    query, key, value = core.query, core.key, core.value
    for name, lin in (("query", query), ("key", key), ("value", value)):
        if lin.out_features != heads * dim_head:
            raise ValueError(
                f"from_transformers: {name} has {lin.out_features} output features, expected "
                f"num_attention_heads * attention_head_size = {heads} * {dim_head}"
            )
    scaling = float(getattr(core, "scaling", dim_head**-0.5))
    if abs(scaling - dim_head**-0.5) > 1e-12 * dim_head**-0.5:
        raise ValueError(
            f"from_transformers: the module scales scores by {scaling}, CrossAttention by "
            f"1/sqrt(attention_head_size) = {dim_head**-0.5}"
        )
    has_bias = [lin.bias is not None for lin in (query, key, value)]
    if len(set(has_bias)) != 1:
        raise ValueError("from_transformers: query, key and value must all have biases or none")
    dropout = getattr(core, "dropout", None)
    out_dim = dense.out_features if dense is not None else heads * dim_head
    layer = CrossAttention(
        query.in_features,
        key.in_features,
        value.in_features,
        heads=heads,
        dim_head=dim_head,
        out_dim=out_dim,
        bias=has_bias[0],
        out_bias=dense is None or dense.bias is not None,
        dropout=float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0,
    )
    ref = query.weight
    layer = layer.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for ours, theirs in ((layer.to_q, query), (layer.to_k, key), (layer.to_v, value)):
            ours.weight.copy_(theirs.weight)
            if theirs.bias is not None:
                ours.bias.copy_(theirs.bias)
        if dense is None:
            # The bare attention has no output projection: an exact identity stands in.
            layer.to_out.weight.copy_(torch.eye(out_dim, dtype=ref.dtype, device=ref.device))
            layer.to_out.bias.zero_()
        else:
            layer.to_out.weight.copy_(dense.weight)
            if dense.bias is not None:
                layer.to_out.bias.copy_(dense.bias)
    return layer.train(module.training)
