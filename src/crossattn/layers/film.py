"""`FiLM`: feature-wise linear modulation, the linear-cost alternative to cross-attention.

out = gamma(c) * features + beta(c), with c the condition vector (B, condition_dim), or the
masked mean of a condition sequence (B, M, condition_dim). With a sequence condition it takes
the same arguments as a cross-attention conditioning layer, so a model can swap one for the
other. The projection is zero-initialised and gamma = 1 + delta, so at initialisation gamma = 1,
beta = 0 and the layer is the identity.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import check_mask, check_positive


class FiLM(nn.Module):
    """Scale and shift features by a condition: gamma, beta = 1 + W_g c, W_b c.

    Args:
        dim: feature size of the modulated features.
        condition_dim: feature size of the condition.

    Shapes: forward(features (B, L, dim), condition (B, condition_dim) or (B, M, condition_dim),
    condition_mask (B, M) bool or None, True = valid token) -> (B, L, dim). A sequence is pooled
    by the mean of its valid tokens (padding may hold NaN); a row with no valid token pools to
    the zero vector, i.e. gamma = 1 + bias_g, beta = bias_b.
    """

    def __init__(self, dim: int, condition_dim: int):
        super().__init__()
        check_positive(dim=dim, condition_dim=condition_dim)
        self.dim, self.condition_dim = dim, condition_dim
        self.to_gamma_beta = nn.Linear(condition_dim, 2 * dim)
        nn.init.zeros_(self.to_gamma_beta.weight)
        nn.init.zeros_(self.to_gamma_beta.bias)

    def pool(self, condition: Tensor, condition_mask: Tensor | None = None) -> Tensor:
        """(B, condition_dim) from a condition (B, condition_dim) or (B, M, condition_dim)."""
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
        if condition.dim() == 2:
            if condition_mask is not None:
                raise ValueError(
                    "condition_mask (B, M) applies to a sequence condition (B, M, condition_dim); "
                    f"got a vector condition {tuple(condition.shape)}"
                )
            return condition
        b, m, _ = condition.shape
        if condition_mask is None:
            return condition.mean(dim=1)
        check_mask("condition_mask", condition_mask, (b, m), "(B, M)")
        valid = condition_mask[..., None]  # (B, M, 1)
        total = condition.masked_fill(~valid, 0.0).sum(dim=1)  # (B, condition_dim)
        count = valid.sum(dim=1).clamp(min=1).to(condition.dtype)  # (B, 1)
        return total / count

    def forward(
        self, features: Tensor, condition: Tensor, condition_mask: Tensor | None = None
    ) -> Tensor:
        if (
            not isinstance(features, Tensor)
            or features.dim() != 3
            or features.shape[-1] != self.dim
        ):
            raise ValueError(
                f"features must have shape (B, L, dim) with dim={self.dim}, got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}"
            )
        pooled = self.pool(condition, condition_mask)  # (B, condition_dim)
        if pooled.shape[0] != features.shape[0]:
            raise ValueError(
                f"condition has B={pooled.shape[0]} but features have B={features.shape[0]}: "
                f"condition {tuple(condition.shape)}, features {tuple(features.shape)}"
            )
        delta_gamma, beta = self.to_gamma_beta(pooled).chunk(2, dim=-1)  # (B, dim) each
        return features * (1 + delta_gamma[:, None, :]) + beta[:, None, :]
