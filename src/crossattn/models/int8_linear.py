"""`Int8Linear`: a Linear with int8 weights and dynamically quantised int8 activations.

Weights are quantised once, symmetrically, with one float32 scale per output channel. Two
PyTorch int8 kernels can run it (the `kernel` of a layer):

- ``"fbgemm"``: ``torch.ops.quantized.linear_dynamic`` on the weights prepacked once (FBGEMM /
  the x86 engine). It quantises each call's input to uint8 with one scale for the whole input
  (min/max of the call) and fuses the int8 matmul, both scales and the bias in one call.
- ``"int_mm"``: ``torch._int_mm`` (int8 x int8 -> int32) after quantising each input row on its
  own (one scale per row), then both scales and the bias in float32:
  ``out[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n] + bias[n]``.

`best_int8_kernel` picks the one measured fastest here (see docs/compute-types.md) among those
this build runs: FBGEMM when present, else ``int_mm``. ``torch._weight_int8pack_mm`` is far slower
on this machine and is not used.

Shapes: features (..., in_features) -> (..., out_features), in the input's dtype (float32 or
bfloat16).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor, nn

from ..backends.int8 import INT8_MAX, Int8Tensor, quantize_rows

KERNELS = ("fbgemm", "int_mm")
_TINY = 1e-30  # a row of zeros gets this scale: its int8 values are 0 and so is its product


@functools.cache
def int8_kernel_reason(kernel: str) -> str | None:
    """Why this PyTorch build cannot run `kernel` (None when it can); the result is cached."""
    if kernel == "int_mm":
        if not hasattr(torch, "_int_mm"):
            return f"torch {torch.__version__} has no torch._int_mm"
        try:
            a = torch.ones(2, 8, dtype=torch.int8)
            ok = int(torch._int_mm(a, a.t())[0, 0]) == 8
        except (RuntimeError, NotImplementedError) as err:
            return f"torch._int_mm does not run on the CPU here ({err})"
        return None if ok else "torch._int_mm gave a wrong result here"
    if kernel == "fbgemm":
        engines = torch.backends.quantized.supported_engines
        if not {"fbgemm", "x86"} & set(engines):
            return f"this torch build has no FBGEMM/x86 quantized engine (it has {engines})"
        try:
            _pack(torch.ones(4, 8, dtype=torch.int8), torch.ones(4), None)
        except (RuntimeError, NotImplementedError, AttributeError) as err:
            return f"torch.ops.quantized.linear_prepack failed ({err})"
        return None
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def best_int8_kernel() -> str:
    """The fastest int8 kernel this build runs; RuntimeError naming each one's reason if none."""
    reasons = {k: int8_kernel_reason(k) for k in KERNELS}
    for kernel, reason in reasons.items():
        if reason is None:
            return kernel
    raise RuntimeError(
        "compute_type int8 needs an int8 matmul kernel, and this PyTorch build has none: "
        + "; ".join(f"{k}: {r}" for k, r in reasons.items())
        + "; use compute_type 'bfloat16' or 'float32'"
    )


def _pack(weight_int8: Tensor, weight_scale: Tensor, bias: Tensor | None):  # noqa: ANN202
    """FBGEMM's prepacked weights (an opaque object) of int8 weights with per-channel scales."""
    zero = torch.zeros(weight_int8.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # the qint8 tensor exists only to be packed
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            weight_int8, weight_scale.double(), zero, 0
        )
        return torch.ops.quantized.linear_prepack(qweight, bias)


