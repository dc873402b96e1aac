"""Mask helpers. crossattn's one convention: boolean True means "may attend"."""

from __future__ import annotations

import torch
from torch import Tensor


def lengths_to_key_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Key mask (B, S) from valid lengths (B,): True for the first ``lengths[b]`` positions."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    size = int(lengths.max().item()) if max_len is None else int(max_len)
    positions = torch.arange(size, device=lengths.device)
    return positions[None, :] < lengths[:, None]  # (B, S)


def from_key_padding_mask(key_padding_mask: Tensor) -> Tensor:
    """Convert torch.nn.MultiheadAttention's ``key_padding_mask`` (True = ignore) to a key mask.

    A float padding mask (additive, -inf = ignore) is accepted too.
    """
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    return key_padding_mask > float("-inf")


def causal_mask(q_len: int, kv_len: int | None = None, *, device=None) -> Tensor:
    """Boolean (L, S) mask where query i may attend to keys j <= i + (S - L)."""
    s = q_len if kv_len is None else kv_len
    return torch.ones(q_len, s, dtype=torch.bool, device=device).tril(diagonal=s - q_len)
