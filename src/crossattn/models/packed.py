"""Fused inference copies of several `nn.Linear` layers that read the same input.

`PackedLinear` concatenates the weights (and biases, zeros for a layer without one) of linears
such as a self-attention's q, k and v projections, so that one matmul computes all of them. The
copy is made from the parameters and remade whenever one of them changes: an in-place update
(which bumps the parameter's ``_version``), a new tensor behind it, a new dtype or device. The
modules and their parameters stay as they are, so the saved state dict does not change.

Only plain `nn.Linear` modules without hooks are packed (`packable`); anything else (a quantised
replacement, a module with forward hooks) is called as a module, one by one, by the decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


class PackedLinear:
    """One matmul for several linears of the same input: out = input @ [W_1; W_2; ...]^T + b.

    Args:
        linears: plain `nn.Linear` modules with one ``in_features``.

    Calling it maps (..., in_features) to (..., sum of out_features), the outputs of the
    linears side by side in the order given. Call `refresh` before a run of calls: it remakes
    the fused copy if any parameter changed since.
    """

    def __init__(self, *linears: nn.Linear):
        if not linears or not packable(*linears):
            raise TypeError("PackedLinear packs plain nn.Linear modules without hooks")
        if len({m.in_features for m in linears}) != 1:
            raise ValueError(
                f"PackedLinear needs one in_features, got {[m.in_features for m in linears]}"
            )
        self.linears = linears
        self._key: tuple | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

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
            self._key = key
        return self

    def __call__(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight, self.bias)
