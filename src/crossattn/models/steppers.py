"""What greedy and beam search call once per position: a stepper.

A stepper takes one token per row (N,), returns the next-token logits (N, V) float32 with PAD and
BOS at -inf (never produced) and the cross-attention maps (N, layers asked, heads, S) or None,
and keeps rows ``rows`` (N,) when beam search reorders its beams (beams never leave their input:
row r decodes input r // beams).

- `make_stepper` picks `incremental.IncrementalDecoder` (the fast path: static `KVCache`, fused
  projections, source K/V shared by the beams) when it can run the model;
- `GeneralStepper` runs ``model.decode`` otherwise (training mode, an open recorder,
  ``use_cache=False`` or ``reuse_context=False``, a source row without any valid token).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers.attention import PreparedContext
from .incremental import IncrementalDecoder, fast_path_reasons


class GeneralStepper:
    """``model.decode`` per step, with its growing `PreparedContext` caches or none."""

    def __init__(self, model, memory, source_mask, *, beams, use_cache, reuse_context, layers):
        self.model, self.use_cache, self.layers = model, use_cache, layers
        if beams > 1:  # widen every input to its beams: rows b*k .. b*k + k - 1 are input b
            memory = memory.repeat_interleave(beams, 0)  # (B*k, S, D)
            source_mask = source_mask.repeat_interleave(beams, 0)
        self.memory, self.source_mask, self.reuse_context = memory, source_mask, reuse_context
        self.contexts = model.prepare_contexts(memory, source_mask) if reuse_context else None
        self.caches: list[PreparedContext] | None = None
        self.prefix: Tensor | None = None  # (N, t), the decoder inputs so far
        cfg = model.config
        self.never = [cfg.pad_id, cfg.bos_id]

    def step(self, token_ids: Tensor) -> tuple[Tensor, Tensor | None]:
        column = token_ids[:, None]
        self.prefix = column if self.prefix is None else torch.cat([self.prefix, column], 1)
        kw = dict(attention_layers=self.layers)
        if self.reuse_context:
            kw["contexts"] = self.contexts
        else:  # project the encoder output to K/V again, at every step
            kw.update(contexts=self.memory, source_mask=self.source_mask)
        if self.use_cache:
            out = self.model.decode(column, caches=self.caches, use_cache=True, **kw)
            self.caches = out.caches
        else:
            out = self.model.decode(self.prefix, **kw)
        logits = out.logits[:, -1].float()  # (N, V)
        logits[:, self.never] = float("-inf")
        attn = None
        if self.layers:
            attn = torch.stack([out.cross_weights[i][:, :, -1] for i in self.layers], 1)
        return logits, attn  # attn: (N, layers, heads, S)

    def reorder(self, rows: Tensor) -> None:
        self.prefix = self.prefix.index_select(0, rows)
        if self.caches is not None:
            self.caches = [c.index_select(rows) for c in self.caches]


def make_stepper(
    model,
    memory: Tensor,
    source_mask: Tensor,
    *,
    beams: int,
    steps: int,
    layers: list[int],
    use_cache: bool,
    reuse_context: bool,
):
    """The fastest stepper that runs this call (see the module docstring).

    Args:
        memory: (B, S, d_model), the encoder output; source_mask: (B, S) bool, True = valid.
        beams: rows per input; steps: the most steps; layers: decoder layers whose maps to return.
    """
    fast = use_cache and reuse_context and not fast_path_reasons(model)
    if fast and bool(source_mask.any(1).all()):
        return IncrementalDecoder(
            model, memory, source_mask, beams=beams, capacity=steps, attention_layers=layers
        )
    return GeneralStepper(
        model, memory, source_mask, beams=beams, use_cache=use_cache,
        reuse_context=reuse_context, layers=layers,
    )  # fmt: skip
