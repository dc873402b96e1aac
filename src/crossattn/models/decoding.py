"""Greedy and beam-search decoding for `Seq2SeqTransformer`.

The source is encoded and projected to every decoder layer's cross-attention keys and values once
(`Seq2SeqTransformer.prepare_contexts`). Beam search selects the rows of those prepared contexts
once, when it widens each input to its beams (all beams of one input share one source, so later
reorderings of beams never touch them); only the decoder self-attention caches follow the beams.

Shapes: source_ids (B, S) long, source_mask (B, S) bool with True = valid token.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..layers.attention import PreparedContext
from .seq2seq import Seq2SeqTransformer


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
) -> tuple[Tensor, Tensor, list[PreparedContext]]:
    if model.training:
        warnings.warn(
            "decoding a model in training mode: dropout is active, so the result changes from "
            "call to call; call model.eval() first",
            stacklevel=4,  # _prepare, greedy_decode / beam_search, torch.no_grad's wrapper
        )
    if not isinstance(source_ids, Tensor):
        raise TypeError(f"source_ids must be a (B, S) long tensor, got {type(source_ids).__name__}")
    if source_ids.dim() != 2 or 0 in source_ids.shape:
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
    memory = model.encode(source_ids, source_mask)  # (B, S, D)
    return memory, source_mask, model.prepare_contexts(memory, source_mask)


def _default_max_len(model: Seq2SeqTransformer, source_mask: Tensor, max_len: int | None) -> int:
    limit = model.config.max_len  # decoder positions 0 .. max_len - 1
    if max_len is None:
        longest = int(source_mask.sum(1).max().item())
        return min(limit, 2 * longest + 10)
    if not isinstance(max_len, int) or max_len <= 0:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    return min(limit, max_len)


class _Stepper:
    """One decoding step, incremental (self-attention cache) or full recomputation."""

    def __init__(self, model, contexts, memory, source_mask, use_cache, reuse_context, layers):
        self.model, self.use_cache, self.layers = model, use_cache, layers
        self.contexts, self.memory, self.source_mask = contexts, memory, source_mask
        self.reuse_context = reuse_context
        self.caches: list[PreparedContext] | None = None

    def __call__(self, prefix: Tensor) -> tuple[Tensor, Tensor | None]:
        """prefix (N, t) -> log-probs (N, V) of the next token, attention (N, layers, heads, S)."""
        kw = dict(attention_layers=self.layers)
        if self.reuse_context:
            kw["contexts"] = self.contexts
        else:  # project the encoder output to K/V again, at every step
            kw.update(contexts=self.memory, source_mask=self.source_mask)
        if self.use_cache:
            out = self.model.decode(prefix[:, -1:], caches=self.caches, use_cache=True, **kw)
            self.caches = out.caches
        else:
            out = self.model.decode(prefix, **kw)
        logits = out.logits[:, -1].float()  # (N, V)
        cfg = self.model.config
        logits[:, [cfg.pad_id, cfg.bos_id]] = float("-inf")  # never produced
        logp = torch.log_softmax(logits, dim=-1)
        attn = None
        if self.layers:
            attn = torch.stack([out.cross_weights[i][:, :, -1] for i in self.layers], 1)
        return logp, attn  # attn: (N, layers, heads, S)

    def reorder(self, rows: Tensor) -> None:
        if self.caches is not None:
            self.caches = [c.index_select(rows) for c in self.caches]


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
    memory, source_mask, contexts = _prepare(model, source_ids, source_mask)
    steps = _default_max_len(model, source_mask, max_len)
    layers = list(range(len(model.decoder))) if return_attention else []
    step = _Stepper(model, contexts, memory, source_mask, use_cache, reuse_context, layers)
    b = source_ids.shape[0]
    cfg = model.config
    prefix = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=source_ids.device)
    scores = torch.zeros(b, dtype=torch.float32, device=source_ids.device)
    done = torch.zeros(b, dtype=torch.bool, device=source_ids.device)
    lengths = torch.full((b,), steps, dtype=torch.long, device=source_ids.device)
    attns: list[Tensor] = []
    for t in range(steps):
        logp, attn = step(prefix)
        token = logp.argmax(-1)  # (B,)
        token = torch.where(done, torch.full_like(token, cfg.pad_id), token)
        scores += torch.where(done, 0.0, logp.gather(1, token[:, None])[:, 0])
        if attn is not None:
            attns.append(attn)
        ended = ~done & (token == cfg.eos_id)
        lengths = torch.where(ended, t + 1, lengths)
        done |= ended
        prefix = torch.cat([prefix, token[:, None]], 1)
        if bool(done.all()):
            break
    out = []
    columns = _valid_column_indices(source_mask)
    for i in range(b):
        n = int(lengths[i])
        seq = prefix[i, 1 : n + 1].tolist()
        finished = bool(done[i])
        tokens = seq[:-1] if finished else seq
        att = None
        if attns:
            att = torch.stack([a[i] for a in attns[:n]], 2)  # (layers, H, T, S)
            att = _take_columns(att, columns[i])  # (layers, H, T, S_i)
        out.append(Hypothesis(tokens, float(scores[i]), finished, att))
    return out


def _length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016); 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


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
    beams are ranked too).

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
    if not isinstance(beam_size, int) or beam_size <= 0:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if n_best is not None and not (isinstance(n_best, int) and 1 <= n_best <= beam_size):
        raise ValueError(f"n_best must be an int in 1..beam_size={beam_size}, got {n_best!r}")
    memory, source_mask, contexts = _prepare(model, source_ids, source_mask)
    steps = _default_max_len(model, source_mask, max_len)
    b, k, dev = source_ids.shape[0], beam_size, source_ids.device
    cfg = model.config
    # Widen every input to its k beams, once: rows b*k .. b*k + k - 1 belong to input b.
    contexts = [c.repeat_interleave(k) for c in contexts]
    memory = memory.repeat_interleave(k, 0)  # (B*k, S, D), only used without reuse_context
    wide_mask = source_mask.repeat_interleave(k, 0)
    layers = list(range(len(model.decoder))) if return_attention else []
    step = _Stepper(model, contexts, memory, wide_mask, use_cache, reuse_context, layers)
    prefix = torch.full((b * k, 1), cfg.bos_id, dtype=torch.long, device=dev)
    alive = torch.full((b, k), float("-inf"), device=dev)
    alive[:, 0] = 0.0  # all beams start equal: keep one
    history: Tensor | None = None  # (B*k, t, layers, heads, S)
    finished: list[list[tuple[float, float, list[int], Tensor | None, bool]]] = [
        [] for _ in range(b)
    ]
    done = [False] * b
    neg_inf = float("-inf")
    for _ in range(steps):
        logp, attn = step(prefix)  # (B*k, V), (B*k, layers, heads, S)
        vocab = logp.shape[-1]
        cand = (alive.reshape(b * k, 1) + logp).view(b, k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (B, 2k)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        rows, tokens, new_alive = [], [], []
        end_rows: list[tuple[int, int, float]] = []
        for i in range(b):
            kept = 0
            if not done[i]:
                for s, idx in zip(top_scores[i], top_idx[i]):
                    if s == neg_inf or kept == k:
                        break
                    row, tok = i * k + idx // vocab, idx % vocab
                    if tok == cfg.eos_id:
                        if len(finished[i]) < k:
                            end_rows.append((i, row, s))
                        continue
                    rows.append(row)
                    tokens.append(tok)
                    new_alive.append(s)
                    kept += 1
            for _ in range(kept, k):  # pad with dead beams
                rows.append(i * k)
                tokens.append(cfg.pad_id)
                new_alive.append(neg_inf)
        for i, row, s in end_rows:
            att = None
            if attn is not None:
                last = attn[row][None]  # (1, layers, heads, S)
                att = last if history is None else torch.cat([history[row], last], 0)
            seq = prefix[row, 1:].tolist()
            finished[i].append(
                (s / _length_penalty(len(seq) + 1, length_penalty), s, seq, att, True)
            )
        for i in range(b):
            if not done[i] and len(finished[i]) >= k:
                done[i] = True
        if all(done):
            break
        index = torch.tensor(rows, dtype=torch.long, device=dev)
        step.reorder(index)
        prefix = torch.cat(
            [prefix.index_select(0, index), torch.tensor(tokens, device=dev)[:, None]], 1
        )
        if attn is not None:
            step_attn = attn.index_select(0, index)[:, None]  # (B*k, 1, layers, heads, S)
            history = (
                step_attn
                if history is None
                else torch.cat([history.index_select(0, index), step_attn], 1)
            )
        alive = torch.tensor(new_alive, device=dev).view(b, k)
        for i in range(b):
            if done[i]:
                alive[i] = neg_inf
    else:  # length limit: rank the unfinished beams too
        for i in range(b):
            if done[i]:
                continue
            for j in range(k):
                s = float(alive[i, j])
                if s == neg_inf:
                    continue
                row = i * k + j
                seq = prefix[row, 1:].tolist()
                att = None if history is None else history[row]
                finished[i].append(
                    (s / _length_penalty(len(seq), length_penalty), s, seq, att, False)
                )
    out = []
    columns = _valid_column_indices(source_mask)
    for i in range(b):
        ranked = sorted(finished[i], key=lambda h: h[0], reverse=True)  # stable: ties keep order
        hyps = []
        for _, s, seq, att, ended in ranked[: n_best or 1]:
            if att is not None:
                att = _take_columns(att.permute(1, 2, 0, 3), columns[i])  # (layers, H, T, S_i)
            hyps.append(Hypothesis(seq, s, ended, att))
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
    """Cross-attention of every layer and head while the model reads a given translation.

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
    cfg = model.config
    b = source_ids.shape[0]
    if source_mask is None:
        source_mask = torch.ones_like(source_ids, dtype=torch.bool)
    if not isinstance(target_ids, Tensor):
        raise TypeError(f"target_ids must be a (B, T) long tensor, got {type(target_ids).__name__}")
    if target_ids.dim() != 2:
        raise ValueError(
            f"target_ids must be a (B, T) long tensor, got shape {tuple(target_ids.shape)}"
        )
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
    return [_take_columns(weights[i, :, :, : lengths[i] + 1], columns[i]).float() for i in range(b)]


def _valid_column_indices(source_mask: Tensor) -> list[Tensor | None]:
    """Per row, the indices of its valid source columns (None: all valid), wherever the padding
    is. The mask is read from the device once for the whole batch."""
    rows = source_mask.cpu()
    return [None if bool(r.all()) else r.nonzero().squeeze(1) for r in rows]


def _take_columns(att: Tensor, columns: Tensor | None) -> Tensor:
    """(..., S) -> (..., S_i): the columns of one row's valid source tokens."""
    if columns is None:
        return att.contiguous()
    return att.index_select(-1, columns.to(att.device))
