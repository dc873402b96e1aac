"""The fast inference step of `Seq2SeqTransformer`: one new target position for N rows.

`IncrementalDecoder` runs the decoder of an eval-mode model one position at a time, for greedy and
beam search. It computes what ``model.decode(..., use_cache=True)`` computes, with the per-step
work cut down:

- tokens are kept as (N, d_model) matrices: every projection is one 2-D matmul;
- the self-attention q, k and v are one matmul (`PackedLinear`), and so are the cross-attention
  keys and values of the source, projected once per input;
- the self-attention keys and values go into a `KVCache` preallocated to the decode length;
- the beams of one input share its source keys and values: their queries are folded into the
  query length of one attention call per input, (B, heads, beams, dim_head), so the source K/V are
  neither copied per beam nor reordered;
- the attention op's backend is chosen once per decode by the registry's dispatch
  (`crossattn.backends.select_backend`, the layer's pinned backend and `use_backend` honoured)
  and then called directly with inputs in the op's normalised form (`AttentionInputs`: padded
  source keys and values zeroed once, the key mask combined once).

Hook points for other compute types: a projection that is not a plain `nn.Linear` without hooks
(e.g. a quantised module) is called as a module and never fused (`packed.packable`); the source
keys and values are made in one place, `_source_kv` (by the layer's own `prepare_context`, a
`PreparedContext`, whenever its key/value projections are not plain linears); the op is called in
one place, `Attend`, which hands whatever key and value tensors it gets to the backend that the
registry selects for them.

`fast_path_reasons(model)` says why a model takes the general path (`model.decode`) instead.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..backends import AttentionInputs, select_backend
from ..layers import hooks as capture_hook
from ..layers.attention import PreparedContext
from ..layers.transformer import TransformerDecoderLayer
from .kv_cache import KVCache
from .packed import PackedLinear, packable

# Fused copies per decoder layer, kept between calls and remade when a parameter changes.
_PACKS: weakref.WeakKeyDictionary[nn.Module, dict[str, PackedLinear]] = weakref.WeakKeyDictionary()


def fast_path_reasons(model: nn.Module) -> list[str]:
    """Why `IncrementalDecoder` cannot run this model now (empty: it can)."""
    reasons = []
    if model.training:
        reasons.append("the model is in training mode (dropout)")
    if torch.is_grad_enabled():
        reasons.append("gradients are enabled")
    if capture_hook._OPEN:
        reasons.append("an AttentionRecorder is open (it records module calls)")
    for layer in model.decoder:
        if type(layer) is not TransformerDecoderLayer:
            reasons.append(f"decoder layer {type(layer).__name__} is not TransformerDecoderLayer")
            break
    return reasons


def packs_of(owner: nn.Module, specs: dict[str, tuple[tuple[nn.Module, ...], bool]]):
    """name -> `PackedLinear` for the specs (modules, fused ReLU) whose modules can be packed
    now; packs are kept per owner between calls and refreshed from the parameters."""
    kept = _PACKS.setdefault(owner, {})
    out = {}
    for name, (modules, relu) in specs.items():
        if not packable(*modules):
            continue
        pack = kept.get(name)
        if pack is None or pack.linears != modules or pack.relu != relu:
            pack = kept[name] = PackedLinear(*modules, relu=relu)
        out[name] = pack.refresh()
    return out


def _layer_packs(layer: TransformerDecoderLayer) -> dict[str, PackedLinear]:
    sa, ca, ffn = layer.self_attn, layer.cross_attn_target_to_source, layer.ffn
    specs = {
        "self_out": ((sa.to_out,), False),
        "cross_q": ((ca.to_q,), False),
        "cross_out": ((ca.to_out,), False),
        "ffn_in": ((ffn.linear_in,), type(ffn.act) is nn.ReLU),
        "ffn_out": ((ffn.linear_out,), False),
    }
    if isinstance(sa.k_norm, nn.Identity):
        specs["self_qkv"] = ((sa.to_q, sa.to_k, sa.to_v), False)
    if isinstance(ca.k_norm, nn.Identity):
        specs["cross_kv"] = ((ca.to_k, ca.to_v), False)
    return packs_of(layer, specs)


def norm_fn(norm: nn.Module) -> Callable[[Tensor], Tensor]:
    """A plain `nn.LayerNorm` as a direct call of the op (no module dispatch); else the module."""
    if type(norm) is nn.LayerNorm and not (norm._forward_hooks or norm._forward_pre_hooks):
        shape, weight, bias, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        return lambda features: torch.layer_norm(features, shape, weight, bias, eps)
    return norm


class _Linears(NamedTuple):
    """The projections of one decoder layer: packed copies, or the modules themselves."""

    self_qkv: PackedLinear | None  # None: to_q, to_k and to_v one by one
    self_out: Callable[[Tensor], Tensor]
    cross_q: Callable[[Tensor], Tensor]
    cross_out: Callable[[Tensor], Tensor]
    ffn_in: Callable[[Tensor], Tensor]
    ffn_in_has_relu: bool
    ffn_out: Callable[[Tensor], Tensor]


@dataclass
class Attend:
    """One attention call site: the backend is chosen on the first call, then reused."""

    pinned: str | None
    scale: float
    backend: object = None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, weights: bool):
        inputs = AttentionInputs(q, k, v, mask, self.scale, 0.0, weights)
        if self.backend is None:
            self.backend = select_backend(inputs, self.pinned)
        return self.backend.forward(inputs)


def _source_kv(layer, memory: Tensor, mask: Tensor | None, packs) -> tuple[Tensor, Tensor]:
    """Cross-attention keys and values (B, H, S, D) of one layer, padding zeroed."""
    attn = layer.cross_attn_target_to_source
    if "cross_kv" in packs:
        b, s, _ = memory.shape
        kv = packs["cross_kv"](memory).view(b, s, 2, attn.kv_heads, attn.dim_head)
        key = kv[:, :, 0].transpose(1, 2).contiguous()  # (B, Hk, S, D)
        value = kv[:, :, 1].transpose(1, 2).contiguous()
    else:
        prepared: PreparedContext = layer.prepare_context(memory, mask)
        key, value = prepared.key, prepared.value
    if mask is not None:  # the op's contract: padded keys and values are zero
        pad = ~mask[:, None, :, None]  # (B, 1, S, 1)
        key, value = key.masked_fill(pad, 0.0), value.masked_fill(pad, 0.0)
    return key, value


class IncrementalDecoder:
    """Decode N = B x beams rows of an eval-mode `Seq2SeqTransformer`, one position per step.

    Args:
        model: the translator, in eval mode, under ``torch.no_grad()``.
        memory: (B, S, d_model), the encoder output.
        source_mask: (B, S) bool, True = valid token (every row needs one), or None.
        beams: rows per input; row r decodes input r // beams.
        capacity: the most steps that will be run (the length of the self-attention caches).
        attention_layers: decoder layers whose cross-attention weights `step` returns.
    """

    def __init__(self, model, memory, source_mask, *, beams, capacity, attention_layers=()):
        self.model, self.beams = model, beams
        cfg = model.config
        self.b = memory.shape[0]
        self.n = self.b * beams
        self.embed_scale = math.sqrt(cfg.d_model)
        self.wanted = set(attention_layers)
        if source_mask is not None and bool(source_mask.all()):
            source_mask = None  # no padding: no mask at all
        self.cross_mask = None if source_mask is None else source_mask[:, None, None, :]
        self.never = torch.tensor([cfg.pad_id, cfg.bos_id], device=memory.device)
        self.layers = []
        self.output = packs_of(model, {"output": ((model.output,), False)}).get(
            "output", model.output
        )
        for layer in model.decoder:
            packs = _layer_packs(layer)
            sa, ca, ffn = layer.self_attn, layer.cross_attn_target_to_source, layer.ffn
            key, value = _source_kv(layer, memory, source_mask, packs)
            cache = KVCache(
                self.n, sa.kv_heads, sa.dim_head, capacity, dtype=key.dtype, device=key.device
            )
            linears = _Linears(
                packs.get("self_qkv"), packs.get("self_out", sa.to_out),
                packs.get("cross_q", ca.to_q), packs.get("cross_out", ca.to_out),
                packs.get("ffn_in", ffn.linear_in), "ffn_in" in packs and packs["ffn_in"].relu,
                packs.get("ffn_out", ffn.linear_out),
            )  # fmt: skip
            norms = tuple(
                norm_fn(blk.norm) for blk in (layer.self_block, layer.cross_block, layer.ffn_block)
            )
            self.layers.append((
                layer, linears, cache, key, value,
                Attend(sa.backend, 1.0 / math.sqrt(sa.dim_head)),
                Attend(ca.backend, 1.0 / math.sqrt(ca.dim_head)),
                norms, layer.self_block.norm_first,
            ))  # fmt: skip
        self.final_norm = norm_fn(model.decoder_norm)
        self.position = 0

    def reorder(self, rows: Tensor) -> None:
        """Keep rows ``rows`` (N,) of the self-attention caches (beams stay within an input)."""
        for entry in self.layers:
            entry[2].reorder(rows)

    def _self_attention(self, layer, linears: _Linears, cache, attend, h: Tensor) -> Tensor:
        sa, n = layer.self_attn, self.n
        hd = sa.heads * sa.dim_head
        if linears.self_qkv is not None:
            qkv = linears.self_qkv(h)  # (N, H*D + 2*Hk*D)
            q, kv = qkv[:, :hd], qkv[:, hd:].view(n, 2, sa.kv_heads, sa.dim_head)
        else:
            q = sa.to_q(h)
            kv = torch.stack([sa.to_k(h), sa.to_v(h)], 1).view(n, 2, sa.kv_heads, sa.dim_head)
            if not isinstance(sa.k_norm, nn.Identity):
                kv = torch.stack([sa.k_norm(kv[:, 0]), kv[:, 1]], 1)
        q = sa.q_norm(q.view(n, sa.heads, 1, sa.dim_head))  # (N, H, 1, D)
        keys, values = cache.append(kv)  # (N, Hk, t, D)
        out, _ = attend(q, keys, values, None, False)  # (N, H, 1, D)
        return linears.self_out(out.reshape(n, hd))

    def _cross_attention(self, layer, linears: _Linears, key, value, attend, h, want: bool):
        ca, b, k = layer.cross_attn_target_to_source, self.b, self.beams
        q = linears.cross_q(h).view(b, k, ca.heads, ca.dim_head).transpose(1, 2)
        q = ca.q_norm(q)  # (B, H, k, D): the beams of an input are its queries
        out, weights = attend(q, key, value, self.cross_mask, want)  # (B, H, k, D)
        out = out.transpose(1, 2).reshape(self.n, ca.heads * ca.dim_head)
        if weights is not None:  # (B, H, k, S) -> (N, H, S)
            weights = weights.transpose(1, 2).reshape(self.n, ca.heads, -1)
        return linears.cross_out(out), weights

    def step(self, token_ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """Feed one token per row; return the next-token logits and cross-attention maps.

        Args:
            token_ids: (N,) long, the decoder inputs of this position (BOS at the first step).

        Returns:
            logits (N, V) float32 with PAD and BOS at -inf (never produced), and the
            cross-attention weights (N, layers asked, heads, S), or None.
        """
        model = self.model
        pos = model.positions[self.position]  # (D,)
        tokens = torch.add(pos, model.target_embed(token_ids), alpha=self.embed_scale)  # (N, D)
        self.position += 1
        maps = []
        for i, entry in enumerate(self.layers):
            layer, lin, cache, key, value, att_self, att_cross, norms, first = entry
            h = norms[0](tokens) if first else tokens
            tokens = tokens + self._self_attention(layer, lin, cache, att_self, h)
            if not first:
                tokens = norms[0](tokens)
            h = norms[1](tokens) if first else tokens
            update, weights = self._cross_attention(
                layer, lin, key, value, att_cross, h, i in self.wanted
            )
            tokens = tokens + update
            if not first:
                tokens = norms[1](tokens)
            if weights is not None:
                maps.append(weights)
            h = norms[2](tokens) if first else tokens
            hidden = lin.ffn_in(h)
            if not lin.ffn_in_has_relu:
                hidden = layer.ffn.act(hidden)
            tokens = tokens + lin.ffn_out(hidden)
            if not first:
                tokens = norms[2](tokens)
        logits = self.output(self.final_norm(tokens)).float()  # (N, V)
        logits.index_fill_(1, self.never, float("-inf"))
        return logits, (torch.stack(maps, 1) if maps else None)
