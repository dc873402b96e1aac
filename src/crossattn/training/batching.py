"""Sentence pairs as ids, the dev split, length-grouped batches and their padded tensors."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import nonnegative_int
from ..models.seq2seq import BOS_ID, EOS_ID, PAD_ID
from ..models.tokenizer import Tokenizer, subword_links
from ..models.vocab import pad_ids


@dataclass(frozen=True)
class Encoded:
    """A sentence pair as ids, with its gold links (0-indexed source i, target j)."""

    source: tuple[int, ...]
    target: tuple[int, ...]
    links: frozenset[tuple[int, int]]


def encode_examples(examples: Sequence[Any], source: Tokenizer, target: Tokenizer) -> list[Encoded]:
    """`ParallelExample`s as token ids, with their gold links (sure and possible) on tokens."""
    src = source.encode_batch([ex.source for ex in examples])
    tgt = target.encode_batch([ex.target for ex in examples])
    out = []
    for ex, s, t in zip(examples, src, tgt):
        links = frozenset(ex.sure) | frozenset(ex.possible)
        if not source.one_token_per_word or not target.one_token_per_word:
            links = subword_links(links, s.word_of, t.word_of)
        out.append(Encoded(s.ids, t.ids, links))
    return out


def split_dev(n: int, dev_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, dev) of n examples: a seeded random ``dev_size`` (at most n // 10) held out."""
    dev_size = nonnegative_int(dev_size, "dev_size")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(dev_size, n // 10)
    return sorted(order[k:]), sorted(order[:k])


def make_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group example indices of similar length into batches of at most ``batch_tokens``.

    ``lengths[i]`` is the padded cost of example i (source + target tokens). The grouping is
    deterministic; shuffle the batch order per epoch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if current and longest_if * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches


def pair_cost(e: Encoded) -> int:
    """The tokens a pair takes in a batch: source, target and BOS / EOS."""
    return len(e.source) + len(e.target) + 1


@dataclass
class Batch:
    """Padded tensors of a batch.

    source (B, S) long, source_mask (B, S) bool (True = valid), target_in (B, T) long (BOS y1 ..),
    target_out (B, T) long (y1 .. EOS, PAD elsewhere), align (B, T, S) float gold attention
    (rows sum to 1 where the target word has links, else 0) or None.
    """

    source: Tensor
    source_mask: Tensor
    target_in: Tensor
    target_out: Tensor
    align: Tensor | None

    def rows(self, index: slice) -> Batch:
        """The batch of these rows."""
        return Batch(
            self.source[index], self.source_mask[index], self.target_in[index],
            self.target_out[index], None if self.align is None else self.align[index],
        )  # fmt: skip

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device`` (itself on the CPU)."""
        if device.type == "cpu":
            return self
        return Batch(*(None if t is None else t.to(device) for t in dataclasses.astuple(self)))


def collate(examples: Sequence[Encoded], with_align: bool) -> Batch:
    """The padded `Batch` of ``examples`` (with the gold attention when ``with_align``)."""
    source = pad_ids([e.source for e in examples])
    target_in = pad_ids([(BOS_ID, *e.target) for e in examples])
    target_out = pad_ids([(*e.target, EOS_ID) for e in examples])
    align = None
    if with_align:
        align = torch.zeros(len(examples), target_in.shape[1], source.shape[1])  # (B, T, S)
        for r, e in enumerate(examples):
            for i, j in e.links:  # row j produces target word j
                align[r, j, i] = 1.0
        align = align / align.sum(-1, keepdim=True).clamp_min(1.0)
    return Batch(source, source != PAD_ID, target_in, target_out, align)


def batch_norm(batch: Batch) -> dict[str, float]:
    """The counts that normalise a batch's losses: ``tokens`` (target tokens with EOS),
    ``align_rows`` (target positions with gold links), ``source_tokens``."""
    align_rows = 0.0 if batch.align is None else float((batch.align.sum(-1) > 0).sum())
    return {
        "tokens": float((batch.target_out != PAD_ID).sum()),
        "align_rows": align_rows,
        "source_tokens": float(batch.source_mask.sum()),
    }
