"""diffusers interop: convert an ``Attention`` to `CrossAttention`, or run diffusers' attention
through `crossattn.cross_attention` with `CrossAttnProcessor`.

diffusers is imported by nothing here: both functions read the attributes of the module they are
given (``to_q``, ``to_k``, ``to_v``, ``to_out``, ``heads``, ``norm_q``, ...), so they work with
any ``diffusers.models.attention_processor.Attention`` of the versions named in the README.

diffusers' masks are additive floats (0 = keep, a large negative number = drop) or booleans
(True = keep), the same conventions as crossattn's ``attn_mask``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import _checks
from ..functional import cross_attention
from ..layers.attention import CrossAttention
from .diffusers_attention import DiffusersAttention

RecordHook = Callable[[str | None, Tensor], None]


def _qk_norm_kind(norm: nn.Module, dim_head: int, which: str) -> Literal["layer_norm", "rms_norm"]:
    if isinstance(norm, nn.LayerNorm):
        kind: Literal["layer_norm", "rms_norm"] = "layer_norm"
        shape = tuple(norm.normalized_shape)
    elif isinstance(norm, nn.RMSNorm) or type(norm).__name__ == "RMSNorm":
        kind = "rms_norm"
        shape = tuple(getattr(norm, "normalized_shape", getattr(norm, "dim", ())))
        if getattr(norm, "bias", None) is not None:
            raise ValueError(f"from_diffusers: {which} is an RMSNorm with a bias, not supported")
    else:
        raise ValueError(
            f"from_diffusers: {which} is a {type(norm).__name__}; only LayerNorm and RMSNorm q/k "
            "norms have a CrossAttention equivalent"
        )
    if shape != (dim_head,):
        raise ValueError(
            f"from_diffusers: {which} normalises over {shape}, not over one head ({dim_head},); "
            "norms across all heads ('layer_norm_across_heads', 'rms_norm_across_heads') have "
            "no CrossAttention equivalent"
        )
    return kind


def crossattention_from_diffusers(attn: nn.Module) -> CrossAttention:
    """The `CrossAttention` equivalent to a diffusers ``Attention`` (see
    `CrossAttention.from_diffusers`)."""
    required = ("to_q", "to_k", "to_v", "to_out", "heads")
    missing = [a for a in required if getattr(attn, a, None) is None]
    if missing:
        raise TypeError(
            "from_diffusers expects a diffusers.models.attention_processor.Attention with "
            f"to_q, to_k, to_v, to_out and heads; {type(attn).__name__} lacks {missing}"
        )
    unsupported = []
    for attr, what in (
        ("group_norm", "a group norm on the hidden states (norm_num_groups)"),
        ("spatial_norm", "a spatial norm (spatial_norm_dim)"),
        ("norm_cross", "a norm on the encoder states (cross_attention_norm)"),
        ("added_kv_proj_dim", "added key/value projections (added_kv_proj_dim)"),
    ):
        if getattr(attn, attr, None) is not None:
            unsupported.append(what)
    if getattr(attn, "residual_connection", False):
        unsupported.append("residual_connection=True")
    if getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        unsupported.append(f"rescale_output_factor={attn.rescale_output_factor}")
    if unsupported:
        raise ValueError(
            "from_diffusers: this Attention has " + ", ".join(unsupported) + ", which lie outside "
            "CrossAttention; run the module with "
            "crossattn.integrations.diffusers.CrossAttnProcessor instead"
        )
    read = DiffusersAttention(attn)
    heads, kv_heads, dim_head, scale = read.heads, read.kv_heads, read.dim_head, read.scale
    if abs(scale - dim_head**-0.5) > 1e-12 * dim_head**-0.5:
        raise ValueError(
            f"from_diffusers: the Attention scales scores by {scale} (scale_qk=False?), "
            f"CrossAttention by 1/sqrt(dim_head) = {dim_head**-0.5}"
        )
    norm_q, norm_k = getattr(attn, "norm_q", None), getattr(attn, "norm_k", None)
    qk_norm = None
    eps = 1e-5
    if (norm_q is None) != (norm_k is None):
        raise ValueError("from_diffusers: only one of norm_q and norm_k is set; both or neither")
    if norm_q is not None:
        qk_norm = _qk_norm_kind(norm_q, dim_head, "norm_q")
        if _qk_norm_kind(norm_k, dim_head, "norm_k") != qk_norm or norm_q.eps != norm_k.eps:
            raise ValueError(
                f"from_diffusers: norm_q ({type(norm_q).__name__}, eps={norm_q.eps}) and norm_k "
                f"({type(norm_k).__name__}, eps={norm_k.eps}) differ"
            )
        eps = float(norm_q.eps)
    out_linear = attn.to_out[0]
    layer = CrossAttention(
        attn.to_q.in_features,
        attn.to_k.in_features,
        attn.to_v.in_features,
        heads=heads,
        dim_head=dim_head,
        kv_heads=kv_heads,
        out_dim=out_linear.out_features,
        bias=attn.to_q.bias is not None,
        out_bias=out_linear.bias is not None,
        qk_norm=qk_norm,
        norm_eps=eps,
    )
    ref = attn.to_q.weight
    layer = layer.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for ours, theirs in (
            (layer.to_q, attn.to_q),
            (layer.to_k, attn.to_k),
            (layer.to_v, attn.to_v),
            (layer.to_out, out_linear),
        ):
            if (ours.bias is None) != (theirs.bias is None):
                raise ValueError("from_diffusers: to_q, to_k and to_v must all have biases or none")
            ours.weight.copy_(theirs.weight)
            if theirs.bias is not None:
                ours.bias.copy_(theirs.bias)
        if qk_norm is not None:
            for ours, theirs in ((layer.q_norm, norm_q), (layer.k_norm, norm_k)):
                weight = getattr(theirs, "weight", None)
                ours.weight.copy_(weight if weight is not None else torch.ones_like(ours.weight))
                if qk_norm == "layer_norm":
                    bias = getattr(theirs, "bias", None)
                    ours.bias.copy_(bias if bias is not None else torch.zeros_like(ours.bias))
    return layer.train(attn.training)


def _check_inputs(
    attn: Any, hidden_states: Tensor, encoder_hidden_states: Any, attention_mask: Any
) -> None:
    """Check the context and mask against ``hidden_states`` (B, L, C) and the module, in the
    shapes the caller passed."""
    b, length, c = hidden_states.shape
    query_dim = getattr(attn.to_q, "in_features", None)
    if attn.group_norm is None and query_dim is not None and c != query_dim:
        raise ValueError(
            f"hidden_states has {c} features (shape {tuple(hidden_states.shape)}) but the module's "
            f"to_q expects query_dim={query_dim}"
        )
    s = length
    if encoder_hidden_states is not None:
        _checks.tensor(
            encoder_hidden_states, "encoder_hidden_states", rank=3,
            legend="(B, S, cross_attention_dim)",
        )  # fmt: skip
        ctx = tuple(encoder_hidden_states.shape)
        if ctx[0] != b:
            raise ValueError(
                f"encoder_hidden_states has batch size {ctx[0]} (shape {ctx}) but hidden_states "
                f"has {b} (shape {tuple(hidden_states.shape)})"
            )
        context_dim = getattr(attn.to_k, "in_features", None)
        if context_dim is not None and ctx[2] != context_dim:
            raise ValueError(
                f"encoder_hidden_states has {ctx[2]} features (shape {ctx}) but the module's "
                f"to_k expects cross_attention_dim={context_dim}"
            )
        s = ctx[1]
    if attention_mask is None:
        return
    _checks.tensor(attention_mask, "attention_mask", legend="or None")
    m = tuple(attention_mask.shape)
    what = "S = " + str(s) + (" context" if encoder_hidden_states is not None else " query")
    expected = f"(B, S) or (B, 1 | L, S) with B = {b}, L = {length}, {what} tokens"
    if len(m) not in (2, 3) or m[0] != b or m[-1] != s or (len(m) == 3 and m[1] not in (1, length)):
        raise ValueError(f"attention_mask has shape {m}; expected {expected}")


class CrossAttnProcessor:
    """A diffusers attention processor that computes attention with `crossattn.cross_attention`.

    Set it on a model with ``model.set_attn_processor(CrossAttnProcessor())``, or one per module
    (so that each knows its name) with ``model.set_attn_processor(processors_for(model))``. It
    follows diffusers' ``AttnProcessor2_0`` step by step: ``spatial_norm``, 4-D hidden states
    (B, C, H, W) flattened to (B, H*W, C) and back, the attention mask prepared by the module's
    own ``prepare_attention_mask`` (additive float or bool True = keep, (B, S) or (B, 1|L, S)),
    ``group_norm``, ``norm_cross``, ``norm_q``/``norm_k``, ``to_out`` (linear, dropout),
    ``residual_connection`` and ``rescale_output_factor``. In addition it honours ``attn.scale``
    (``scale_qk=False``) and grouped key/value heads (``kv_heads``).

    Args:
        backend: pin a backend of `crossattn.cross_attention` (None: dispatch).
        record: an optional hook, ``record(name, weights)``, called on every call with the
            attention weights (B, heads, L, S) (or their head mean (B, L, S), see
            ``record_weights``) of the module. The weights come from the same
            `cross_attention` call that computes the output (``return_weights``), so a backend
            that returns weights runs. ``name`` is the module name given here (None if none).
        record_weights: True for per-head weights, "mean" for the head mean.
        name: the name passed to ``record``; `processors_for` fills it with the module name.
    """

    def __init__(
        self,
        *,
        backend: str | None = None,
        record: RecordHook | None = None,
        record_weights: Literal[True, "mean"] = True,
        name: str | None = None,
    ):
        if record is not None and not callable(record):
            raise TypeError(f"record must be callable (name, weights) or None, got {record!r}")
        if record_weights not in (True, "mean"):
            raise ValueError(f"record_weights must be True or 'mean', got {record_weights!r}")
        self.backend = backend
        self.record = record
        self.record_weights = record_weights
        self.name = name

    def __repr__(self) -> str:
        return f"CrossAttnProcessor(backend={self.backend!r}, name={self.name!r})"

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        """Run ``attn`` on its inputs.

        Args:
            attn: the diffusers ``Attention`` module.
            hidden_states: queries (B, L, C) or an image (B, C, H, W).
            encoder_hidden_states: context (B, S, cross_attention_dim), or None for
                self-attention.
            attention_mask: additive float or bool (True = keep), (B, S) or (B, 1 | L, S).
            temb: time embedding for ``spatial_norm``.

        Returns:
            The same shape as ``hidden_states``.
        """
        if getattr(attn, "added_kv_proj_dim", None) is not None:
            raise ValueError(
                "CrossAttnProcessor does not implement added key/value projections "
                "(added_kv_proj_dim); keep diffusers' AttnAddedKVProcessor2_0 on this module"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.dim() == 4:
            image_shape = hidden_states.shape  # (B, C, H, W)
            b, c = image_shape[:2]
            hidden_states = hidden_states.reshape(b, c, -1).transpose(1, 2)  # (B, H*W, C)
        elif hidden_states.dim() != 3:
            raise ValueError(
                f"hidden_states must be (B, L, C) or (B, C, H, W), got {tuple(hidden_states.shape)}"
            )
        _check_inputs(attn, hidden_states, encoder_hidden_states, attention_mask)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, length = hidden_states.shape[:2]
        s = context.shape[1]
        read = DiffusersAttention(attn)
        mask = None
        if attention_mask is not None:
            # The module's own helper pads and repeats the mask per head: (B, heads, 1|L, S).
            mask = read.attention_mask(attention_mask, s, b)
            if mask.is_floating_point():
                # (under autocast the op takes it in any float dtype, in the compute dtype)
                mask = mask.to(hidden_states.dtype)
        hidden_states = read.normed_hidden(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        else:
            context = read.normed_context(encoder_hidden_states)
        q = read.project_queries(hidden_states)  # (B, H, L, D)
        k = read.project_keys(context)  # (B, Hk, S, D)
        v = read.project_values(context)  # (B, Hk, S, D)

        out_dtype = q.dtype
        upcast = q.dtype in (torch.float16, torch.bfloat16) and (
            getattr(attn, "upcast_attention", False) or getattr(attn, "upcast_softmax", False)
        )
        if upcast:
            q, k, v = q.float(), k.float(), v.float()
            mask = mask.float() if mask is not None and mask.is_floating_point() else mask
        want = self.record_weights if self.record is not None else False
        # Upcast attention runs in float32 even under autocast (which would cast it back).
        with torch.autocast(q.device.type, enabled=False) if upcast else contextlib.nullcontext():
            res = cross_attention(
                q,
                k,
                v,
                attn_mask=mask,
                scale=read.scale,
                backend=self.backend,
                return_weights=want,
            )
        if want:
            out, weights = res
            self.record(self.name, weights)
        else:
            out = res
        out = out.to(out_dtype).transpose(1, 2).reshape(b, length, read.heads * read.dim_head)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)  # dropout

        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)  # (B, C, H, W)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def processors_for(
    model: nn.Module,
    *,
    backend: str | None = None,
    record: RecordHook | None = None,
    record_weights: Literal[True, "mean"] = True,
) -> dict[str, CrossAttnProcessor]:
    """One `CrossAttnProcessor` per attention module of a diffusers model, each named after its
    module (``"down_blocks.0.attentions.0.transformer_blocks.0.attn2"``), for
    ``model.set_attn_processor(processors_for(model, record=...))``."""
    if not hasattr(model, "attn_processors"):
        raise TypeError(
            f"processors_for expects a diffusers model with attn_processors, got "
            f"{type(model).__name__}"
        )
    return {
        key: CrossAttnProcessor(
            backend=backend,
            record=record,
            record_weights=record_weights,
            name=key.removesuffix(".processor"),
        )
        for key in model.attn_processors
    }
