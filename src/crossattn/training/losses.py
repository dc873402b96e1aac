"""The training loss (label-smoothed cross-entropy and the attention losses) and dev metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.seq2seq import PAD_ID, Seq2SeqTransformer
from .batching import Batch, Encoded, collate, make_batches, pair_cost
from .options import TrainOptions
from .rules import raise_problem


@dataclass
class LossParts:
    """Summed (not averaged) loss terms of a batch slice and their counts."""

    total: Tensor
    nll_sum: float
    tokens: int
    correct: int


def _token_counts(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(summed cross-entropy without smoothing, correct next-token predictions, valid target
    positions (B, T) bool) of ``logits`` (B, T, V) against ``target`` (B, T)."""
    nll, _, correct, valid = _token_losses(logits.log_softmax(-1), logits, target)
    return nll, correct, valid


def _token_losses(
    logp: Tensor, logits: Tensor, target: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From one log-softmax ``logp`` (B, T, V): the summed negative log-likelihood of
    ``target`` (B, T), the summed mean negative log-probability over the vocabulary (label
    smoothing's term), correct predictions and the valid positions, padding excluded."""
    valid = target != PAD_ID
    zero = logp.new_zeros(())
    nll = -torch.where(valid, logp.gather(-1, target.unsqueeze(-1)).squeeze(-1), zero).sum()
    uniform = -torch.where(valid, logp.mean(-1), zero).sum()  # padding selected out, not scaled
    correct = ((logits.argmax(-1) == target) & valid).sum()
    return nll, uniform, correct, valid


def _add_attention_losses(
    total: Tensor,
    weights: Tensor,
    batch: Batch,
    valid: Tensor,
    opts: TrainOptions,
    norm: dict[str, float],
) -> Tensor:
    """``total`` plus the weighted attention losses of cross-attention ``weights`` (B, H, T, S)
    (``valid`` (B, T): the target positions that count)."""
    if opts.guided_alignment and batch.align is not None and norm["align_rows"] > 0:
        head = weights[:, opts.attention_head]  # (B, T, S)
        guided = -(batch.align * torch.log(head.clamp_min(1e-9))).sum()
        total = total + opts.guided_weight * guided / norm["align_rows"]
    rows = valid[:, None, :, None]  # (B, 1, T, 1)
    if opts.entropy_weight > 0:
        ent = -(weights * torch.log(weights.clamp_min(1e-9))).sum(-1, keepdim=True)
        ent = (ent * rows).sum() / weights.shape[1]
        total = total + opts.entropy_weight * ent / norm["tokens"]
    if opts.coverage_weight > 0:
        coverage = (weights * rows).sum(2)  # (B, H, S): attention each source word receives
        miss = ((coverage - 1.0) ** 2 * batch.source_mask[:, None]).sum() / weights.shape[1]
        total = total + opts.coverage_weight * miss / norm["source_tokens"]
    return total


def batch_loss(
    model: Seq2SeqTransformer,
    batch: Batch,
    opts: TrainOptions,
    norm: dict[str, float],
) -> LossParts:
    """Loss of a batch slice, each term divided by its count over the whole batch (``norm``).

    ``norm`` holds ``tokens`` (target tokens incl. EOS), ``align_rows`` (target positions with
    gold links) and ``source_tokens``, all counted over the full batch (every process).
    """
    want = opts.wants_attention()
    if want:
        raise_problem(opts.attention_problem(model.config))
    layer = opts.attention_layer_for(model.config) % model.config.decoder_layers
    out = model(
        batch.source, batch.source_mask, batch.target_in, attention_layers=[layer] if want else ()
    )
    logits = out.logits.float()  # (B, T, V)
    # one log-softmax for the loss and the counts: cross-entropy with label smoothing is
    # (1 - eps) * nll + eps * (the mean negative log-probability over the vocabulary)
    nll, uniform, correct, valid = _token_losses(logits.log_softmax(-1), logits, batch.target_out)
    eps = opts.label_smoothing
    total = ((1.0 - eps) * nll + eps * uniform if eps else nll) / norm["tokens"]
    if want:
        weights = out.cross_weights[layer]  # (B, H, T, S)
        total = _add_attention_losses(total, weights, batch, valid, opts, norm)
    return LossParts(total, float(nll.detach()), int(valid.sum()), int(correct))


@torch.no_grad()
def evaluate_loss(
    model: Seq2SeqTransformer, data: Sequence[Encoded], batch_tokens: int, device: torch.device
) -> dict[str, float]:
    """Teacher-forced dev metrics: per-token loss, perplexity and next-token accuracy."""
    was = model.training
    model.eval()
    nll = tokens = correct = 0.0
    for idx in make_batches([pair_cost(e) for e in data], batch_tokens):
        batch = collate([data[i] for i in idx], False).to(device)
        out = model(batch.source, batch.source_mask, batch.target_in)
        batch_nll, batch_correct, valid = _token_counts(out.logits.float(), batch.target_out)
        nll += float(batch_nll)
        correct += float(batch_correct)
        tokens += float(valid.sum())
    model.train(was)
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "accuracy": correct / max(tokens, 1.0)}
