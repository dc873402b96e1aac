"""Transformer encoder and decoder layers built on `CrossAttention`.

Both kinds of attention go through `CrossAttention` (and so through `crossattn.cross_attention`):
self-attention is cross-attention whose context is the sequence itself. The decoder's
self-attention keys and values are kept in a `PreparedContext` that grows by one position per
decoding step (the incremental cache); its cross-attention takes the encoder output either raw or
as a `PreparedContext` made once per input by `prepare_context`.

Shapes: source tokens (B, S, d_model), target tokens (B, T, d_model), source_mask (B, S) bool with
True = valid token (the mask convention of the whole package: True = may attend).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from ..masks import causal_mask, dropout_mask
from ._common import FastDropout, FeedForward, check_features
from .attention import ArgNames, CrossAttention, PreparedContext, WeightsArg

_SOURCE = ArgNames(
    "tokens",
    "source",
    "source_mask",
    "(B, S, context_dim) or a PreparedContext from prepare_context",
)


def _check_dims(
    d_model: object, heads: object, dim_ff: object, dropout: object
) -> tuple[int, int, int, float]:
    """The layer's sizes as ints and its dropout as a float in [0, 1), or the error naming one."""
    d_model, heads, dim_ff = _checks.positive_ints(d_model=d_model, heads=heads, dim_ff=dim_ff)
    if d_model % heads != 0:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
    return d_model, heads, dim_ff, _checks.probability(dropout, "dropout")


def _self_attention(
    d_model: int, heads: int, dropout: float, backend: str | None
) -> CrossAttention:
    """The tokens' causal or bidirectional self-attention, with biases but none on the keys."""
    attn = _drop_key_bias(CrossAttention(
        d_model, heads=heads, dim_head=d_model // heads, bias=True, dropout=dropout,
        backend=backend,
    ))  # fmt: skip
    attn.role = "self"
    return attn


def _drop_key_bias(attn: CrossAttention) -> CrossAttention:
    """Remove the key projection's bias: it adds the same q.b to every score of a query row, which
    softmax ignores, so its gradient is pure rounding noise (that Adam would amplify)."""
    attn.to_k.register_parameter("bias", None)
    return attn


class _Residual(nn.Module):
    """One sub-layer's residual wrapper, pre-norm (x + f(norm(x))) or post-norm (norm(x + f(x)))."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool, norm_eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout = FastDropout(dropout)
        self.norm_first = norm_first

    def inputs(self, tokens: Tensor) -> Tensor:
        return self.norm(tokens) if self.norm_first else tokens

    def add(self, tokens: Tensor, update: Tensor) -> Tensor:
        p = self.dropout.p
        if self.training and 0.0 < p < 1.0:  # tokens + dropout(update), in one pass
            out = torch.addcmul(tokens, update, dropout_mask(update, p))
        else:
            out = tokens + self.dropout(update)
        return out if self.norm_first else self.norm(out)


class TransformerEncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with a residual connection.

    Args:
        d_model: feature size.
        heads: attention heads (``d_model`` must be divisible by ``heads``).
        dim_ff: hidden size of the feed-forward block.
        dropout: dropout on attention probabilities, sub-layer outputs and the FFN hidden layer.
        norm_first: True for pre-norm (LayerNorm before each sub-layer), False for post-norm.
        norm_eps: LayerNorm epsilon.
        backend: pin a `cross_attention` backend (None: dispatch).
    """

    def __init__(
        self,
        d_model: int,
        *,
        heads: int = 4,
        dim_ff: int = 1024,
        dropout: float = 0.0,
        norm_first: bool = True,
        norm_eps: float = 1e-5,
        backend: str | None = None,
    ):
        super().__init__()
        d_model, heads, dim_ff, dropout = _check_dims(d_model, heads, dim_ff, dropout)
        self.d_model = d_model
        self.self_attn = _self_attention(d_model, heads, dropout, backend)
        self.ffn = FeedForward(d_model, dim_ff, activation=nn.ReLU, dropout=dropout)
        self.attn_block = _Residual(d_model, dropout, norm_first, norm_eps)
        self.ffn_block = _Residual(d_model, dropout, norm_first, norm_eps)

    def forward(self, tokens: Tensor, *, token_mask: Tensor | None = None) -> Tensor:
        """Encode.

        Args:
            tokens: (B, S, d_model).
            token_mask: (B, S) bool, True = valid token (padded keys are never attended to).

        Returns:
            (B, S, d_model); S = 0 gives an empty output.

        `tokens` must have the dtype and device of the layer's parameters.
        """
        check_features(
            "tokens", tokens, self.d_model, "(B, S, d_model)", like=self.self_attn.to_q.weight
        )
        b, s, _ = tokens.shape
        _checks.token_mask("token_mask", token_mask, (b, s), "(B, S)")
        if s == 0:  # no token: nothing to attend from or to
            return tokens.new_zeros(b, 0, self.d_model)
        h = self.attn_block.inputs(tokens)
        tokens = self.attn_block.add(tokens, self.self_attn(h, h, context_mask=token_mask))
        return self.ffn_block.add(tokens, self.ffn(self.ffn_block.inputs(tokens)))


class DecoderLayerOutput(NamedTuple):
    """What `TransformerDecoderLayer.forward` returns.

    Attributes:
        tokens: (B, T, d_model), the layer's output.
        cache: the decoder self-attention keys and values of every position so far (a
            `PreparedContext` of S = past + T), or None when no cache was asked for.
        cross_weights: cross-attention weights (B, heads, T, S) (or their head mean (B, T, S)),
            or None when not asked for.
    """

    tokens: Tensor
    cache: PreparedContext | None
    cross_weights: Tensor | None


