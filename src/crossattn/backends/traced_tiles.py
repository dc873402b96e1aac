"""The chunked backend's tiles computed out of place, for ``torch.jit.trace``.

The chunked backend writes its tiles into reused buffers (``out=``, in place). A TorchScript
trace records those writes as mutations of an ``empty`` buffer, which the TorchScript-based ONNX
exporter cannot express. While tracing, the chunked backend runs this instead: the same tiles
and the same statistics dtype, each tile a plain ``softmax(q k^T) v`` over all its keys, the
results joined with ``cat``. It never runs eagerly, so the eager backend keeps its buffers.

Shapes as in `chunked`: a tile holds ``n`` (batch, K/V head) entries and ``rows`` queries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import AttentionInputs


def traced_forward(inputs: AttentionInputs, plan_: Any, ops: Any) -> tuple[Tensor, Tensor | None]:
    """``(out (B, H, L, Ev), weights)`` of `inputs`, tile by tile of `plan_`, out of place.

    `plan_` and `ops` are the chunked backend's ``_Plan`` and ``_Operands`` of the call.
    """
    b, h, length, _ = inputs.query.shape
    acc, keys = ops.acc, slice(None)
    n_groups = 1 if plan_.fold else plan_.groups
    outs: list[list[Tensor]] = [[] for _ in range(n_groups)]
    probs: list[list[Tensor]] = [[] for _ in range(n_groups)]
    for t in plan_.tiles():
        q = ops.q_rows(t).to(acc)  # (n, rows, E)
        scores = torch.bmm(q, ops.key_t[t.i0 : t.i1].to(acc)) * inputs.scale  # (n, rows, S)
        m = ops.mask_tile(t, keys)
        if m is not None and m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        elif m is not None:
            scores = scores + m.to(acc)
        p = torch.softmax(scores, dim=-1)  # (n, rows, S)
        dropped = p
        if inputs.dropout_p > 0.0:
            dropped = torch.nn.functional.dropout(p, p=inputs.dropout_p, training=True)
        value = ops.value[t.i0 : t.i1].to(acc)  # (n, S, Ev)
        gi = 0 if t.group is None else t.group
        outs[gi].append(torch.bmm(dropped, value))  # (n, rows, Ev)
        probs[gi].append(p)
    out = _join(outs, plan_, b, h, length)  # (B, H, L, Ev)
    weights = None
    if inputs.return_weights:
        weights = _join(probs, plan_, b, h, length)  # (B, H, L, S)
        if inputs.return_weights == "mean":
            weights = weights.mean(dim=1)  # (B, L, S)
        weights = weights.to(inputs.dtype)
    return out.to(inputs.dtype), weights


def _join(tiles: list[list[Tensor]], plan_: Any, b: int, h: int, length: int) -> Tensor:
    """Tiles (group, then entry blocks, then row blocks, as `plan_.tiles` yields them) joined to
    (B, H, L, D)."""
    row_blocks = -(-plan_.rows // plan_.row_block)
    groups = []
    for group in tiles:  # (n, rows, D) tiles of one query group
        strips = [
            torch.cat(group[i : i + row_blocks], dim=1)  # (n, all rows, D)
            for i in range(0, len(group), row_blocks)
        ]
        groups.append(torch.cat(strips, dim=0))  # (B*Hk, rows, D)
    d = groups[0].shape[-1]
    if plan_.fold:  # rows are the G*L queries of a K/V head
        return groups[0].reshape(b, h, length, d)  # (B, H, L, D)
    return torch.stack(groups, dim=1).reshape(b, h, length, d)  # (B*Hk, G, L, D) -> (B, H, L, D)