@functools.cache
def _fbgemm_reduce_range() -> bool:
    """True where FBGEMM's int16 pair sums saturate (no VNNI): then inputs use 7 bits.

    Probed once: uint8 255 x int8 127 pairs overflow int16 unless the kernel accumulates in
    int32 (AVX512-VNNI), in which case the full 8-bit range is exact and more accurate.
    """
    k = 64
    packed = _pack(torch.full((4, k), INT8_MAX, dtype=torch.int8), torch.full((4,), 1.0), None)
    out = torch.ops.quantized.linear_dynamic(torch.ones(2, k), packed, False)
    return not torch.allclose(out, torch.full_like(out, INT8_MAX * k), rtol=1e-2)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per-output-channel scales) and int8 activations.

    Build it with `Int8Linear.from_float(linear, dtype)`. It has the call signature of the
    Linear it replaces; its `weight` is an `Int8Tensor` that stands for the dequantised weight
    (out_features, in_features) in `dtype` (its dtype and device are what layers check inputs
    against).

    Attributes:
        in_features, out_features: as in ``nn.Linear``.
        dtype: the activation dtype, float32 or bfloat16: inputs and outputs have it.
        kernel: "fbgemm" or "int_mm" (see the module docstring).
        weight_int8: int8 (out_features, in_features) buffer.
        weight_scale: float32 (out_features,) buffer.
        bias: float32 (out_features,) buffer, or None.
    """

    def __init__(
        self,
        weight_int8: Tensor,
        weight_scale: Tensor,
        bias: Tensor | None,
        dtype: torch.dtype = torch.float32,
        kernel: str | None = None,
    ):
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        kernel = best_int8_kernel() if kernel is None else kernel
        reason = int8_kernel_reason(kernel)
        if reason is not None:
            raise RuntimeError(f"the int8 kernel {kernel!r} cannot run here: {reason}")
        self.out_features, self.in_features = weight_int8.shape
        self.dtype, self.kernel = dtype, kernel
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("weight_scale", weight_scale.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._packed = None  # FBGEMM's prepacked weights, made on first use
        self._reduce_range = True

    @classmethod
    def from_float(
        cls, linear: nn.Linear, dtype: torch.dtype = torch.float32, kernel: str | None = None
    ) -> Int8Linear:
        """Quantise ``linear``'s weight (out, in) per output channel; the bias stays float32."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        q = quantize_rows(linear.weight.detach().float())  # one scale per output channel
        return cls(q.values, q.scales.squeeze(1), linear.bias, dtype, kernel)

    @classmethod
    def concat(cls, linears: list[Int8Linear]) -> Int8Linear:
        """One `Int8Linear` whose outputs are those of `linears` side by side (fused QKV, KV).

        Per-output-channel weight scales make this exact up to the activation scale, which the
        fused call shares (the same for ``int_mm``, whose scales are per input row). All must
        share in_features, dtype and kernel.
        """
        if not linears or not all(isinstance(m, Int8Linear) for m in linears):
            raise TypeError("linears must be a non-empty list of Int8Linear")
        first = linears[0]
        if any((m.in_features, m.dtype, m.kernel) != (first.in_features, first.dtype,
                                                        first.kernel) for m in linears):  # fmt: skip
            raise ValueError("the Int8Linear layers to fuse must share in_features, dtype, kernel")
        bias = None
        if any(m.bias is not None for m in linears):
            bias = torch.cat([
                m.bias if m.bias is not None else m.weight_scale.new_zeros(m.out_features)
                for m in linears
            ])  # fmt: skip
        weights = torch.cat([m.weight_int8 for m in linears])
        scales = torch.cat([m.weight_scale for m in linears])
        return cls(weights, scales, bias, first.dtype, first.kernel)

    @property
    def weight(self) -> Int8Tensor:
        """The weight (out_features, in_features) as an `Int8Tensor` standing for `dtype`."""
        return Int8Tensor(self.weight_int8, self.weight_scale[:, None], self.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.dtype}, kernel={self.kernel!r}"
        )

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        self._packed = None  # moved or cast: pack again from the buffers
        return super()._apply(fn, recurse)

    def __getstate__(self):  # noqa: ANN204
        state = super().__getstate__()
        state["_packed"] = None  # an opaque object: copies and pickles pack again
        return state

    def forward(self, features: Tensor) -> Tensor:
        """features (..., in_features) -> (..., out_features), in the dtype of `features`."""
        if features.shape[-1] != self.in_features:
            raise ValueError(
                f"features must have last dim in_features={self.in_features}, got shape "
                f"{tuple(features.shape)}"
            )
        lead = features.shape[:-1]
        rows = features.reshape(-1, self.in_features)  # (M, K)
        if rows.dtype != torch.float32:
            rows = rows.float()
        if rows.shape[0] == 0:
            out = rows.new_zeros(0, self.out_features)
        elif self.kernel == "fbgemm":
            if self._packed is None:
                self._packed = _pack(self.weight_int8, self.weight_scale, self.bias)
                self._reduce_range = _fbgemm_reduce_range()
            out = torch.ops.quantized.linear_dynamic(rows, self._packed, self._reduce_range)
        else:
            # Per-row symmetric quantisation of the activations: |rows| <= 127 * x_scale.
            x_scale = rows.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY).div_(INT8_MAX)
            xq = torch.round(rows / x_scale).to(torch.int8)  # (M, K)
            out = torch._int_mm(xq, self.weight_int8.t()) * x_scale  # (M, N) float32
            if self.bias is None:
                out.mul_(self.weight_scale)
            else:
                out = torch.addcmul(self.bias, out, self.weight_scale)
        if out.dtype != features.dtype:
            out = out.to(features.dtype)
        return out.view(*lead, self.out_features)
