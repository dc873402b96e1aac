"""The int8 backend: attention over keys and values stored as int8 with per-row scales.

Keys and values come as `Int8Tensor`s (made by `quantize_rows`): int8 numbers with one float32
scale per vector along the last dimension, i.e. one scale per (batch row, head, token) for a key
(B, Hk, S, E). An `Int8Tensor` presents the floating dtype it stands for (float32 or bfloat16),
so it passes `crossattn.cross_attention`'s checks and travels through `PreparedContext`
(``index_select``, ``repeat_interleave``) and padding (``masked_fill(pad, 0)``) as int8.

The backend folds the scales into the small tensors instead of dequantising the large ones:

    scores[l, s] = (q[l] . k_int8[s]) * k_scale[s] * scale
    out[l]       = sum_s (probs[l, s] * v_scale[s]) * v_int8[s]

so its result equals the reference on the dequantised inputs ``k_int8 * k_scale`` up to float32
rounding. Softmax statistics are float32 (float64 for float64 queries). Plain float keys and
values are refused (a ValueError when pinned); automatic dispatch never picks this backend: only
a layer whose prepared context is quantised pins it (see `crossattn.models.quantize`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map_only

from .base import AttentionInputs, Backend, grouped_mask

INT8_MAX = 127
"""Symmetric range: int8 values lie in [-127, 127] (-128 is never produced)."""

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_aten = torch.ops.aten


class Int8Tensor(Tensor):
    """int8 numbers with one float32 scale per vector along the last dimension.

    It stands for ``values * scales`` in `dtype`: shape, dtype and device are those of the
    dequantised tensor, the memory is int8 plus one float32 per row. Batch-row selection
    (``index_select`` on a leading dimension), ``clone``, ``detach``, device moves and
    ``masked_fill(mask, 0)`` with a mask constant along the last dimension stay quantised; any
    other operation sees the dequantised tensor.

    Attributes:
        values: int8 (..., D).
        scales: float32 (..., 1), > 0.
    """

    values: Tensor
    scales: Tensor
    # Only __torch_dispatch__: attribute reads (shape, dtype) skip the Python protocol.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, values: Tensor, scales: Tensor, dtype: torch.dtype) -> Int8Tensor:
        return Tensor._make_wrapper_subclass(
            cls, values.shape, dtype=dtype, device=values.device, requires_grad=False
        )

    def __init__(self, values: Tensor, scales: Tensor, dtype: torch.dtype):
        if values.dtype != torch.int8:
            raise TypeError(f"values must be int8, got {values.dtype}")
        if scales.dtype != torch.float32 or scales.shape != (*values.shape[:-1], 1):
            raise ValueError(
                f"scales must be float32 {(*values.shape[:-1], 1)} for values "
                f"{tuple(values.shape)}, got {scales.dtype} {tuple(scales.shape)}"
            )
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype}")
        self.values = values
        self.scales = scales

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """``values * scales`` as a plain tensor in `dtype` (default: the dtype it stands for)."""
        out = self.values.to(torch.float32) * self.scales
        return out.to(self.dtype if dtype is None else dtype)

    @property
    def nbytes_stored(self) -> int:
        """Bytes held by the int8 values and the float32 scales."""
        return self.values.nbytes + self.scales.nbytes

    def __repr__(self) -> str:  # the default repr would dequantise through __torch_dispatch__
        return (
            f"Int8Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, "
            f"int8 values with {tuple(self.scales.shape)} float32 scales)"
        )

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        handled = _quantised_op(func, args, kwargs)
        if handled is not None:
            return handled
        args, kwargs = tree_map_only(Int8Tensor, lambda t: t.dequantize(), (args, kwargs))
        return func(*args, **kwargs)


def _quantised_op(func: Any, args: tuple, kwargs: dict) -> Int8Tensor | None:
    """The few operations a prepared context needs, done on the int8 data; None otherwise."""
    t = args[0] if args else None
    if not isinstance(t, Int8Tensor):
        return None
    if func in (_aten.detach.default, _aten.alias.default) and not kwargs:
        return Int8Tensor(t.values, t.scales, t.dtype)
    if func is _aten.clone.default:
        return Int8Tensor(t.values.clone(), t.scales.clone(), t.dtype)
    if func is _aten.index_select.default and not kwargs:
        dim = args[1] % t.dim()
        if dim < t.dim() - 1 and not isinstance(args[2], Int8Tensor):
            return Int8Tensor(
                t.values.index_select(dim, args[2]), t.scales.index_select(dim, args[2]), t.dtype
            )
        return None
    if func is _aten.masked_fill.Scalar and not kwargs and float(args[2]) == 0.0:
        mask = args[1]
        if mask.dim() <= t.dim() and (mask.dim() == 0 or mask.shape[-1] == 1):
            # scale 1 at the filled rows: a NaN or Inf scale of a padded token cannot leak
            return Int8Tensor(t.values.masked_fill(mask, 0), t.scales.masked_fill(mask, 1.0),
                              t.dtype)  # fmt: skip
        return None
    if func is _aten._to_copy.default and set(kwargs) <= {"dtype", "device", "non_blocking"}:
        dtype = kwargs.get("dtype") or t.dtype
        device = kwargs.get("device") or t.device
        if dtype in _FLOAT_DTYPES:
            return Int8Tensor(t.values.to(device), t.scales.to(device), dtype)
    return None


def quantize_rows(tensor: Tensor) -> Int8Tensor:
    """Symmetric int8 quantisation with one scale per vector along the last dimension.

    Args:
        tensor: floating (..., D), e.g. prepared keys (B, Hk, S, E).

    Returns:
        An `Int8Tensor` of the same shape and dtype: ``scale = max |row| / 127`` per row (a row
        of zeros gets scale 1), values ``round(row / scale)`` in [-127, 127]. Each element is
        within ``scale / 2`` of the input.
    """
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise TypeError(
            "tensor must be a floating-point torch.Tensor, got "
            f"{getattr(tensor, 'dtype', type(tensor).__name__)}"
        )
    if isinstance(tensor, Int8Tensor):
        return tensor
    if tensor.dim() == 0 or tensor.shape[-1] == 0:
        raise ValueError(f"tensor needs a non-empty last dimension, got {tuple(tensor.shape)}")
    data = tensor.detach().to(torch.float32)
    amax = data.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    values = torch.round(data / scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return Int8Tensor(values.contiguous(), scales.contiguous(), tensor.dtype)


class Int8Backend(Backend):
    name = "int8"
    description = (
        "keys and values stored as int8 with per-(row, head, token) scales (Int8Tensor); "
        "refuses float keys and values"
    )
    quantized_inputs = True  # runs only keys and values made by quantize_rows

    def rank(self, inputs: AttentionInputs) -> None:
        return None  # never chosen for a call: a model that stores int8 K/V pins it

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        reasons = []
        plain = [n for n, t in (("key", inputs.key), ("value", inputs.value))
                 if not isinstance(t, Int8Tensor)]  # fmt: skip
        if plain:
            reasons.append(
                f"{' and '.join(plain)} {'is a' if len(plain) == 1 else 'are'} plain "
                f"{inputs.dtype} tensor{'s' * (len(plain) - 1)}; the int8 backend takes keys and "
                "values quantised by crossattn.backends.quantize_rows"
            )
        if isinstance(inputs.query, Int8Tensor):
            reasons.append("the query must be a plain floating tensor, not an Int8Tensor")
        if inputs.dropout_p > 0.0:
            reasons.append("no dropout (an inference backend)")
        if inputs.requires_grad:
            reasons.append("no gradients (an inference backend)")
        return reasons

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        q, key, value = inputs.query, inputs.key, inputs.value
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        b, h, length, e = q.shape
        hk, g, s = inputs.kv_heads, inputs.groups, inputs.kv_len
        # The G query heads of a K/V head share its keys: fold them into the rows.
        qg = _as(q, cdt).reshape(b, hk, g * length, e)  # (B, Hk, G*L, E)
        k_scale = _as(key.scales, cdt).transpose(-1, -2) * inputs.scale  # (B, Hk, 1, S)
        scores = torch.matmul(qg, key.values.to(cdt).transpose(-1, -2))  # (B, Hk, G*L, S)
        scores = scores.mul_(k_scale).view(b, hk, g, length, s)  # (B, Hk, G, L, S)
        mask = grouped_mask(inputs.mask, h, g)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill_(mask.logical_not(), float("-inf"))
            else:
                scores = scores.add_(_as(mask, cdt))
        probs = torch.softmax(scores, dim=-1)  # (B, Hk, G, L, S)
        v_scale = _as(value.scales, cdt).transpose(-1, -2)  # (B, Hk, 1, S)
        weighted = probs.view(b, hk, g * length, s) * v_scale  # (B, Hk, G*L, S)
        out = torch.matmul(weighted, value.values.to(cdt))  # (B, Hk, G*L, Ev)
        out = _as(out.view(b, h, length, -1), q.dtype)  # (B, H, L, Ev)
        weights = None
        if inputs.return_weights:
            weights = probs.reshape(b, h, length, s)  # (B, H, L, S)
            if inputs.return_weights == "mean":
                weights = weights.mean(dim=1)  # (B, L, S)
            weights = _as(weights, q.dtype)
        return out, weights


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)
