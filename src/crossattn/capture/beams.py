"""Follow beam search back through per-step maps to the sequences `generate()` returned."""

from __future__ import annotations

import torch
from torch import Tensor

from .reduce import to_dense


def follow_beams(maps: list[Tensor], steps: list[int], beam_indices: Tensor, layer: str) -> Tensor:
    """Gather, for each returned sequence and step, the map row its token came from.

    Args:
        maps: one map per decoder call: (rows, L, S) or (rows, heads, L, S), rows = batch *
            num_beams in that step's beam order.
        steps: the call index of each map; every call 0..T-1 must have been recorded.
        beam_indices: (N, T) integer (long); -1 marks steps after a sequence ended.

    Returns:
        (N, T, S) or (N, T, heads, S); zeros where ``beam_indices`` is -1.
    """
    if not isinstance(beam_indices, Tensor):
        raise TypeError(
            "beam_indices must be a (N, T) integer tensor (generate()'s beam_indices), got "
            f"{type(beam_indices).__name__}"
        )
    dtype = beam_indices.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(
            f"beam_indices must be an integer tensor of row numbers (torch.long, as generate() "
            f"returns it), got dtype {dtype}"
        )
    if beam_indices.dim() != 2:
        raise ValueError(
            f"beam_indices must be a (N, T) tensor, got shape {tuple(beam_indices.shape)}"
        )
    if beam_indices.numel() and int(beam_indices.min()) < -1:
        raise ValueError(
            f"beam_indices holds {int(beam_indices.min())}; row numbers are >= 0, and -1 marks "
            "the steps after a sequence ended"
        )
    n, t_len = beam_indices.shape
    if steps[: min(t_len, len(steps))] != list(range(min(t_len, len(steps)))) or len(steps) < t_len:
        raise ValueError(
            f"layer {layer!r}: following beams needs the maps of calls 0..{t_len - 1} "
            f"(beam_indices has T={t_len}), but the recorded calls are {steps[: t_len + 1]}...; "
            "record every step (steps=None)"
        )
    first = to_dense(maps[0])
    per_row = first.shape[1:-2] + first.shape[-1:]  # ([heads,] S)
    out = first.new_zeros((n, t_len) + tuple(per_row))
    index = beam_indices.to(device=first.device, dtype=torch.long)
    for t in range(t_len):
        step_map = to_dense(maps[t])[..., -1, :]  # (rows, [heads,] S): the last query position
        valid = index[:, t] >= 0
        rows = index[valid, t]
        if rows.numel() and int(rows.max()) >= step_map.shape[0]:
            raise ValueError(
                f"layer {layer!r}: beam_indices[:, {t}] points at row {int(rows.max())}, but the "
                f"map of that step has {step_map.shape[0]} rows"
            )
        out[valid, t] = step_map[rows]
    return out
