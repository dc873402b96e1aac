"""`cross_attention`: validation, mask normalisation and dispatch to a backend.

Shape legend: B batch, H query heads, Hk key/value heads (H divisible by Hk), L query (target)
length, S key/value (source, context) length, E query/key head dim, Ev value head dim.

Mask convention, everywhere in crossattn: boolean True means "may attend".
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Literal, TypedDict, overload

import torch
from torch import Tensor

from . import _checks
from .backends import AttentionInputs, select_backend
from .masks import combine_masks, zero_padding

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

WeightsArg = bool | Literal["mean"]


class _Options(TypedDict, total=False):
    """The keyword arguments of `cross_attention` besides ``return_weights``."""

    attn_mask: Tensor | None
    key_mask: Tensor | None
    scale: float | None
    dropout_p: float
    backend: str | None


@overload
def cross_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    return_weights: Literal[False] = ...,
    **options: Unpack[_Options],
) -> Tensor: ...


@overload
def cross_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    return_weights: Literal[True, "mean"],
    **options: Unpack[_Options],
) -> tuple[Tensor, Tensor]: ...


def cross_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
    return_weights: WeightsArg = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention of queries over a separate key/value sequence.

    Args:
        query: (B, H, L, E).
        key: (B, Hk, S, E). H must be divisible by Hk; query head h uses K/V head h // (H / Hk).
        value: (B, Hk, S, Ev). Ev may differ from E. Query, key and value share one dtype
            (under autocast they may differ: every one but float64 is cast to the autocast
            dtype).
        attn_mask: boolean (True = may attend) or additive float mask, broadcastable to
            (B, H, L, S). A float mask holds no NaN or +inf and has the query's dtype; under
            autocast it may have any float dtype and is converted to the compute dtype.
            It blocks attention, not values: a NaN or Inf in a key or value that only
            ``attn_mask`` blocks still reaches the output (0 x NaN); mark padding with
            ``key_mask``.
        key_mask: boolean (B, S), True marks the valid context tokens. Keys and values at
            padded positions never reach the output, even when they hold NaN.
        scale: multiplier of the scores; defaults to 1 / sqrt(E).
        dropout_p: dropout probability on the attention probabilities (apply it in training
            only). Returned weights are the probabilities before dropout.
        backend: pin a backend by name (see `available_backends()`); None dispatches to the
            fastest backend that supports the call.
        return_weights: False; True for weights (B, H, L, S); "mean" for the head mean (B, L, S).

    Returns:
        out (B, H, L, Ev), or ``(out, weights)`` when weights are asked for, in the compute
        dtype whatever the backend and whatever ``return_weights`` asks: the query's dtype
        outside autocast; inside ``torch.autocast`` the autocast dtype (float64 inputs stay
        float64), as SDPA and ``nn.Linear`` give. The backend then runs with autocast off on
        inputs already in that dtype, so each keeps its own precision rules.
        A query row with no key it may attend to gets output 0 and weights 0, never NaN.
        A query row holding NaN or Inf that may attend to a key gets NaN output (and NaN
        weights), as the plain math does, on every backend.

    The call path reads shapes and dtypes only, never values: it traces (``torch.jit.trace``),
    compiles (``torch.compile(fullgraph=True)``) and exports (``torch.export``, ONNX) as one
    graph, and never waits for an accelerator.
    """
    compute = _compute_dtype(query, key, value)
    query, key, value = (t if t.dtype == compute else t.to(compute) for t in (query, key, value))
    b, h, length, e = query.shape
    s = key.shape[2]
    if not (isinstance(return_weights, bool) or _is_mean(return_weights)):
        raise ValueError(f"return_weights must be False, True or 'mean', got {return_weights!r}")
    dropout_p = _checks.probability(dropout_p, "dropout_p")
    scale = 1.0 / math.sqrt(e) if scale is None else _checks.finite_real(scale, "scale")

    key_mask = _check_key_mask(key_mask, query, b, s)
    attn_mask = _check_attn_mask(attn_mask, query, (b, h, length, s))
    mask = combine_masks(attn_mask, key_mask)

    # Everything below is tensor arithmetic whatever the mask holds: no value is read back to
    # the host, so the call traces, compiles and exports as one graph (and never waits for a
    # device).
    if key_mask is not None:
        # Zero padded keys and values so that NaN or Inf padding cannot leak through 0 * NaN.
        key, value = zero_padding(key, key_mask), zero_padding(value, key_mask)

    # Rows with no allowed key: open them up for the backend, zero them afterwards.
    row_ok = None
    if mask is not None:
        row_ok = _rows_with_a_key(mask)  # (B|1, H|1, L|1, 1)
        mask = mask | ~row_ok if mask.dtype == torch.bool else mask.masked_fill(~row_ok, 0.0)

    backend_weights = return_weights
    if return_weights == "mean" and row_ok is not None and row_ok.shape[1] > 1:
        backend_weights = True  # head-dependent empty rows: zero per head, then average
    inputs = AttentionInputs(
        query=query,
        key=key,
        value=value,
        mask=mask,
        scale=scale,
        dropout_p=dropout_p,
        return_weights=backend_weights,
    )
    chosen = select_backend(inputs, backend)  # a pinned backend is checked even when empty
    with _autocast_off(query):  # inputs are in the compute dtype: backends keep their precision
        if b == 0 or length == 0:
            out, weights = _empty_result(inputs)
        else:
            out, weights = chosen.forward(inputs)

    if row_ok is not None:
        # torch.where: one pass, where masked_fill copies first (a mask broadcast over the
        # last dimension is slow in both; this is the cheaper).
        out = torch.where(row_ok, out, 0.0)
        if weights is not None:
            weights = torch.where(row_ok if weights.dim() == 4 else row_ok[:, 0], weights, 0.0)
    if return_weights == "mean" and backend_weights is True:
        weights = weights.mean(dim=1)  # (B, L, S)
    if return_weights:
        return out, weights
    return out


