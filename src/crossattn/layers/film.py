"""`FiLM`: feature-wise linear modulation, the linear-cost alternative to cross-attention.

out = gamma(c) * features + beta(c), with c the condition vector (B, condition_dim), or the
masked mean of a condition sequence (B, M, condition_dim). With a sequence condition it takes
the same arguments as a cross-attention conditioning layer, so a model can swap one for the
other. The projection is zero-initialised and gamma = 1 + delta, so at initialisation gamma = 1,
beta = 0 and the layer is the identity.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import _checks
from ._common import check_features, check_like_params


class FiLM(nn.Module):
    """Scale and shift features by a condition: gamma, beta = 1 + W_g c, W_b c.

    Args:
        dim: feature size of the modulated features.
        condition_dim: feature size of the condition.

    Shapes: forward(features (B, L, dim), condition (B, condition_dim) or (B, M, condition_dim),
    condition_mask (B, M) bool or None, True = valid token) -> (B, L, dim). A sequence is pooled
    by the mean of its valid tokens (padding may hold NaN); a row with no valid token (all of its
    mask False, or an empty sequence M = 0) pools to the zero vector, i.e. gamma = 1 + bias_g,
    beta = bias_b.
    """

    def __init__(self, dim: int, condition_dim: int):
        super().__init__()
        dim, condition_dim = _checks.positive_ints(dim=dim, condition_dim=condition_dim)
        self.dim, self.condition_dim = dim, condition_dim
        self.to_gamma_beta = nn.Linear(condition_dim, 2 * dim)
        nn.init.zeros_(self.to_gamma_beta.weight)
        nn.init.zeros_(self.to_gamma_beta.bias)

    def pool(self, condition: Tensor, condition_mask: Tensor | None = None) -> Tensor:
        """(B, condition_dim) from a condition (B, condition_dim) or (B, M, condition_dim).

        A sequence pools to the mean of its valid tokens (condition_mask (B, M) bool, True =
        valid token); a row with none, or an empty sequence (M = 0), pools to zeros.
        """
        if not isinstance(condition, Tensor):
            raise TypeError(
                f"condition must be a torch.Tensor (B, condition_dim) or (B, M, condition_dim), "
                f"got {type(condition).__name__}"
            )
        if condition.dim() not in (2, 3) or condition.shape[-1] != self.condition_dim:
            raise ValueError(
                f"condition must have shape (B, condition_dim) or (B, M, condition_dim) with "
                f"condition_dim={self.condition_dim}, got {tuple(condition.shape)}"
            )
        if not condition.is_floating_point():
            raise TypeError(
                f"condition must be a floating-point tensor, got dtype {condition.dtype}; "
                "use condition.float()"
            )
        if condition.dim() == 2:
            if condition_mask is not None:
                raise ValueError(
                    "condition_mask (B, M) applies to a sequence condition (B, M, condition_dim); "
                    f"got a vector condition {tuple(condition.shape)}"
                )
            return condition
        b, m, _ = condition.shape
        _checks.token_mask("condition_mask", condition_mask, (b, m), "(B, M)")
        if m == 0:  # no token at all: the zero pooling of a row with no valid token
            return condition.new_zeros(b, self.condition_dim)
        if condition_mask is None:
            return condition.mean(dim=1)
        valid = condition_mask[..., None]  # (B, M, 1)
        total = condition.masked_fill(~valid, 0.0).sum(dim=1)  # (B, condition_dim)
        count = valid.sum(dim=1).clamp(min=1).to(condition.dtype)  # (B, 1)
        return total / count

    def forward(
        self, features: Tensor, condition: Tensor, condition_mask: Tensor | None = None
    ) -> Tensor:
        """Modulate `features` by the pooled condition.

        Args:
            features: (B, L, dim).
            condition: (B, condition_dim), or a sequence (B, M, condition_dim) pooled by the
                mean of its valid tokens (M = 0 allowed: it pools to zeros).
            condition_mask: (B, M) bool, True = valid token (padding may hold NaN); only with a
                sequence condition. A row with no valid token pools to zeros.

        Returns:
            (B, L, dim): features * (1 + delta_gamma) + beta.
        """
        weight = self.to_gamma_beta.weight
        check_features("features", features, self.dim, "(B, L, dim)", like=weight)
        pooled = self.pool(condition, condition_mask)  # (B, condition_dim)
        check_like_params("condition", condition, weight)
        if pooled.shape[0] != features.shape[0]:
            raise ValueError(
                f"condition has B={pooled.shape[0]} but features have B={features.shape[0]}: "
                f"condition {tuple(condition.shape)}, features {tuple(features.shape)}"
            )
        delta_gamma, beta = self.to_gamma_beta(pooled).chunk(2, dim=-1)  # (B, dim) each
        return features * (1 + delta_gamma[:, None, :]) + beta[:, None, :]
