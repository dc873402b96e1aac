"""`CrossAttention`: projections around the one functional op, and `PreparedContext`.

Shapes: queries (B, L, query_dim), context (B, S, context_dim), values (B, S, value_dim),
context_mask (B, S) bool with True = valid token. Inside: q (B, heads, L, dim_head),
k and v (B, kv_heads, S, dim_head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from ..functional import cross_attention
from ..masks import combine_masks, zero_padding
from ._common import check_features, check_mask, check_nonempty, check_positive
from .hooks import AttentionCall, layer_call


@dataclass(frozen=True)
class PreparedContext:
    """A context projected to keys and values once, by one `CrossAttention` layer.

    Pass it to that layer in place of the context: the output is exactly the same, and nothing
    is projected again. Decoding steps, beams and diffusion timesteps reuse it.

    Attributes:
        key: (B, kv_heads, S, dim_head), contiguous.
        value: (B, kv_heads, S, dim_head), contiguous.
        key_mask: (B, S) bool, True = valid context token; or None.
        layer_id: identity of the layer that made it (it is refused by any other layer).
        padding_zeroed: True when keys and values are 0 wherever ``key_mask`` is False (as
            `prepare_context` leaves them): the layer then does not zero them again at every
            call, which would cost a decoding step about as much as the attention itself.
    """

    key: Tensor
    value: Tensor
    key_mask: Tensor | None
    layer_id: int
    padding_zeroed: bool = False

    @property
    def batch_size(self) -> int:
        return self.key.shape[0]

    @property
    def length(self) -> int:
        return self.key.shape[2]

    def index_select(self, index: Tensor) -> PreparedContext:
        """Rows `index` (N,) of the batch, e.g. the source row of each beam; stored contiguous.

        `index` holds integer row numbers in [0, B); a boolean row mask is refused (select its
        rows with ``mask.nonzero().squeeze(1)``).
        """
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(
                f"index must hold integer row numbers, got dtype {index.dtype}; for a bool row "
                "mask pass mask.nonzero().squeeze(1)"
            )
        if index.dim() != 1:
            raise ValueError(f"index must be 1-D (N,), got shape {tuple(index.shape)}")
        b = self.batch_size
        # Checked where the index is on the CPU (a list, or a CPU tensor), where it costs
        # nothing; an index already on an accelerator is not read back (index_select asserts its
        # range there), so beam steps never wait for the device.
        if index.device.type == "cpu" and index.numel():
            low, high = (int(x) for x in torch.aminmax(index))
            if low < 0 or high >= b:
                raise ValueError(
                    f"index holds rows {low}..{high}, but this context has B={b} rows (0..{b - 1})"
                )
        index = index.to(device=self.key.device, dtype=torch.long)
        return replace(
            self,
            key=self.key.index_select(0, index),  # (N, Hk, S, D)
            value=self.value.index_select(0, index),
            key_mask=None if self.key_mask is None else self.key_mask.index_select(0, index),
        )

    def repeat_interleave(self, repeats: int) -> PreparedContext:
        """Repeat each batch row `repeats` times in place: (B, ...) -> (B * repeats, ...)."""
        repeats = _checks.nonnegative_int(repeats, "repeats")
        index = torch.arange(self.batch_size, device=self.key.device).repeat_interleave(repeats)
        return self.index_select(index)


class ArgNames(NamedTuple):
    """What the errors of `CrossAttention.context_for` call a caller's arguments."""

    queries: str
    context: str
    mask: str
    legend: str  # the context's shape, as the errors show it


LAYER_NAMES = ArgNames("queries", "context", "context_mask", "(B, S, context_dim)")

