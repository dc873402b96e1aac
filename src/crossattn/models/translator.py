"""`Translator`: a trained model directory behind one call, ``translate(sentence)``.

Example::

    from crossattn.models import Translator

    tr = Translator.load("demo-out/model")
    result = tr.translate("the red car")
    result.target_tokens   # ('la', 'voiture', 'rouge')
    result.alignment       # [(0, 0), (1, 2), (2, 1)]  (source i, target j), 0-indexed
    result.weights.shape   # (layers, heads, T, S): T target words, S source words
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import torch
from torch import Tensor

from .decoding import beam_search, force_decode_attention, greedy_decode
from .seq2seq import PAD_ID, Seq2SeqTransformer
from .vocab import Vocabulary


@dataclass
class TranslationResult:
    """One translated (or force-decoded) sentence with its cross-attention and word alignment.

    Attributes:
        source_tokens: the source words.
        target_tokens: the target words produced (or given, when force-decoding).
        weights: cross-attention (layers, heads, T, S) float32, T = len(target_tokens),
            S = len(source_tokens); row j is the decoder step that produced target word j.
        alignment: sorted word links (i, j): source word i, target word j, 0-indexed.
        score: log-probability of the translation (EOS included).
        decoder_attention: the full map (layers, heads, T + 1, S) in the layout of
            `crossattn.align`: row 0 reads the start token, row j + 1 reads target word j.
    """

    source_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]
    weights: Tensor
    alignment: list[tuple[int, int]]
    score: float
    decoder_attention: Tensor

    @property
    def translation(self) -> str:
        return " ".join(self.target_tokens)

    def pharaoh(self) -> str:
        """The alignment as one Pharaoh line ``i-j ...`` (0-indexed)."""
        return " ".join(f"{i}-{j}" for i, j in self.alignment)


class Translator:
    """A model with its vocabularies and alignment extraction, as saved by `crossattn train`.

    Args:
        model: the translator.
        source_vocab, target_vocab: its vocabularies.
        extraction: a `crossattn.align.ExtractionConfig` (default: `DEFAULT_EXTRACTION`).
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        source_vocab: Vocabulary,
        target_vocab: Vocabulary,
        extraction=None,
    ):
        from ..align import DEFAULT_EXTRACTION

        self.model = model.eval()
        self.source_vocab = source_vocab
        self.target_vocab = target_vocab
        self.extraction = DEFAULT_EXTRACTION if extraction is None else extraction

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        compute_type: str = "float32",
    ) -> Translator:
        """Load a model directory written by `crossattn train` (or `crossattn demo`).

        `compute_type` is one of `crossattn.models.COMPUTE_TYPES` (see `quantize`).
        """
        from ..align import DEFAULT_EXTRACTION, ExtractionConfig
        from ..train import EXTRACTION_FILE, load_model
        from .quantize import check_compute_type, quantize

        check_compute_type(compute_type)
        model, src, tgt = load_model(directory)
        model = quantize(model.to(device), compute_type, inplace=True)
        path = Path(directory) / EXTRACTION_FILE
        extraction = (
            ExtractionConfig.from_dict(json.loads(path.read_text()))
            if path.is_file()
            else DEFAULT_EXTRACTION
        )
        return cls(model, src, tgt, extraction)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def tokenize(sentence: str | Sequence[str]) -> tuple[str, ...]:
        """Words of a sentence: stripped, then split on runs of ASCII spaces."""
        from ..data.parallel import tokenize

        if isinstance(sentence, str):
            return tokenize(sentence)
        if not isinstance(sentence, Sequence) or not all(isinstance(w, str) for w in sentence):
            raise TypeError(
                "a sentence is a string or a sequence of word strings, got "
                f"{type(sentence).__name__}"
                + ("" if not isinstance(sentence, Sequence) else " holding non-strings")
            )
        return tuple(sentence)

    def _source(self, words: Sequence[tuple[str, ...]]) -> tuple[Tensor, Tensor]:
        limit = self.model.config.max_len
        for w in words:
            if not w:
                raise ValueError("cannot translate an empty sentence")
            if len(w) > limit:
                raise ValueError(f"sentence has {len(w)} words; this model takes at most {limit}")
        s = max(len(w) for w in words)
        ids = torch.full((len(words), s), PAD_ID, dtype=torch.long)
        for r, w in enumerate(words):
            ids[r, : len(w)] = torch.tensor(self.source_vocab.encode(w), dtype=torch.long)
        ids = ids.to(self.device)
        return ids, ids != PAD_ID

    def _result(self, source, target, full, score) -> TranslationResult:
        from ..align import extract_alignment

        full = full.float().cpu()
        if target:
            links = extract_alignment(full, self.extraction, len(source), len(target))
        else:
            links = set()
        return TranslationResult(
            source_tokens=tuple(source),
            target_tokens=tuple(target),
            weights=full[:, :, : len(target)].contiguous(),
            alignment=sorted(links),
            score=score,
            decoder_attention=full,
        )

    @torch.no_grad()
    def translate_batch(
        self,
        sentences: Sequence[str | Sequence[str]],
        *,
        beam: int = 4,
        length_penalty: float = 0.6,
        max_len: int | None = None,
    ) -> list[TranslationResult]:
        """Translate sentences (strings or word lists); see `translate`."""
        if isinstance(sentences, str):
            raise TypeError(
                "translate_batch takes a list of sentences, got one string; use "
                "translate(sentence) for one sentence, or translate_batch([sentence])"
            )
        if not isinstance(beam, Integral) or isinstance(beam, bool) or beam < 1:
            raise ValueError(f"beam must be a positive int (1 = greedy), got {beam!r}")
        beam = int(beam)
        if not math.isfinite(length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
        words = [self.tokenize(s) for s in sentences]
        if not words:
            return []
        ids, mask = self._source(words)
        if beam == 1:
            hyps = greedy_decode(self.model, ids, mask, max_len=max_len, return_attention=True)
        else:
            hyps = beam_search(
                self.model, ids, mask, beam_size=beam, length_penalty=length_penalty,
                max_len=max_len, return_attention=True,
            )  # fmt: skip
        out = []
        for w, h in zip(words, hyps):
            target = self.target_vocab.decode(h.tokens)
            full = h.attention
            if not h.finished:  # no EOS row: repeat the last row so row j + 1 exists
                full = torch.cat([full, full[:, :, -1:]], 2)
            out.append(self._result(w, target, full, h.score))
        return out

    def translate(
        self,
        sentence: str | Sequence[str],
        *,
        beam: int = 4,
        length_penalty: float = 0.6,
        max_len: int | None = None,
    ) -> TranslationResult:
        """Translate one sentence and align it.

        Args:
            sentence: a string (split on spaces) or a sequence of words.
            beam: beam size (1 for greedy decoding).
            length_penalty: GNMT length-penalty alpha of beam search.
            max_len: most target words (default: twice the source length + 10).

        Returns:
            `TranslationResult` (tokens, weights (layers, heads, T, S), alignment, score).
        """
        return self.translate_batch([sentence], beam=beam, length_penalty=length_penalty,
                                    max_len=max_len)[0]  # fmt: skip

    @torch.no_grad()
    def align(self, source: str | Sequence[str], target: str | Sequence[str]) -> TranslationResult:
        """Force-decode a given translation and align it (the score is its log-probability)."""
        src, tgt = self.tokenize(source), self.tokenize(target)
        if not tgt:
            raise ValueError("target is empty: nothing to align")
        ids, mask = self._source([src])
        tgt_ids = torch.tensor(
            [self.target_vocab.encode(tgt)], dtype=torch.long, device=self.device
        )
        if len(tgt) + 1 > self.model.config.max_len:
            raise ValueError(f"target has {len(tgt)} words; this model takes at most "
                             f"{self.model.config.max_len - 1}")  # fmt: skip
        full = force_decode_attention(self.model, ids, mask, tgt_ids, torch.tensor([len(tgt)]))[0]
        return self._result(src, tgt, full, float("nan"))
