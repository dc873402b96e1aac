"""Small helpers shared by the composite layers: argument checks and a GELU feed-forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_positive(**values: object) -> None:
    """ValueError naming the first argument that is not a positive int."""
    for name, val in values.items():
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            raise ValueError(f"{name} must be a positive int, got {val!r}")


def check_features(name: str, t: object, dim: int, legend: str) -> Tensor:
    """A floating (B, N, dim) tensor, or TypeError/ValueError naming `name` and the shapes."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {legend}, got {type(t).__name__}")
    if t.dim() != 3 or t.shape[-1] != dim:
        raise ValueError(
            f"{name} must have shape {legend} with last dim {dim}, got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_mask(name: str, mask: object, shape: tuple[int, ...], legend: str) -> Tensor | None:
    """None, or a bool tensor of exactly `shape` (True = valid token)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor {legend}, True = valid token; got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}"
        )
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {legend} = {tuple(shape)}, got {tuple(mask.shape)}"
        )
    return mask


class FeedForward(nn.Module):
    """Position-wise MLP, no norm: linear_out(dropout(act(linear_in(x)))).

    (..., dim) -> (..., hidden_dim) -> (..., dim). The one feed-forward of every layer here:
    GELU in Perceiver and Flamingo, ReLU in the Transformer layers, Segment Anything's choice in
    the two-way transformer.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        activation: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_positive(dim=dim, hidden_dim=hidden_dim)
        self.linear_in = nn.Linear(dim, hidden_dim)
        self.act = activation()
        self.dropout = nn.Dropout(dropout)
        self.linear_out = nn.Linear(hidden_dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_out(self.dropout(self.act(self.linear_in(features))))
