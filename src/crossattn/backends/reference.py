"""The reference backend: plain einsum attention, the specification every backend is tested on.

It materialises the full (B, H, L, S) score matrix. Inputs in float64 are computed in float64;
float32 in float32; lower-precision inputs are upcast to float32 and the result cast back.
It supports every valid input, including weights that carry gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import AttentionInputs, Backend, grouped, grouped_mask
from .policy import reference_rank


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ReferenceBackend(Backend):
    name = "reference"
    description = "plain einsum math, float64-exact; materialises the (B, H, L, S) scores"

    def rank(self, inputs: AttentionInputs) -> int | None:
        return reference_rank(inputs)

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        return []

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        dtype = compute_dtype(inputs.dtype)
        b, h, length, _ = inputs.query.shape
        g = inputs.groups
        q = grouped(inputs.query.to(dtype), g)  # (B, Hk, G, L, E)
        k = inputs.key.to(dtype)  # (B, Hk, S, E)
        v = inputs.value.to(dtype)  # (B, Hk, S, Ev)
        scores = torch.einsum("bkgle,bkse->bkgls", q, k) * inputs.scale  # (B, Hk, G, L, S)
        mask = grouped_mask(inputs.mask, h, g)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask.to(dtype)
        probs = torch.softmax(scores, dim=-1)  # (B, Hk, G, L, S)
        dropped = probs
        if inputs.dropout_p > 0.0:
            dropped = torch.nn.functional.dropout(probs, p=inputs.dropout_p, training=True)
        out = torch.einsum("bkgls,bksv->bkglv", dropped, v)  # (B, Hk, G, L, Ev)
        out = out.reshape(b, h, length, -1).to(inputs.dtype)  # (B, H, L, Ev)
        weights = None
        if inputs.return_weights:
            weights = probs.reshape(b, h, length, -1)  # (B, H, L, S)
            if inputs.return_weights == "mean":
                weights = weights.mean(dim=1)  # (B, L, S)
            weights = weights.to(inputs.dtype)
        return out, weights