def _autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The dtype autocast computes in on `t`'s device, or None where autocast is off."""
    device = t.device.type
    if device == "meta" or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _compute_dtype(query: Tensor, key: Tensor, value: Tensor) -> torch.dtype:
    """The dtype the call computes in, after checking the inputs (see `_check_qkv`).

    Outside autocast: the query's, which key and value must share. Under autocast: the autocast
    dtype (as SDPA and nn.Linear), for every float input but float64, which autocast leaves
    alone; q, k and v may then come in different dtypes if they agree after the cast.
    """
    _check_qkv(query, key, value)
    autocast = _autocast_dtype(query)
    dtypes = [t.dtype for t in (query, key, value)]
    if autocast is not None:
        dtypes = [d if d == torch.float64 else autocast for d in dtypes]
    if len(set(dtypes)) != 1:
        raise TypeError(
            f"query, key and value must share one dtype, got {query.dtype}, {key.dtype}, "
            f"{value.dtype}; cast them, e.g. key.to(query.dtype)"
        )
    return dtypes[0]


def _autocast_off(query: Tensor):
    """A block where autocast is off on the query's device (a no-op where it already is)."""
    if _autocast_dtype(query) is None:
        return contextlib.nullcontext()
    return torch.autocast(query.device.type, enabled=False)


def _empty_result(inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
    """An empty batch (B = 0) or no queries (L = 0): empty results that stay in the graph."""
    q, k, v = inputs.query, inputs.key, inputs.value
    b, h, length, _ = q.shape
    # Joins the autograd graph so that every input gets a (zero) gradient; the results are
    # empty, so a NaN in key or value cannot show.
    link = (q.sum() + k.sum() + v.sum()) * 0
    out = q.new_zeros(b, h, length, v.shape[-1]) + link  # (B, H, L, Ev), empty
    weights = None
    if inputs.return_weights:
        shape = (
            (b, h, length, k.shape[2]) if inputs.return_weights is True else (b, length, k.shape[2])
        )
        weights = q.new_zeros(shape) + link
    return out, weights


def _is_mean(return_weights: object) -> bool:
    return isinstance(return_weights, str) and return_weights == "mean"


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    expected = {"query": "(B, H, L, E)", "key": "(B, Hk, S, E)", "value": "(B, Hk, S, Ev)"}
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D {expected[name]}, got shape {_checks.shape_text(t.shape)}; "
                "add the batch and head dimensions (e.g. t[None, None] or t.unsqueeze(1))"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, "
            f"{value.device}"
        )
    b, h, _, e = query.shape
    if h == 0:
        raise ValueError(
            f"query has H=0 heads (shape {_checks.shape_text(query.shape)}): give it at least one head"
        )
    if e == 0:
        raise ValueError(
            f"query has head dim E=0 (shape {_checks.shape_text(query.shape)}): queries and keys need features "
            "to score each other"
        )
    if key.shape[0] != b or value.shape[0] != b:
        raise ValueError(
            f"batch sizes differ: query {_checks.shape_text(query.shape)}, key {_checks.shape_text(key.shape)}, value {_checks.shape_text(value.shape)}; "
            "all three need the same B in dimension 0"
        )
    if key.shape[-1] != e:
        raise ValueError(
            f"key head dim must equal the query's: query {_checks.shape_text(query.shape)} has E={e}, key "
            f"{_checks.shape_text(key.shape)} has {key.shape[-1]}; expected key (B, Hk, S, {e})"
        )
    if key.shape[2] != value.shape[2]:
        raise ValueError(
            f"key and value lengths differ: key {_checks.shape_text(key.shape)} has S={key.shape[2]}, value "
            f"{_checks.shape_text(value.shape)} has {value.shape[2]}; expected value (B, Hk, {key.shape[2]}, Ev)"
        )
    if key.shape[1] != value.shape[1]:
        raise ValueError(
            f"key and value head counts differ: key {_checks.shape_text(key.shape)} has Hk={key.shape[1]}, value "
            f"{_checks.shape_text(value.shape)} has {value.shape[1]}"
        )
    hk = key.shape[1]
    if hk == 0 or h % hk != 0:
        raise ValueError(
            f"query heads H={h} (query {_checks.shape_text(query.shape)}) must be a multiple of key/value heads "
            f"Hk={hk} (key {_checks.shape_text(key.shape)})"
        )
    if key.shape[2] == 0:
        raise ValueError(
            f"key has S=0 (shape {_checks.shape_text(key.shape)}): there is nothing to attend to"
        )


