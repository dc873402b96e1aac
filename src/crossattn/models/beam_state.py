"""`BeamState`: the bookkeeping of a batched beam search, in preallocated tensors.

For B inputs with k beams each (row r = b * k + j is beam j of input b) it keeps the alive beams'
scores (B, k), their tokens (B*k, max_len), optionally their cross-attention history, and per
input the best finished hypothesis so far (its GNMT-normalised score in float64, raw score,
tokens, length, attention) with the count of hypotheses finished. A step is a few tensor ops for
the whole batch; nothing is read from the device.

The rules are those of a plain per-input loop over the 2k best candidates of the step, in order:
a candidate with score -inf, or met once k beams are kept, ends the scan; an EOS candidate is a
finished hypothesis (added while the input has fewer than k from earlier steps) and is not kept;
any other candidate becomes a beam. An input is done once it has k finished hypotheses; at the
length limit its unfinished beams are ranked too. Among equal normalised scores the earliest
finished (then the best-ranked) hypothesis wins.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


def _length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016); 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


class BeamState:
    """Beams and finished hypotheses of B inputs (see the module docstring).

    Args:
        batch: B; beams: k; steps: the most tokens per hypothesis (EOS included).
        config: the model's `Seq2SeqConfig` (pad, bos, eos ids).
        alpha: the GNMT length-penalty exponent.
        device: where the state lives.
        n_best: N, how many of the best hypotheses to keep per input (1 to k), best first.
    """

    def __init__(
        self, batch: int, beams: int, steps: int, config, alpha: float, device, n_best: int = 1
    ):
        b, k, n = batch, beams, n_best
        self.b, self.k, self.n, self.steps, self.alpha = b, k, n, steps, alpha
        self.pad, self.bos, self.eos = config.pad_id, config.bos_id, config.eos_id
        self.alive = torch.full((b, k), NEG_INF, device=device)
        self.alive[:, 0] = 0.0  # all beams start equal: keep one
        self.tokens = torch.full((b * k, steps), self.pad, dtype=torch.long, device=device)
        self.history: Tensor | None = None  # (B*k, steps, layers, heads, S), made on first maps
        self.base = torch.arange(b, device=device)[:, None] * k  # (B, 1): row of beam 0
        self.done = torch.zeros(b, dtype=torch.bool, device=device)
        self.count = torch.zeros(b, dtype=torch.long, device=device)
        # the N best hypotheses so far, best first: (B, N), tokens (B, N, steps)
        self.best_norm = torch.full((b, n), NEG_INF, dtype=torch.float64, device=device)
        self.best_score = torch.zeros(b, n, device=device)
        self.best_len = torch.zeros(b, n, dtype=torch.long, device=device)
        self.best_finished = torch.zeros(b, n, dtype=torch.bool, device=device)
        self.best_tokens = torch.full((b, n, steps), self.pad, dtype=torch.long, device=device)
        self.best_attention: Tensor | None = None  # (B, N, steps, layers, heads, S)
        self.slots = torch.arange(k + 1, device=device)  # k: where dropped candidates go

    def first_tokens(self) -> Tensor:
        """(B*k,) the decoder inputs of the first step (BOS)."""
        return torch.full_like(self.tokens[:, 0], self.bos)

    def _offer(self, norm: Tensor, rows: Tensor, length: int, score: Tensor, ended: bool,
               attention: Tensor | None) -> None:  # fmt: skip
        """Insert, per input, the hypothesis ``rows`` (B,) among the N best if ``norm`` (B,) is
        high enough: after every kept one with an equal or higher score (the earlier of equals
        wins). ``length`` tokens of row ``rows`` are its tokens; ``attention`` (B, steps, ...)
        its maps."""
        b, n = self.b, self.n
        pos = (self.best_norm >= norm[:, None]).sum(1, keepdim=True)  # (B, 1); N: not kept
        slots = torch.arange(n, device=norm.device)[None]  # (1, N)
        new = slots == pos  # (B, N): the slot the hypothesis takes
        src = torch.where(slots < pos, slots, slots - 1).clamp_min(0)  # (B, N): shift down

        def place(old: Tensor, value: Tensor) -> Tensor:  # old (B, N, ...), value (B, ...)
            extra = [1] * (old.dim() - 2)
            shifted = old.gather(1, src.view(b, n, *extra).expand_as(old))
            return torch.where(new.view(b, n, *extra), value.unsqueeze(1).expand_as(old), shifted)

        self.best_norm = place(self.best_norm, norm)
        self.best_score = place(self.best_score, score)
        self.best_len = place(self.best_len, torch.full_like(rows, length))
        self.best_finished = place(
            self.best_finished, torch.full_like(rows, ended, dtype=torch.bool)
        )
        self.best_tokens = place(self.best_tokens, self.tokens.index_select(0, rows))
        if attention is not None:
            if self.best_attention is None:
                self.best_attention = attention.new_zeros(b, n, *attention.shape[1:])
            self.best_attention = place(self.best_attention, attention)

    def advance(self, logp: Tensor, attention: Tensor | None, t: int) -> tuple[Tensor, Tensor]:
        """Take step ``t``: logp (B*k, V) log-probabilities, attention (B*k, layers, heads, S).

        Returns:
            rows (B*k,): the parent row of each new beam (reorder the caches with it), and
            tokens (B*k,): each new beam's token, the decoder input of the next step.
        """
        b, k = self.b, self.k
        vocab = logp.shape[-1]
        cand = (self.alive.view(b * k, 1) + logp).view(b, k * vocab)
        top, index = cand.topk(min(2 * k, k * vocab), dim=1)  # (B, 2k), best first
        parent = self.base + torch.div(index, vocab, rounding_mode="floor")  # (B, 2k) rows
        token = index.remainder(vocab)
        valid = top > NEG_INF
        is_eos = token == self.eos
        keeps = valid & ~is_eos
        before = keeps.cumsum(1) - keeps.long()  # beams kept ahead of each candidate
        scanned = valid & (before < k) & ~self.done[:, None]
        # --- finished hypotheses: the best EOS candidate of this step, per input ---
        ends = scanned & is_eos & (self.count < k)[:, None]
        norm = torch.where(ends, top.double() / _length_penalty(t + 1, self.alpha), NEG_INF)
        if self.n == 1:  # only the best end of the step can matter
            order = norm.argmax(1, keepdim=True)  # (B, 1), the first of equals
        else:  # every end, in candidate order
            order = torch.arange(norm.shape[1], device=norm.device).expand_as(norm)
        for c in range(order.shape[1]):
            pick = order[:, c : c + 1]
            rows = parent.gather(1, pick)[:, 0]
            maps = None
            if attention is not None:
                maps = self._maps(attention, t).index_select(0, rows)  # (B, steps, ...)
                maps[:, t] = attention.index_select(0, rows)
            self._offer(norm.gather(1, pick)[:, 0], rows, t, top.gather(1, pick)[:, 0], True, maps)
        self.count += ends.sum(1)
        self.done |= self.count >= k
        # --- the new beams: the first k kept candidates, dead beams after them ---
        kept = scanned & keeps
        slot = torch.where(kept, before, k)  # (B, 2k), k for a dropped candidate
        alive = torch.full((b, k + 1), NEG_INF, device=top.device)
        alive.scatter_(1, slot, torch.where(kept, top, NEG_INF))
        rows = self.base.expand(b, k + 1).clone().scatter_(1, slot, parent)[:, :k]
        tokens = torch.full((b, k + 1), self.pad, dtype=torch.long, device=top.device)
        tokens = tokens.scatter_(1, slot, token)[:, :k]
        self.alive = alive[:, :k].masked_fill(self.done[:, None], NEG_INF)
        rows, tokens = rows.reshape(b * k), tokens.reshape(b * k)
        self.tokens = self.tokens.index_select(0, rows)
        self.tokens[:, t] = tokens
        if attention is not None:
            self.history = self.history.index_select(0, rows)
            self.history[:, t] = attention.index_select(0, rows)
        return rows, tokens

    def _maps(self, attention: Tensor, t: int) -> Tensor:
        if self.history is None:
            shape = (self.b * self.k, self.steps, *attention.shape[1:])
            self.history = attention.new_zeros(shape)
        return self.history

    def close(self) -> None:
        """At the length limit: rank the unfinished beams of the inputs not done."""
        norm = self.alive.double() / _length_penalty(self.steps, self.alpha)  # (B, k)
        norm = norm.masked_fill(self.done[:, None], NEG_INF)
        if self.n == 1:
            order = norm.argmax(1, keepdim=True)  # (B, 1)
        else:  # every beam, best first (beams are kept in rank order)
            order = torch.arange(self.k, device=norm.device).expand_as(norm)
        for c in range(order.shape[1]):
            pick = order[:, c : c + 1]
            rows = (self.base + pick)[:, 0]
            maps = None if self.history is None else self.history.index_select(0, rows)
            score = self.alive.gather(1, pick)[:, 0]
            self._offer(norm.gather(1, pick)[:, 0], rows, self.steps, score, False, maps)

    def results(self) -> list[list[tuple[list[int], float, bool, Tensor | None]]]:
        """Per input, its best hypotheses (up to N, best first): tokens, raw score, finished,
        attention (T, layers, heads, S) or None."""
        tokens, lengths = self.best_tokens.tolist(), self.best_len.tolist()
        scores, ended = self.best_score.tolist(), self.best_finished.tolist()
        kept = (self.best_norm > NEG_INF).tolist()
        out = []
        for i in range(self.b):
            hyps = []
            for m in range(self.n):
                if not kept[i][m] and m > 0:
                    break
                n = lengths[i][m]
                att = None
                if self.best_attention is not None:
                    att = self.best_attention[i, m, : n + (1 if ended[i][m] else 0)]
                hyps.append((tokens[i][m][:n], scores[i][m], ended[i][m], att))
            out.append(hyps)
        return out
