"""Greedy and beam-search decoding for `Seq2SeqTransformer`.

The source is encoded once and projected to every decoder layer's cross-attention keys and
values once; every step then feeds one token per row to a stepper (`steppers.make_stepper`: the
fast `IncrementalDecoder` with its static `KVCache`, or ``model.decode``). All beams of one input
share its source keys and values; only the decoder self-attention caches follow the beams. Beam
search keeps its hypotheses in preallocated tensors (`beam_state.BeamState`) and reads one flag
from the device per step.

Shapes: source_ids (B, S) long, source_mask (B, S) bool with True = valid token.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import _checks
from .beam_state import BeamState
from .fast_encoder import encode as fast_encode
from .fast_encoder import encoder_reasons
from .incremental import fast_path_reasons
from .seq2seq import Seq2SeqTransformer
from .steppers import make_stepper


@dataclass
class Hypothesis:
    """One decoded sentence.

    Attributes:
        tokens: target ids produced, without BOS and EOS.
        score: sum of the log-probabilities of the produced tokens (EOS included when produced);
            beam search ranks by ``score / length_penalty``.
        finished: whether the hypothesis ended with EOS (False when it hit the length limit).
        attention: cross-attention weights (layers, heads, T, S) for the produced tokens, with
            T = len(tokens) + 1 when it ended with EOS (the last row is the EOS step) and S the
            number of valid source positions; None unless asked for. Row t is the attention of
            the step that produced token t (whose decoder input is token t - 1, or BOS).
    """

    tokens: list[int]
    score: float
    finished: bool
    attention: Tensor | None = None


def _prepare(
    model: Seq2SeqTransformer, source_ids: Tensor, source_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    if model.training:
        warnings.warn(
            "decoding a model in training mode: dropout is active, so the result changes from "
            "call to call; call model.eval() first",
            stacklevel=4,  # _prepare, greedy_decode / beam_search, torch.no_grad's wrapper
        )
    _checks.tensor(source_ids, "source_ids", rank=2, legend="(B, S)")
    if 0 in source_ids.shape:
        raise ValueError(
            f"source_ids must be a non-empty (B, S) long tensor, got {tuple(source_ids.shape)}"
        )
    if source_mask is None:
        source_mask = torch.ones_like(source_ids, dtype=torch.bool)
    if source_mask.dtype != torch.bool or tuple(source_mask.shape) != tuple(source_ids.shape):
        raise ValueError(
            f"source_mask must be bool with the shape of source_ids {tuple(source_ids.shape)}, "
            f"got {source_mask.dtype} {tuple(source_mask.shape)}"
        )
    if fast_path_reasons(model) or encoder_reasons(model) or not bool(source_mask.any(1).all()):
        return model.encode(source_ids, source_mask), source_mask  # (B, S, D), (B, S)
    return fast_encode(model, source_ids, source_mask), source_mask


def _default_max_len(model: Seq2SeqTransformer, source_mask: Tensor, max_len: int | None) -> int:
    limit = model.config.max_len  # decoder positions 0 .. max_len - 1
    if max_len is None:
        longest = int(source_mask.sum(1).max().item())
        return min(limit, 2 * longest + 10)
    return min(limit, _checks.positive_int(max_len, "max_len"))


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer,
    source_ids: Tensor,
    source_mask: Tensor | None = None,
    *,
    max_len: int | None = None,
    return_attention: bool = False,
    use_cache: bool = True,
    reuse_context: bool = True,
) -> list[Hypothesis]:
    """Greedy decoding of a batch.

    Args:
        model: the translator (put it in eval mode).
        source_ids: (B, S) long source ids.
        source_mask: (B, S) bool, True = valid token; None when nothing is padded.
        max_len: most tokens produced per sentence (EOS included); default ``2 S + 10``,
            capped by the model's ``max_len``.
        return_attention: fill `Hypothesis.attention` (layers, heads, T, S).
        use_cache: incremental decoder self-attention (False recomputes the whole prefix).
        reuse_context: use the prepared cross-attention K/V (False projects them at every step).

    Returns:
        One `Hypothesis` per input row.
    """
    memory, source_mask = _prepare(model, source_ids, source_mask)
    steps = _default_max_len(model, source_mask, max_len)
    layers = list(range(len(model.decoder))) if return_attention else []
    step = make_stepper(
        model, memory, source_mask, beams=1, steps=steps, layers=layers, use_cache=use_cache,
        reuse_context=reuse_context,
    )  # fmt: skip
    b, dev, cfg = source_ids.shape[0], source_ids.device, model.config
    produced = torch.full((b, steps), cfg.pad_id, dtype=torch.long, device=dev)
    token = torch.full((b,), cfg.bos_id, dtype=torch.long, device=dev)
    scores = torch.zeros(b, dtype=torch.float32, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    lengths = torch.full((b,), steps, dtype=torch.long, device=dev)
    attns: list[Tensor] = []
    for t in range(steps):
        logits, attn = step.step(token)  # (B, V), (B, layers, heads, S)
        logp, token = torch.log_softmax(logits, -1).max(-1)  # (B,): the chosen token
        token.masked_fill_(done, cfg.pad_id)
        scores += logp.masked_fill_(done, 0.0)
        produced[:, t] = token
        if attn is not None:
            attns.append(attn)
        ended = (token == cfg.eos_id) & ~done
        lengths.masked_fill_(ended, t + 1)
        done |= ended
        if bool(done.all()):  # the one read from the device per step
            break
    out = []
    columns = _valid_column_indices(source_mask)
    rows, ends, finished = produced.tolist(), lengths.tolist(), done.tolist()
    totals = scores.tolist()
    for i in range(b):
        n = ends[i]
        tokens = rows[i][: n - 1] if finished[i] else rows[i][:n]
        att = None
        if attns:
            att = torch.stack([a[i] for a in attns[:n]], 2)  # (layers, H, T, S)
            att = _take_columns(att, columns[i])  # (layers, H, T, S_i)
        out.append(Hypothesis(tokens, totals[i], finished[i], att))
    return out


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    source_ids: Tensor,
    source_mask: Tensor | None = None,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    return_attention: bool = False,
    use_cache: bool = True,
    reuse_context: bool = True,
    n_best: int | None = None,
) -> list[Hypothesis] | list[list[Hypothesis]]:
    """Beam search of a batch; returns the best finished hypothesis of each input (with
    ``n_best``, a list of the ``n_best`` best ones, best first).

    Hypotheses are ranked by ``score / ((5 + length) / 6) ** length_penalty`` (GNMT). An input is
    done once it has ``beam_size`` finished hypotheses (or at ``max_len``, where the unfinished
    beams are ranked too). Every step runs on tensors for the whole batch (`BeamState`); the
    only read from the device per step is whether every input is done.

    Args:
        model: the translator (put it in eval mode).
        source_ids: (B, S) long.
        source_mask: (B, S) bool, True = valid token; None when nothing is padded.
        beam_size: beams per input (1 is greedy with the same ranking).
        length_penalty: alpha of the GNMT length penalty (0 ranks by raw log-probability).
        max_len: most tokens produced (EOS included); default ``2 S + 10`` capped by the model.
        return_attention: fill `Hypothesis.attention` (layers, heads, T, S).
        use_cache: incremental decoder self-attention (False recomputes the whole prefix).
        reuse_context: use the prepared cross-attention K/V (False projects them at every step).
        n_best: return up to this many hypotheses per input (1 to ``beam_size``).

    Returns:
        One `Hypothesis` per input row; with ``n_best``, one list of hypotheses per input row.
    """
    beam_size = _checks.positive_int(beam_size, "beam_size")
    if n_best is not None:  # 1 to beam_size
        n_best = _checks.integer(n_best, "n_best", minimum=1, maximum=beam_size)
    memory, source_mask = _prepare(model, source_ids, source_mask)
    steps = _default_max_len(model, source_mask, max_len)
    layers = list(range(len(model.decoder))) if return_attention else []
    step = make_stepper(
        model, memory, source_mask, beams=beam_size, steps=steps, layers=layers,
        use_cache=use_cache, reuse_context=reuse_context,
    )  # fmt: skip
    cfg = model.config
    state = BeamState(
        source_ids.shape[0], beam_size, steps, cfg, float(length_penalty), source_ids.device,
        n_best=n_best or 1,
    )  # fmt: skip
    token = state.first_tokens()
    for t in range(steps):
        logits, attn = step.step(token)  # (B*k, V), (B*k, layers, heads, S)
        rows, token = state.advance(torch.log_softmax(logits, -1), attn, t)
        if bool(state.done.all()):  # the one read from the device per step
            break
        if t + 1 < steps:  # the caches follow the beams into the next step
            step.reorder(rows)
    else:  # length limit: rank the unfinished beams too
        state.close()
    out = []
    columns = _valid_column_indices(source_mask)
    for i, ranked in enumerate(state.results()):
        hyps = []
        for tokens, score, ended, att in ranked:
            if att is not None:
                att = _take_columns(att.permute(1, 2, 0, 3), columns[i])  # (layers, H, T, S_i)
            hyps.append(Hypothesis(tokens, score, ended, att))
        out.append(hyps if n_best is not None else hyps[0])
    return out


@torch.no_grad()
def force_decode_attention(
    model: Seq2SeqTransformer,
    source_ids: Tensor,
    source_mask: Tensor | None,
    target_ids: Tensor,
    target_lengths: Tensor,
) -> list[Tensor]:
    """Cross-attention of every layer and head while the model reads a given translation:
    `force_decode`'s ``attention``.

    Args:
        source_ids: (B, S) long; source_mask: (B, S) bool, True = valid (None: no padding).
        target_ids: (B, T) long target ids without BOS/EOS, padded with any id of the target
            vocabulary.
        target_lengths: (B,) number of valid target tokens per row.

    Returns:
        Per row, weights (layers, heads, n + 1, S_b) for n = its target length and S_b its valid
        source length: row t is the step producing target token t (the last row produces EOS),
        the same layout as `Hypothesis.attention`.
    """
    args = (model, source_ids, source_mask, target_ids, target_lengths)
    return force_decode(*args, log_probs=False).attention


class ForcedDecoding(NamedTuple):
    """What `force_decode` returns.

    Attributes:
        attention: per row, weights (layers, heads, n + 1, S_b) for n = its target length and
            S_b its valid source length (see `force_decode_attention`).
        log_probs: (B,) float32, the log-probability of each row's target followed by EOS, as
            `Hypothesis.score` sums it; None when not asked for.
    """

    attention: list[Tensor]
    log_probs: Tensor | None


def force_decode(
    model: Seq2SeqTransformer,
    source_ids: Tensor,
    source_mask: Tensor | None,
    target_ids: Tensor,
    target_lengths: Tensor,
    *,
    log_probs: bool = True,
) -> ForcedDecoding:
    """The model reads given translations (arguments as `force_decode_attention`): the
    cross-attention of every layer and head, and each translation's log-probability (None
    when not ``log_probs``: a log-softmax over the whole target vocabulary at every step)."""
    cfg = model.config
    b = source_ids.shape[0]
    if source_mask is None:
        source_mask = torch.ones_like(source_ids, dtype=torch.bool)
    _checks.tensor(target_ids, "target_ids", rank=2, legend="(B, T)")
    if (
        not isinstance(target_lengths, Tensor)
        or target_lengths.dtype.is_floating_point
        or target_lengths.dtype == torch.bool
    ):
        raise TypeError(
            f"target_lengths must be a (B,) integer tensor, got {type(target_lengths).__name__}"
            + (f" of {target_lengths.dtype}" if isinstance(target_lengths, Tensor) else "")
        )
    t = target_ids.shape[1]
    if target_lengths.shape != (b,) or target_ids.shape[0] != b:
        raise ValueError(
            f"source_ids has B={b} rows: target_ids must be (B, T) and target_lengths (B,), got "
            f"{tuple(target_ids.shape)} and {tuple(target_lengths.shape)}"
        )
    if bool(((target_lengths < 0) | (target_lengths > t)).any()):
        raise ValueError(
            f"target_lengths must lie in 0..T = 0..{t} (the width of target_ids), got "
            f"{target_lengths.tolist()}"
        )
    bos = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=source_ids.device)
    target_in = torch.cat([bos, target_ids], 1)  # (B, T + 1): BOS y1 .. yT
    layers = list(range(len(model.decoder)))
    out = model(source_ids, source_mask, target_in, attention_layers=layers)
    weights = torch.stack([out.cross_weights[i] for i in layers], 1)  # (B, layers, H, T+1, S)
    lengths = target_lengths.tolist()
    columns = _valid_column_indices(source_mask)
    attention = [_take_columns(weights[i, :, :, : lengths[i] + 1], columns[i]).float()
                 for i in range(b)]  # fmt: skip
    if not log_probs:
        return ForcedDecoding(attention, None)
    return ForcedDecoding(attention, _target_log_probs(out.logits, target_ids, target_lengths, cfg))


def _target_log_probs(logits: Tensor, target_ids: Tensor, lengths: Tensor, cfg: Any) -> Tensor:
    """(B,) float32: the summed log-probability of y1 .. yn EOS under `logits` (B, T + 1, V),
    PAD and BOS ruled out as decoding rules them out (a target holds neither)."""
    b, t = target_ids.shape
    never = torch.tensor([cfg.pad_id, cfg.bos_id], device=logits.device)
    logits = logits.float().index_fill(-1, never, float("-inf"))  # a new tensor
    lengths = lengths.to(target_ids.device).long()
    gold = torch.cat([target_ids, target_ids.new_full((b, 1), cfg.pad_id)], 1)  # (B, T + 1)
    gold = gold.scatter(1, lengths.unsqueeze(1), cfg.eos_id)  # EOS right after each target
    picked = torch.log_softmax(logits, -1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    valid = torch.arange(t + 1, device=gold.device) <= lengths.unsqueeze(1)
    return picked.masked_fill(~valid, 0.0).sum(1)


def _valid_column_indices(source_mask: Tensor) -> list[Tensor | None]:
    """Per row, the indices of its valid source columns (None: all valid), wherever the padding
    is. The mask is read from the device once for the whole batch."""
    rows = source_mask.cpu()
    full = rows.all(1).tolist()
    return [None if full[i] else r.nonzero().squeeze(1) for i, r in enumerate(rows)]


def _take_columns(att: Tensor, columns: Tensor | None) -> Tensor:
    """(..., S) -> (..., S_i): the columns of one row's valid source tokens."""
    if columns is None:
        return att.contiguous()
    return att.index_select(-1, columns.to(att.device))