def _check_key_mask(key_mask: Tensor | None, query: Tensor, b: int, s: int) -> Tensor | None:
    if key_mask is None:
        return None
    if not isinstance(key_mask, Tensor):
        raise TypeError(
            f"key_mask must be a bool tensor (B, S) or None, got {type(key_mask).__name__}"
        )
    if key_mask.dtype != torch.bool:
        raise TypeError(
            f"key_mask must have dtype torch.bool (True = valid token), got {key_mask.dtype}; "
            "use key_mask.bool(), or crossattn.lengths_to_key_mask(lengths, S)"
        )
    if tuple(key_mask.shape) != (b, s):
        raise ValueError(
            f"key_mask must have shape (B, S) = ({b}, {s}), got {_checks.shape_text(key_mask.shape)}"
        )
    if key_mask.device != query.device:
        raise ValueError(f"key_mask is on {key_mask.device} but query is on {query.device}")
    return key_mask


def _check_attn_mask(
    attn_mask: Tensor | None, query: Tensor, full: tuple[int, int, int, int]
) -> Tensor | None:
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = may attend) or floating (added to the scores), "
            f"got {attn_mask.dtype}"
        )
    # Under autocast a float mask of any float dtype is taken in the compute dtype (as by SDPA).
    convert = attn_mask.is_floating_point() and attn_mask.dtype != query.dtype
    if convert and _autocast_dtype(query) is None:
        raise TypeError(
            f"a float attn_mask must have the query's dtype {query.dtype}, got {attn_mask.dtype}; "
            "use attn_mask.to(query.dtype)"
        )
    if attn_mask.device != query.device:
        raise ValueError(f"attn_mask is on {attn_mask.device} but query is on {query.device}")
    expected = "(" + ", ".join(str(d) for d in full) + ")"
    if attn_mask.dim() > 4:
        raise ValueError(
            f"attn_mask must be broadcastable to (B, H, L, S) = {expected}, got "
            f"{attn_mask.dim()}-D shape {_checks.shape_text(attn_mask.shape)}"
        )
    mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    for got, want in zip(mask.shape, full):
        if got not in (1, want):
            raise ValueError(
                f"attn_mask of shape {_checks.shape_text(attn_mask.shape)} is not broadcastable to "
                f"(B, H, L, S) = {expected}"
            )
    return mask.to(query.dtype) if convert else mask


def _rows_with_a_key(mask: Tensor) -> Tensor:
    """(B|1, H|1, L|1, 1): True where a query row may attend to at least one key."""
    allowed = mask if mask.dtype == torch.bool else mask.detach() > float("-inf")
    return allowed.any(dim=-1, keepdim=True)


