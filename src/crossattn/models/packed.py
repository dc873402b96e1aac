"""Packed inference copies of `nn.Linear` layers: fused, and laid out for the CPU matmul.

`PackedLinear` concatenates the weights (and biases, zeros for a layer without one) of linears
that read the same input, such as a self-attention's q, k and v projections, so that one matmul
computes all of them (one linear alone is packed too). Then, on the CPU:

- float32 on an Intel processor: the weight is transposed once into a contiguous copy and
  multiplied by MKL (``torch.addmm``), 1.2-2.8x faster than oneDNN's packed weight at 1-32
  rows on one thread (Intel Xeon with AMX; level with it at 128 rows and more);
- bfloat16, and float32 elsewhere: the weight is reordered once into oneDNN's blocked layout
  and multiplied by oneDNN, with an optional ReLU fused in: 1.1-1.4x faster than `F.linear` for
  the (32-128) x (256-1024) matmuls of a decode step on an AMD Zen 4 in float32, 1.3-1.7x on
  the Intel Xeon in bfloat16. Below 16 rows it is `F.linear`.

Elsewhere (float64, other devices, a build without oneDNN) it is `F.linear`.

The copy is made from the parameters and remade whenever one of them changes: an in-place update
(which bumps the parameter's ``_version``), a new tensor behind it, a new dtype or device. The
modules and their parameters stay as they are, so the saved state dict does not change.

Only plain `nn.Linear` modules without hooks are packed (`packable`); anything else (a quantised
replacement, a module with forward hooks) is called as a module, one by one, by the decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _cpu


def packable(*modules: nn.Module) -> bool:
    """Whether every module is a plain `nn.Linear` with no hooks (its math is F.linear)."""
    return all(
        type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        for m in modules
    )


def _stamp(params: list[Tensor | None]) -> tuple:
    return tuple(
        None if p is None else (id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in params
    )


# Fewer rows than this run F.linear: at a single row (one-sentence greedy decoding) oneDNN's
# packed matmul measured 1.6x slower than F.linear over a whole decode here.
ONEDNN_MIN_ROWS = 16


def _mkl_weight(weight: Tensor) -> Tensor | None:
    """The transposed, contiguous (in, out) float32 weight for MKL's matmul on an Intel CPU,
    or None where it is not the fastest."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not _cpu.INTEL:
        return None
    return weight.t().contiguous() if torch.backends.mkl.is_available() else None


def _onednn_weight(weight: Tensor) -> Tensor | None:
    """The weight in oneDNN's blocked layout, or None where oneDNN does not run it."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    except (AttributeError, RuntimeError):  # an op this build does not have
        return None


class PackedLinear:
    """One matmul for several linears of the same input: out = input @ [W_1; W_2; ...]^T + b.

    Args:
        linears: plain `nn.Linear` modules with one ``in_features``.
        relu: apply ReLU to the output (fused into the matmul where oneDNN runs it).

    Calling it maps (..., in_features) to (..., sum of out_features), the outputs of the
    linears side by side in the order given. Call `refresh` before a run of calls: it remakes
    the fused copy if any parameter changed since.
    """

    def __init__(self, *linears: nn.Linear, relu: bool = False):
        if not linears or not packable(*linears):
            raise TypeError("PackedLinear packs plain nn.Linear modules without hooks")
        if len({m.in_features for m in linears}) != 1:
            raise ValueError(
                f"PackedLinear needs one in_features, got {[m.in_features for m in linears]}"
            )
        self.linears, self.relu = linears, relu
        self.out_features = sum(m.out_features for m in linears)
        self._key: tuple | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self._onednn: Tensor | None = None
        self._mkl: Tensor | None = None  # (in_features, out_features)

    def _params(self) -> list[Tensor | None]:
        return [p for m in self.linears for p in (m.weight, m.bias)]

    def refresh(self) -> PackedLinear:
        """Remake the fused weight and bias if a parameter changed; returns self."""
        key = _stamp(self._params())
        if key != self._key:
            with torch.no_grad():
                self.weight = torch.cat([m.weight for m in self.linears], 0).contiguous()
                if all(m.bias is None for m in self.linears):
                    self.bias = None
                else:
                    self.bias = torch.cat([
                        m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
                        for m in self.linears
                    ])  # fmt: skip
                self._mkl = _mkl_weight(self.weight)
                self._onednn = None if self._mkl is not None else _onednn_weight(self.weight)
            self._key = key
        return self

    def __call__(self, features: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        flat = features.reshape(-1, features.shape[-1])  # (rows, in_features)
        if self._mkl is not None and flat.dtype == torch.float32:
            if self.bias is None:
                out = torch.mm(flat, self._mkl)
            else:
                out = torch.addmm(self.bias, flat, self._mkl)
            out = out.relu_() if self.relu else out
            return out.view(*features.shape[:-1], self.out_features)
        if self._onednn is not None and flat.shape[0] >= ONEDNN_MIN_ROWS:
            out = torch.ops.mkldnn._linear_pointwise(
                flat, self._onednn, self.bias, "relu" if self.relu else "none", [], ""
            )
            return out.view(*features.shape[:-1], self.out_features)
        out = F.linear(features, self.weight, self.bias)
        return out.relu_() if self.relu else out
