"""The encoder of an eval-mode `Seq2SeqTransformer` at inference, with packed projections.

`encode` computes what `Seq2SeqTransformer.encode` computes (the same layers, parameters and
attention op) with the work per layer cut down: tokens as one (B*S, d_model) matrix, the q, k and
v projections in one packed matmul (`PackedLinear`, oneDNN on the CPU), the FFN's ReLU fused into
its first matmul, the attention backend chosen once by the registry's dispatch and called with
inputs in the op's normalised form (padded keys and values zeroed, the key mask as (B, 1, 1, S)).

Shapes: source_ids (B, S) long, source_mask (B, S) bool with True = valid token (every row needs
one) or None.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..layers.transformer import TransformerEncoderLayer
from .incremental import Attend, norm_fn, packs_of


def encoder_reasons(model: nn.Module) -> list[str]:
    """Why `encode` cannot run this model's encoder (empty: it can)."""
    if any(type(layer) is not TransformerEncoderLayer for layer in model.encoder):
        return ["an encoder layer is not a TransformerEncoderLayer"]
    return []


def _layer_packs(layer: TransformerEncoderLayer):
    sa, ffn = layer.self_attn, layer.ffn
    specs = {
        "self_out": ((sa.to_out,), False),
        "ffn_in": ((ffn.linear_in,), type(ffn.act) is nn.ReLU),
        "ffn_out": ((ffn.linear_out,), False),
    }
    if isinstance(sa.k_norm, nn.Identity) and isinstance(sa.q_norm, nn.Identity):
        specs["self_qkv"] = ((sa.to_q, sa.to_k, sa.to_v), False)
    return packs_of(layer, specs)


def _self_attention(layer, packs, attend: Attend, h: Tensor, b: int, s: int, mask, pad):
    sa = layer.self_attn
    hd, hk = sa.heads * sa.dim_head, sa.kv_heads * sa.dim_head
    if "self_qkv" in packs:
        qkv = packs["self_qkv"](h)  # (B*S, H*D + 2*Hk*D)
        q, k, v = qkv[:, :hd], qkv[:, hd : hd + hk], qkv[:, hd + hk :]
    else:
        q, k, v = sa.to_q(h), sa.to_k(h), sa.to_v(h)
    q = sa.q_norm(q.view(b, s, sa.heads, sa.dim_head).transpose(1, 2))  # (B, H, S, D)
    k = sa.k_norm(k.view(b, s, sa.kv_heads, sa.dim_head).transpose(1, 2))  # (B, Hk, S, D)
    v = v.view(b, s, sa.kv_heads, sa.dim_head).transpose(1, 2)
    if pad is not None:  # the op's contract: padded keys and values are zero
        k, v = k.masked_fill(pad, 0.0), v.masked_fill(pad, 0.0)
    out, _ = attend(q, k, v, mask, False)  # (B, H, S, D)
    out = out.transpose(1, 2).reshape(b * s, hd)
    return packs.get("self_out", sa.to_out)(out)


def encode(model, source_ids: Tensor, source_mask: Tensor | None) -> Tensor:
    """(B, S) ids -> (B, S, d_model), as `Seq2SeqTransformer.encode` (eval mode, no grad)."""
    b, s = source_ids.shape
    if source_mask is not None and bool(source_mask.all()):
        source_mask = None  # nothing padded: no mask at all
    mask = None if source_mask is None else source_mask[:, None, None, :]  # (B, 1, 1, S)
    pad = None if source_mask is None else ~source_mask[:, None, :, None]  # (B, 1, S, 1)
    embed = model._embed(model.source_embed, source_ids, 0, "source_ids")  # (B, S, D)
    tokens = embed.reshape(b * s, -1)
    for layer in model.encoder:
        packs = _layer_packs(layer)
        sa = layer.self_attn
        attend = Attend(sa.backend, 1.0 / math.sqrt(sa.dim_head))
        first, ffn = layer.attn_block.norm_first, layer.ffn
        norm_attn, norm_ffn = norm_fn(layer.attn_block.norm), norm_fn(layer.ffn_block.norm)
        h = norm_attn(tokens) if first else tokens
        tokens = tokens + _self_attention(layer, packs, attend, h, b, s, mask, pad)
        if not first:
            tokens = norm_attn(tokens)
        h = norm_ffn(tokens) if first else tokens
        hidden = packs["ffn_in"](h) if "ffn_in" in packs else ffn.linear_in(h)
        if not ("ffn_in" in packs and packs["ffn_in"].relu):
            hidden = ffn.act(hidden)
        tokens = tokens + packs.get("ffn_out", ffn.linear_out)(hidden)
        if not first:
            tokens = norm_ffn(tokens)
    return model.encoder_norm(tokens).view(b, s, -1)
