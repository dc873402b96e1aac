"""`GatedFusion`: a sigmoid-gated, per-feature blend of attended and input features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _checks
from ._common import check_features


class GatedFusion(nn.Module):
    """out = g * attended + (1 - g) * features, g = sigmoid(W [features; attended] + b).

    The gate is computed per token and per feature from both inputs. Its weight and bias start
    at 0, so the block starts as the even blend 0.5 * (features + attended). Typical use: blend
    the output of a `CrossAttention` (attended) into the stream it was computed from (features).

    Args:
        dim: feature size of both inputs.
        bias_init: initial gate bias; a negative value starts closer to the input features
            (e.g. -4 gives g = 0.018).

    Shapes: forward(features (B, L, dim), attended (B, L, dim)) -> (B, L, dim).
    """

    def __init__(self, dim: int, *, bias_init: float = 0.0):
        super().__init__()
        dim = _checks.positive_int(dim, "dim")
        self.dim = dim
        self.to_gate = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.to_gate.weight)
        nn.init.constant_(self.to_gate.bias, _checks.finite_real(bias_init, "bias_init"))

    def gate(self, features: Tensor, attended: Tensor) -> Tensor:
        """The gate g (B, L, dim) in (0, 1)."""
        return torch.sigmoid(self.to_gate(torch.cat([features, attended], dim=-1)))

    def forward(self, features: Tensor, attended: Tensor) -> Tensor:
        """Blend `attended` into `features` through the gate.

        Args:
            features: (B, L, dim), the stream the attention was computed from.
            attended: (B, L, dim), e.g. the output of a `CrossAttention` on `features`.

        Returns:
            (B, L, dim): g * attended + (1 - g) * features.
        """
        weight = self.to_gate.weight
        check_features("features", features, self.dim, "(B, L, dim)", like=weight)
        check_features("attended", attended, self.dim, "(B, L, dim)", like=weight)
        if features.shape != attended.shape:
            raise ValueError(
                f"features and attended must have one shape (B, L, dim), got features "
                f"{tuple(features.shape)}, attended {tuple(attended.shape)}"
            )
        g = self.gate(features, attended)  # (B, L, dim)
        return features + g * (attended - features)