def bidirectional_attention(
    a_q: Tensor,
    b_k: Tensor,
    a_v: Tensor,
    b_v: Tensor,
    *,
    a_mask: Tensor | None = None,
    b_mask: Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
    return_weights: WeightsArg = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """Attention both ways through ONE similarity matrix, normalised along each axis.

    The scores are ``sim = scale * a_q @ b_k^T`` (B, H, La, Lb). A softmax over Lb (each row of
    A over the tokens of B) weights ``b_v``; a softmax over La (each token of B over the tokens
    of A, i.e. over the columns of ``sim``) weights ``a_v``. Since ``a_q . b_k = b_k . a_q``,
    each direction is one `cross_attention` call with the roles of A and B swapped, so the
    masking rules are exactly those of `cross_attention`.

    Args:
        a_q: (B, H, La, E), the A side of the similarity.
        b_k: (B, H, Lb, E), the B side of the similarity.
        a_v: (B, H, La, Eva), the values of A, gathered by the tokens of B.
        b_v: (B, H, Lb, Evb), the values of B, gathered by the tokens of A.
        a_mask: (B, La) bool, True = valid token of A; or None.
        b_mask: (B, Lb) bool, True = valid token of B; or None.
        scale: multiplier of the scores; defaults to 1 / sqrt(E).
        backend: pin a backend of `cross_attention` (None: dispatch).
        return_weights: False; True for weights (B, H, La, Lb) and (B, H, Lb, La); "mean" for
            their head means (B, La, Lb) and (B, Lb, La).

    Returns:
        ``(a_out (B, H, La, Evb), b_out (B, H, Lb, Eva))``, then the two weights when asked for.
        A padded token (mask False) and a token whose other side is fully padded get exactly 0;
        NaN or Inf at padded positions of any input never reaches a valid output.
    """
    for name, t in (("a_q", a_q), ("b_k", b_k), ("a_v", a_v), ("b_v", b_v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (B, H, L, D), got shape {_checks.shape_text(t.shape)}"
            )
    if a_q.shape[:3] != a_v.shape[:3]:
        raise ValueError(
            f"a_q (B, H, La, E) and a_v (B, H, La, Eva) must agree on (B, H, La): got a_q "
            f"{_checks.shape_text(a_q.shape)}, a_v {_checks.shape_text(a_v.shape)}"
        )
    if b_k.shape[:3] != b_v.shape[:3]:
        raise ValueError(
            f"b_k (B, H, Lb, E) and b_v (B, H, Lb, Evb) must agree on (B, H, Lb): got b_k "
            f"{_checks.shape_text(b_k.shape)}, b_v {_checks.shape_text(b_v.shape)}"
        )
    if a_q.shape[:2] != b_k.shape[:2] or a_q.shape[-1] != b_k.shape[-1]:
        raise ValueError(
            f"a_q (B, H, La, E) and b_k (B, H, Lb, E) must agree on B, H and E: got a_q "
            f"{_checks.shape_text(a_q.shape)}, b_k {_checks.shape_text(b_k.shape)}"
        )
    b, _, la, e = a_q.shape
    lb = b_k.shape[2]
    a_mask = _checks.token_mask("a_mask", a_mask, (b, la), "(B, La)", like=a_q)
    b_mask = _checks.token_mask("b_mask", b_mask, (b, lb), "(B, Lb)", like=a_q)
    if scale is None:
        scale = 1.0 / math.sqrt(e)
    # Padded tokens of a side are masked out as keys (key_mask) and as queries (their rows are
    # fully masked, hence exactly 0); their inputs are zeroed so NaN padding cannot leak.
    if a_mask is not None:
        a_q = a_q.masked_fill(~a_mask[:, None, :, None], 0.0)
    if b_mask is not None:
        b_k = b_k.masked_fill(~b_mask[:, None, :, None], 0.0)
    a_rows = None if a_mask is None else a_mask[:, None, :, None]  # (B, 1, La, 1)
    b_rows = None if b_mask is None else b_mask[:, None, :, None]  # (B, 1, Lb, 1)
    # A's rows attend to B's tokens, then B's rows to A's tokens, through the same similarity.
    a_res, b_res = (
        cross_attention(
            queries, keys, values, attn_mask=rows, key_mask=keys_mask, scale=scale,
            backend=backend, return_weights=return_weights,
        )
        for queries, keys, values, rows, keys_mask in (
            (a_q, b_k, b_v, a_rows, b_mask),
            (b_k, a_q, a_v, b_rows, a_mask),
        )
    )  # fmt: skip
    if return_weights:
        return a_res[0], b_res[0], a_res[1], b_res[1]
    return a_res, b_res