class TransformerDecoderLayer(nn.Module):
    """Causal self-attention, then cross-attention to the source, then feed-forward.

    Args:
        d_model: feature size of the target tokens.
        context_dim: feature size of the source (encoder output); defaults to ``d_model``.
        heads: attention heads of both attentions.
        dim_ff: hidden size of the feed-forward block.
        dropout: dropout on attention probabilities, sub-layer outputs and the FFN hidden layer.
        norm_first: True for pre-norm, False for post-norm.
        norm_eps: LayerNorm epsilon.
        backend: pin a `cross_attention` backend (None: dispatch).
    """

    def __init__(
        self,
        d_model: int,
        context_dim: int | None = None,
        *,
        heads: int = 4,
        dim_ff: int = 1024,
        dropout: float = 0.0,
        norm_first: bool = True,
        norm_eps: float = 1e-5,
        backend: str | None = None,
    ):
        super().__init__()
        d_model, heads, dim_ff, dropout = _check_dims(d_model, heads, dim_ff, dropout)
        if context_dim is not None:
            context_dim = _checks.positive_int(context_dim, "context_dim")
        self.d_model = d_model
        self.self_attn = _self_attention(d_model, heads, dropout, backend)
        self.cross_attn_target_to_source = _drop_key_bias(CrossAttention(
            d_model, context_dim, heads=heads, dim_head=d_model // heads, bias=True, dropout=dropout,
            backend=backend,
        ))  # fmt: skip
        self.ffn = FeedForward(d_model, dim_ff, activation=nn.ReLU, dropout=dropout)
        self.self_block = _Residual(d_model, dropout, norm_first, norm_eps)
        self.cross_block = _Residual(d_model, dropout, norm_first, norm_eps)
        self.ffn_block = _Residual(d_model, dropout, norm_first, norm_eps)

    def prepare_context(self, source: Tensor, source_mask: Tensor | None = None) -> PreparedContext:
        """Project the source to this layer's cross-attention keys and values, once per input.

        Args:
            source: (B, S, context_dim), the encoder output.
            source_mask: (B, S) bool, True = valid source token.
        """
        return self.cross_attn_target_to_source.prepare_context(source, context_mask=source_mask)

    def forward(
        self,
        tokens: Tensor,
        source: Tensor | PreparedContext,
        *,
        source_mask: Tensor | None = None,
        cache: PreparedContext | None = None,
        use_cache: bool = False,
        return_weights: WeightsArg = False,
    ) -> DecoderLayerOutput:
        """Decode the target positions ``past .. past + T - 1``.

        Args:
            tokens: (B, T, d_model), the new target positions (all of them in training, one per
                step in incremental decoding).
            source: (B, S, context_dim) encoder output, or the `PreparedContext` made by
                `prepare_context` (nothing is projected again).
            source_mask: (B, S) bool, True = valid source token; only with a raw source tensor.
            cache: self-attention keys and values of the ``past`` earlier positions, as returned
                by the previous call (`DecoderLayerOutput.cache`), or None when past = 0.
            use_cache: return the cache extended by the new positions.
            return_weights: False; True for cross-attention weights (B, heads, T, S); "mean" for
                their head mean (B, T, S).

        Returns:
            `DecoderLayerOutput` (tokens (B, T, d_model), cache, cross_weights). T = 0 gives
            empty tokens and weights (the cache, if asked for, is the one passed in, or an empty
            one).

        The source needs at least one token (S > 0); tokens and source must have the dtype and
        device of the layer's parameters.
        """
        attn, cross = self.self_attn, self.cross_attn_target_to_source
        check_features("tokens", tokens, self.d_model, "(B, T, d_model)", like=attn.to_q.weight)
        b, t, _ = tokens.shape
        # the one check of the source; the attentions below trust it (``_checked=True``)
        source = cross.context_for(source, context_mask=source_mask, batch=b, names=_SOURCE)
        if cache is not None and not isinstance(cache, PreparedContext):
            raise TypeError(
                "cache must be the PreparedContext this layer returned as DecoderLayerOutput.cache "
                f"(call it with use_cache=True), or None for the first step; got "
                f"{type(cache).__name__}"
            )
        if cache is not None and cache.layer_id != id(attn):
            raise ValueError("cache was made by another layer; pass this layer's own cache")
        if cache is not None and cache.batch_size != b:
            raise ValueError(
                f"cache has B={cache.batch_size} rows but tokens have B={b}; reorder it with "
                "cache.index_select(rows)"
            )
        # --- causal self-attention over the cached positions and the new ones ---
        h = self.self_block.inputs(tokens)
        new = attn._project_context(h, None, None)  # the new positions' keys/values: (B, H, T, D)
        if cache is not None:
            new = PreparedContext(
                key=torch.cat([cache.key, new.key], dim=2),  # (B, H, past + T, D)
                value=torch.cat([cache.value, new.value], dim=2),
                key_mask=None,
                layer_id=id(attn),
            )
        total = new.length
        if t > 0:  # T = 0 new positions (an empty output): nothing attends, nothing to add
            # A single new position may see everything before it: no mask needed.
            mask = None if t == 1 else causal_mask(t, total, device=tokens.device)[None, None]
            tokens = self.self_block.add(tokens, attn(h, new, attn_mask=mask, _checked=True))
        # --- cross-attention from the target to the source ---
        h = self.cross_block.inputs(tokens)
        res = cross(h, source, return_weights=return_weights, _checked=True)
        update, weights = res if return_weights else (res, None)
        tokens = self.cross_block.add(tokens, update)
        # --- feed-forward ---
        tokens = self.ffn_block.add(tokens, self.ffn(self.ffn_block.inputs(tokens)))
        return DecoderLayerOutput(tokens, new if use_cache else None, weights)
