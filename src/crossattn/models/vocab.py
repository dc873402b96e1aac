"""A word vocabulary: ids for tokens, with the special ids that `Seq2SeqConfig` expects."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .seq2seq import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids PAD_ID, BOS_ID, EOS_ID, UNK_ID


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int = PAD_ID, min_width: int = 0) -> Tensor:
    """Id sequences as one (B, W) long tensor, each row followed by ``pad_id`` up to the longest
    (W = the longest row, at least ``min_width``); ``ids != pad_id`` is the token mask (B, W)."""
    width = max([min_width, *(len(r) for r in rows)])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for r, row in enumerate(rows):
        if len(row):
            ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids


class Vocabulary:
    """Maps word tokens to ids and back. Ids 0-3 are ``<pad> <s> </s> <unk>``.

    Example::

        vocab = Vocabulary.build([["the", "red", "car"], ["the", "cat"]])
        ids = vocab.encode(["the", "cat"])  # [4, 6]
        vocab.save("vocab.json"); Vocabulary.load("vocab.json")
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the specials {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, c in Counter(tokens).items() if c > 1][:5]
            raise ValueError(f"vocabulary tokens must be unique; repeated: {dup}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        assert (self.index["<pad>"], self.index["<s>"]) == (PAD_ID, BOS_ID)
        assert (self.index["</s>"], self.index["<unk>"]) == (EOS_ID, UNK_ID)

    @classmethod
    def build(
        cls, sentences: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Every token seen at least ``min_count`` times, most frequent first (ties by name),
        at most ``max_size`` tokens in all, the specials included (None: no limit)."""
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size must be >= {len(SPECIALS)} (the specials), got {max_size}")
        counts = Counter(tok for sent in sentences for tok in sent)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))  # fmt: skip
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of the tokens; unknown tokens get ``UNK_ID``.

        Text never holds the specials: a word spelled ``<pad>``, ``<s>`` or ``</s>`` is an
        unknown word, not padding or a sentence boundary.
        """
        ids = [self.index.get(t, UNK_ID) for t in tokens]
        return [UNK_ID if i in (PAD_ID, BOS_ID, EOS_ID) else i for i in ids]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of the ids (specials included as their names)."""
        return [self.tokens[i] for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"tokens": [...]}`` as JSON, atomically (a temporary file, then a rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"tokens": self.tokens}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "tokens" not in data:
            raise ValueError(
                f"{path}: not a vocabulary file (expected a JSON object with 'tokens')"
            )
        return cls(data["tokens"])