QKNorm = Literal["layer_norm", "rms_norm"] | None
WeightsArg = bool | Literal["mean"]


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from one sequence, keys and values from another.

    Args:
        query_dim: feature size of the queries.
        context_dim: feature size of the context (keys); defaults to `query_dim`.
        value_dim: feature size of a separate value sequence; defaults to `context_dim`.
        heads: query heads.
        dim_head: size of each head.
        kv_heads: key/value heads (grouped-query attention); `heads` must be a multiple.
            Defaults to `heads`.
        out_dim: output feature size; defaults to `query_dim`.
        bias: biases on the q, k and v projections.
        out_bias: bias on the output projection.
        dropout: dropout on the attention probabilities, in training mode.
        qk_norm: None, "layer_norm" or "rms_norm": normalise queries and keys per head.
        norm_eps: epsilon of the q/k normalisation.
        backend: pin a backend of `crossattn.cross_attention` for this layer (None: dispatch).

    Attributes:
        role: "cross" (the default) or "self". A model that uses this layer as self-attention
            (queries and context from one sequence) sets ``layer.role = "self"``;
            `crossattn.capture.AttentionRecorder` then leaves it out unless it is named in
            ``layers=``.
    """

    role: str = "cross"

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        value_dim: int | None = None,
        *,
        heads: int = 8,
        dim_head: int = 64,
        kv_heads: int | None = None,
        out_dim: int | None = None,
        bias: bool = False,
        out_bias: bool = True,
        dropout: float = 0.0,
        qk_norm: QKNorm = None,
        norm_eps: float = 1e-5,
        backend: str | None = None,
    ):
        super().__init__()
        context_dim = query_dim if context_dim is None else context_dim
        value_dim = context_dim if value_dim is None else value_dim
        kv_heads = heads if kv_heads is None else kv_heads
        query_dim, context_dim, value_dim, heads, dim_head, kv_heads, out_dim = check_positive(
            query_dim=query_dim, context_dim=context_dim, value_dim=value_dim, heads=heads,
            dim_head=dim_head, kv_heads=kv_heads, out_dim=query_dim if out_dim is None else out_dim,
        )  # fmt: skip
        if heads % kv_heads != 0:
            raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
        if qk_norm not in (None, "layer_norm", "rms_norm"):
            raise ValueError(f"qk_norm must be None, 'layer_norm' or 'rms_norm', got {qk_norm!r}")
        dropout = _checks.probability(dropout, "dropout")
        norm_eps = _checks.positive_real(norm_eps, "norm_eps")
        if backend is not None and not isinstance(backend, str):
            # the name itself is resolved at call time: backends may be registered later
            raise TypeError(f"backend must be a backend name or None, got {backend!r}")
        self.query_dim, self.context_dim, self.value_dim = query_dim, context_dim, value_dim
        self.heads, self.kv_heads, self.dim_head = heads, kv_heads, dim_head
        self.out_dim = out_dim
        self.dropout = dropout
        self.backend = backend
        self.qk_norm = qk_norm
        self.to_q = nn.Linear(query_dim, heads * dim_head, bias=bias)
        self.to_k = nn.Linear(context_dim, kv_heads * dim_head, bias=bias)
        self.to_v = nn.Linear(value_dim, kv_heads * dim_head, bias=bias)
        self.to_out = nn.Linear(heads * dim_head, self.out_dim, bias=out_bias)
        if qk_norm == "layer_norm":
            self.q_norm: nn.Module = nn.LayerNorm(dim_head, eps=norm_eps)
            self.k_norm: nn.Module = nn.LayerNorm(dim_head, eps=norm_eps)
        elif qk_norm == "rms_norm":
            self.q_norm = nn.RMSNorm(dim_head, eps=norm_eps)
            self.k_norm = nn.RMSNorm(dim_head, eps=norm_eps)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, context_dim={self.context_dim}, "
            f"value_dim={self.value_dim}, heads={self.heads}, kv_heads={self.kv_heads}, "
            f"dim_head={self.dim_head}, out_dim={self.out_dim}"
        )

    def prepare_context(
        self, context: Tensor, values: Tensor | None = None, context_mask: Tensor | None = None
    ) -> PreparedContext:
        """Project keys (and values) once.

        Args:
            context: (B, S, context_dim).
            values: (B, S, value_dim), or None to take the values from the context.
            context_mask: (B, S) bool, True = valid token; carried with the result.
        """
        self._check_context(context, values, context_mask, LAYER_NAMES)
        return self._project_context(context, values, context_mask)

    def _check_context(
        self, context: object, values: object, context_mask: object, names: ArgNames
    ) -> None:
        """The checks of `prepare_context`, the errors naming the caller's arguments."""
        check_features(
            names.context, context, self.context_dim, names.legend, like=self.to_k.weight
        )
        if values is None:
            if self.value_dim != self.context_dim:
                raise ValueError(
                    f"values=None takes the values from the {names.context}, but this layer has "
                    f"value_dim={self.value_dim} != context_dim={self.context_dim}; pass values "
                    f"(B, S, {self.value_dim})"
                )
        else:
            check_features(
                "values", values, self.value_dim, "(B, S, value_dim)", like=self.to_v.weight
            )
            if values.shape[:2] != context.shape[:2]:
                raise ValueError(
                    f"values (B, S) must match the {names.context}'s: {names.context} "
                    f"{tuple(context.shape)}, values {tuple(values.shape)}"
                )
        check_mask(
            names.mask, context_mask, tuple(context.shape[:2]), "(B, S)", like=context,
            like_name=f"the {names.context} is",
        )  # fmt: skip

    def _project_context(
        self, context: Tensor, values: Tensor | None, context_mask: Tensor | None
    ) -> PreparedContext:
        """`prepare_context` for arguments its caller has checked (`_check_context`); the one
        place a subclass changes how a context is stored (int8 storage)."""
        values = context if values is None else values
        key, value = self._keys(context), self._values(values)  # (B, Hk, S, D) each
        if context_mask is not None:
            # Zeroed once here, so that NaN padding cannot leak (see `_op_masks`).
            key, value = zero_padding(key, context_mask), zero_padding(value, context_mask)
        return PreparedContext(
            key=key,
            value=value,
            key_mask=context_mask,
            layer_id=id(self),
            padding_zeroed=context_mask is not None,
        )

    @property
    def scale(self) -> float:
        """The score scale, 1 / sqrt(dim_head)."""
        return 1.0 / math.sqrt(self.dim_head)

    def project_queries(self, queries: Tensor) -> Tensor:
        """Queries (B, L, query_dim) -> (B, heads, L, dim_head), normalised by ``q_norm``: what
        `forward` attends from. Checked as `forward` checks them."""
        check_features(
            "queries", queries, self.query_dim, "(B, L, query_dim)", like=self.to_q.weight
        )
        return self._queries(queries)

    def _queries(self, queries: Tensor) -> Tensor:
        """`project_queries` for queries its caller has checked."""
        return self.q_norm(self._heads(self.to_q(queries), self.heads))  # (B, H, L, D)

    def project_keys(self, context: Tensor) -> Tensor:
        """Context (B, S, context_dim) -> keys (B, kv_heads, S, dim_head), normalised by
        ``k_norm``, contiguous: the keys of `prepare_context`, without the zeroed padding."""
        check_features(
            "context", context, self.context_dim, "(B, S, context_dim)", like=self.to_k.weight
        )
        return self._keys(context)

    def _keys(self, context: Tensor) -> Tensor:
        """`project_keys` for a context its caller has checked."""
        return self.k_norm(self._heads(self.to_k(context), self.kv_heads)).contiguous()

    def project_values(self, values: Tensor) -> Tensor:
        """Values (B, S, value_dim) -> (B, kv_heads, S, dim_head), contiguous: the values of
        `prepare_context`, without the zeroed padding."""
        check_features("values", values, self.value_dim, "(B, S, value_dim)", like=self.to_v.weight)
        return self._values(values)

    def _values(self, values: Tensor) -> Tensor:
        """`project_values` for values their caller has checked."""
        return self._heads(self.to_v(values), self.kv_heads).contiguous()

    def _heads(self, projected: Tensor, heads: int) -> Tensor:
        """(B, N, heads * dim_head) -> (B, heads, N, dim_head)."""
        b, n, _ = projected.shape
        return projected.view(b, n, heads, self.dim_head).transpose(1, 2)

    def context_for(
        self,
        context: Tensor | PreparedContext,
        values: Tensor | None = None,
        context_mask: Tensor | None = None,
        *,
        batch: int,
        need_tokens: bool = True,
        names: ArgNames = LAYER_NAMES,
    ) -> PreparedContext:
        """The `PreparedContext` a call attends to: `context` projected now (a tensor), or
        `context` itself once checked (a `PreparedContext`, which must come from this layer).

        The one check of a call's context: a layer that owns this one calls it at its own
        boundary (naming its own arguments through `names`), then calls the layer with
        ``_checked=True``.

        Args:
            context: (B, S, context_dim), or a `PreparedContext` made by this layer.
            values: (B, S, value_dim) or None; not with a PreparedContext.
            context_mask: (B, S) bool, True = valid token; not with a PreparedContext.
            batch: B of the queries, which the context must match.
            need_tokens: refuse S = 0 (ValueError): the queries need something to attend to.
            names: what the errors call the queries, the context and its mask.
        """
        if isinstance(context, PreparedContext):
            if context.layer_id != id(self):
                raise ValueError(
                    "this PreparedContext was made by another layer; call prepare_context on "
                    "the layer that uses it"
                )
            if context_mask is not None:
                raise ValueError(
                    f"{names.mask} was given with a PreparedContext, which carries its own "
                    f"mask; pass it to prepare_context({names.context}, {names.mask}=...) instead"
                )
            if values is not None:
                raise ValueError("values were given with a PreparedContext, which holds them")
            prepared, shape = context, context.key.shape
            what = " (a PreparedContext: keys (B, heads, S, dim_head))"
            hint = "prepare it from", f"prepare_context's {names.mask}"
        else:
            self._check_context(context, values, context_mask, names)  # in the caller's words
            prepared = self._project_context(context, values, context_mask)
            shape, what, hint = context.shape, "", ("pass", names.mask)
        if prepared.batch_size != batch:
            raise ValueError(
                f"{names.queries} have B={batch} but the {names.context} has "
                f"B={prepared.batch_size}; use PreparedContext.index_select to pick "
                f"{names.context} rows"
            )
        if need_tokens:
            check_nonempty(
                names.context, prepared.length, shape, f"S=0 tokens{what}",
                f"{hint[0]} at least one {names.context} token per row (keep padding tokens "
                f"and mark them False in {hint[1]})",
            )  # fmt: skip
        return prepared

    def forward(
        self,
        queries: Tensor,
        context: Tensor | PreparedContext,
        values: Tensor | None = None,
        *,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        return_weights: WeightsArg = False,
        _checked: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from `queries` to `context`.

        Args:
            queries: (B, L, query_dim).
            context: (B, S, context_dim), or a `PreparedContext` made by this layer.
            values: (B, S, value_dim), or None to take the values from the context.
            context_mask: (B, S) bool, True = valid context token. Not with a PreparedContext,
                which carries its own.
            attn_mask: bool (True = may attend) or additive float, (L, S), (B, L, S) for all
                heads, or (B, heads, L, S).
            return_weights: False; True for (B, heads, L, S); "mean" for the head mean (B, L, S).
            _checked: for a layer that owns this one and has checked the call at its own
                boundary: its queries as `project_queries` checks them, its context a
                `PreparedContext` from `context_for`, its attn_mask None or 4-D
                (B|1, heads|1, L, S). Nothing is checked again (decoding steps).

        Returns:
            (B, L, out_dim), or ``(out, weights)`` when weights are asked for.
        """
        if _checked:  # the caller checked everything (see above)
            q = self._queries(queries)  # (B, H, L, D)
            b, length = q.shape[0], q.shape[2]
            prepared, mask = context, attn_mask
        else:
            q = self.project_queries(queries)  # (B, H, L, D)
            b, length = q.shape[0], q.shape[2]
            prepared = self.context_for(
                context, values, context_mask, batch=b, need_tokens=length > 0
            )
            mask = _layer_attn_mask(attn_mask, b, self.heads, length, prepared.length)
        recording = layer_call(self)  # None unless a recorder wants this call's maps
        asked = return_weights if recording is None else recording.ask(return_weights)
        op_attn_mask, op_key_mask = _op_masks(mask, prepared)
        res = cross_attention(
            q,
            prepared.key,
            prepared.value,
            attn_mask=op_attn_mask,
            key_mask=op_key_mask,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
            return_weights=asked,
        )
        out, weights = res if asked else (res, None)
        if recording is not None:
            call = AttentionCall(
                self, q, prepared.key, self.scale, mask, prepared.key_mask, weights
            )
            weights = recording.hand_over(call, return_weights)
        out = out.transpose(1, 2).reshape(b, length, self.heads * self.dim_head)  # (B, L, H*D)
        out = self.to_out(out)  # (B, L, out_dim)
        return (out, weights) if return_weights else out

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> CrossAttention:
        """Build the equivalent layer from a `torch.nn.MultiheadAttention`.

        Both parameter layouts (packed ``in_proj_weight``, and separate q/k/v weights when
        kdim/vdim differ) are handled. The new layer is batch-first whatever ``mha.batch_first``
        was: feed it (B, L, D). torch's ``key_padding_mask`` uses True for "ignore"; pass
        ``context_mask=~key_padding_mask`` (or `crossattn.masks.from_key_padding_mask`).
        Head-mean weights (``return_weights="mean"``) match MHA's averaged weights. The new
        layer is on ``mha``'s device, in its dtype and in its train/eval mode.
        """
        from ..integrations.torch_mha import crossattention_from_torch

        return crossattention_from_torch(mha)

    @classmethod
    def from_diffusers(cls, attn: nn.Module) -> CrossAttention:
        """Build the equivalent layer from a ``diffusers.models.attention_processor.Attention``.

        Carried over: query_dim, cross_attention_dim, heads, dim_head (``out_dim`` included),
        kv_heads, out_dim, the q/k/v bias and the output bias, and the per-head q/k norm
        (``qk_norm`` "layer_norm", "fp32_layer_norm" or "rms_norm", with its eps and affine
        weights; a norm without weights gets ones and zeros). The new layer has the module's
        device, dtype and train/eval mode. Call it as
        ``layer(hidden_states, encoder_hidden_states)``, or
        ``layer(hidden_states, hidden_states)`` for a self-attention. diffusers' additive
        ``attention_mask`` (B, 1, S) of 0 / -10000 becomes ``context_mask=(mask == 0)[:, 0]``.

        Not carried over: diffusers' dropout acts on the output (``to_out[1]``), this layer's
        on the probabilities, so the new layer has ``dropout=0``. Modules with a group norm,
        spatial norm, cross-attention norm, added key/value projections, a residual
        connection, an output rescale, ``scale_qk=False`` or a norm across heads raise
        ValueError: run those with `crossattn.integrations.diffusers.CrossAttnProcessor`.
        """
        from ..integrations.diffusers import crossattention_from_diffusers

        return crossattention_from_diffusers(attn)

    @classmethod
    def from_transformers(cls, module: nn.Module) -> CrossAttention:
        """Build the equivalent layer from a Hugging Face BERT cross-attention.

        ``module`` is the ``BertAttention`` at ``model.encoder.layer[i].crossattention`` of a
        decoder built with ``BertConfig(is_decoder=True, add_cross_attention=True)``: the new
        layer computes its attention (``crossattention.self``) followed by its output
        projection (``crossattention.output.dense``). The residual add, dropout and LayerNorm
        that BERT applies after that projection (``BertSelfOutput``) belong to the surrounding
        block and are not part of this layer. The bare ``crossattention.self`` is accepted too;
        its layer has an identity output projection. BERT's attention-probability dropout
        carries over, and so do the device, dtype and train/eval mode. BERT's
        ``encoder_attention_mask`` (B, S) of 1 = keep, 0 = padding becomes
        ``context_mask=encoder_attention_mask.bool()``. Only ``position_embedding_type``
        "absolute" converts.
        """
        from ..integrations.transformers import crossattention_from_transformers

        return crossattention_from_transformers(module)


def _op_masks(
    attn_mask: Tensor | None, prepared: PreparedContext
) -> tuple[Tensor | None, Tensor | None]:
    """The op's ``(attn_mask, key_mask)``. Where the prepared keys and values are already 0 at
    the padding, the key mask joins the attention mask instead: the op gives the same result
    (the same combined mask, the same rows opened and zeroed) without zeroing them again."""
    key_mask = prepared.key_mask
    mergeable = attn_mask is None or attn_mask.dtype == torch.bool or attn_mask.is_floating_point()
    if key_mask is None or not prepared.padding_zeroed or not mergeable:
        return attn_mask, key_mask
    return combine_masks(attn_mask, key_mask), None  # (B|1, 1|H, 1|L, S)


def _layer_attn_mask(
    attn_mask: Tensor | None, b: int, heads: int, length: int, s: int
) -> Tensor | None:
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dim() == 2:
        expected = (length, s)
        mask = attn_mask[None, None]
    elif attn_mask.dim() == 3:
        expected = (b, length, s)
        mask = attn_mask.unsqueeze(1)
    elif attn_mask.dim() == 4:
        expected = (b, heads, length, s)
        mask = attn_mask
    else:
        raise ValueError(
            f"attn_mask must be (L, S), (B, L, S) or (B, heads, L, S) = ({b}, {heads}, {length}, "
            f"{s}), got shape {tuple(attn_mask.shape)}"
        )
    if tuple(attn_mask.shape) != expected:
        raise ValueError(
            f"attn_mask of {attn_mask.dim()} dims must have shape {expected}, got "
            f"{tuple(attn_mask.shape)}"
        )
    return mask
