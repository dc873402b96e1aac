"""`Translator`: a trained model directory behind one call, ``translate(sentence)``.

Example::

    from crossattn.models import Translator

    tr = Translator.load("demo-out/model")
    result = tr.translate("the red car")
    result.target_tokens   # ('la', 'voiture', 'rouge')
    result.alignment       # [(0, 0), (1, 2), (2, 1)]  (source i, target j), 0-indexed
    result.weights.shape   # (layers, heads, T, S): T target words, S source words
    result.unknown         # how many source words the model does not know (they became <unk>)

A model trained with subwords (``crossattn train --tokenizer bpe``) reads and writes subword
tokens, but a result speaks in words: its tokens are whitespace-separated words, its alignment
links words (a word pair is linked when any of their subword pairs is) and its maps are pooled
to words; the token-level view is `TranslationResult.subwords`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import _checks
from .decoding import beam_search, force_decode, greedy_decode
from .seq2seq import PAD_ID, Seq2SeqTransformer
from .tokenizer import Encoding, Tokenizer, WordTokenizer, load_tokenizers, pool_to_words
from .vocab import Vocabulary, pad_ids


@dataclass
class SubwordView:
    """The token-level side of a result from a subword model.

    Attributes:
        source_tokens, target_tokens: the subword strings (``▁`` starts a word).
        source_word_of, target_word_of: the word index of each token.
        attention: (layers, heads, T + 1, S) float32 for T target and S source tokens, in the
            layout of `crossattn.align` (row t predicts target token t; the last row, EOS).
        alignment: sorted token links (source token k, target token t) before they are merged
            into word links.
    """

    source_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]
    source_word_of: tuple[int, ...]
    target_word_of: tuple[int, ...]
    attention: Tensor
    alignment: list[tuple[int, int]]


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
        unknown_words: the input words the model does not know (they became ``<unk>``):
            source words, then (for `Translator.align`) target words.
        subwords: the token-level view (`SubwordView`) for a subword model, else None. Then
            ``weights`` and ``decoder_attention`` are pooled to words (see
            `crossattn.models.tokenizer.pool_to_words`).
    """

    source_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]
    weights: Tensor
    alignment: list[tuple[int, int]]
    score: float
    decoder_attention: Tensor
    unknown_words: tuple[str, ...] = ()
    subwords: SubwordView | None = None

    @property
    def unknown(self) -> int:
        """How many input words the model does not know (``len(unknown_words)``)."""
        return len(self.unknown_words)

    @property
    def translation(self) -> str:
        return " ".join(self.target_tokens)

    def pharaoh(self) -> str:
        """The alignment as one Pharaoh line ``i-j ...`` (0-indexed)."""
        return " ".join(f"{i}-{j}" for i, j in self.alignment)


class Translator:
    """A model with its tokenizers and alignment extraction, as saved by `crossattn train`.

    Args:
        model: the translator.
        source_vocab, target_vocab: its source and target tokenizers, or `Vocabulary` objects
            (read as `WordTokenizer` without normalisation).
        extraction: a `crossattn.align.ExtractionConfig` (default: `DEFAULT_EXTRACTION`).

    Attributes: ``source_tokenizer`` and ``target_tokenizer``; ``source_vocab`` and
    ``target_vocab``, their vocabularies of token strings.
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        source_vocab: Vocabulary | Tokenizer,
        target_vocab: Vocabulary | Tokenizer,
        extraction=None,
    ):
        from ..align import DEFAULT_EXTRACTION

        self.model = model.eval()
        self.source_tokenizer = _as_tokenizer(source_vocab, "source_vocab")
        self.target_tokenizer = _as_tokenizer(target_vocab, "target_vocab")
        self.source_vocab = self.source_tokenizer.vocab
        self.target_vocab = self.target_tokenizer.vocab
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
        from .checkpoint import EXTRACTION_FILE, load_model
        from .quantize import check_compute_type, quantize

        check_compute_type(compute_type)
        model, src, tgt = load_model(directory)
        src, tgt = load_tokenizers(directory, src, tgt)
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

    def too_long(self, source: Sequence[str], target: Sequence[str] | None = None) -> str:
        """Why the model cannot take these words (source, and target to align), or ``""``.

        A source takes at most ``max_len`` tokens, a target ``max_len - 1`` (room for EOS);
        with subwords, a word may be several tokens.
        """
        limit = self.model.config.max_len
        reasons = []
        for side, words, most, tok in (
            ("source", source, limit, self.source_tokenizer),
            ("target", target, limit - 1, self.target_tokenizer),
        ):
            if words is None:
                continue
            n = len(words) if tok.one_token_per_word else len(tok.encode(words))
            if n > most:
                unit = "words" if tok.one_token_per_word else f"tokens ({len(words)} words)"
                reasons.append(f"the {side} has {n} {unit}; this model takes at most {most}")
        return "; ".join(reasons)

    def _source(self, encodings: Sequence[Encoding]) -> tuple[Tensor, Tensor]:
        """Padded source ids (B, S) and their mask (B, S), True = a token."""
        ids = pad_ids([e.ids for e in encodings]).to(self.device)
        return ids, ids != PAD_ID

    def _encode_sources(self, words: Sequence[tuple[str, ...]]) -> list[Encoding]:
        for w in words:
            if not w:
                raise ValueError("cannot translate an empty sentence")
        encodings = self.source_tokenizer.encode_batch(words)
        limit = self.model.config.max_len
        for w, e in zip(words, encodings):
            if len(e) > limit:
                unit = "words" if self.source_tokenizer.one_token_per_word else "tokens"
                raise ValueError(f"sentence has {len(e)} {unit}; this model takes at most {limit}")
            if not e.ids:
                raise ValueError(f"sentence {' '.join(w)[:60]!r} has no token after normalisation")
        return encodings

    def _result(
        self, source: Sequence[str], src: Encoding, target: Sequence[str],
        tgt: Encoding, full: Tensor, score: float, unknown: tuple[str, ...],
    ) -> TranslationResult:  # fmt: skip
        """The result in words from the token-level map ``full`` (layers, heads, T + 1, S) of
        the source words and their tokens ``src``, the target words and their tokens ``tgt``."""
        from ..align import extract_alignment, word_links_from_subwords

        full = full.float().cpu()
        n_src, n_tgt = len(src), len(tgt)
        links = extract_alignment(full, self.extraction, n_src, n_tgt) if n_tgt else set()
        view = None
        if not (self.source_tokenizer.one_token_per_word and
                self.target_tokenizer.one_token_per_word):  # fmt: skip
            view = SubwordView(
                tuple(self.source_vocab.decode(src.ids)),
                tuple(self.target_vocab.decode(tgt.ids)),
                src.word_of, tgt.word_of, full[:, :, : n_tgt + 1, :n_src], sorted(links),
            )  # fmt: skip
            links = word_links_from_subwords(links, src.word_of, tgt.word_of)
            full = pool_to_words(full, src.word_of, len(source), tgt.word_of, len(target))
        return TranslationResult(
            source_tokens=tuple(source),
            target_tokens=tuple(target),
            weights=full[:, :, : len(target)].contiguous(),
            alignment=sorted(links),
            score=score,
            decoder_attention=full,
            unknown_words=unknown,
            subwords=view,
        )

    @torch.no_grad()
    def translate_batch(
        self,
        sentences: Sequence[str | Sequence[str]],
        *,
        beam: int = 4,
        length_penalty: float = 0.6,
        max_len: int | None = None,
        n_best: int | None = None,
    ) -> list[TranslationResult] | list[list[TranslationResult]]:
        """Translate sentences (strings or word lists); see `translate`. With ``n_best`` (1 to
        ``beam``), each sentence gets a list of up to ``n_best`` results, best first."""
        if isinstance(sentences, str):
            raise TypeError(
                "translate_batch takes a list of sentences, got one string; use "
                "translate(sentence) for one sentence, or translate_batch([sentence])"
            )
        beam = _checks.positive_int(beam, "beam")
        length_penalty = _checks.finite_real(length_penalty, "length_penalty")
        if n_best is not None:  # 1 to beam
            n_best = _checks.integer(n_best, "n_best", minimum=1, maximum=beam)
        words = [self.tokenize(s) for s in sentences]
        if not words:
            return []
        encodings = self._encode_sources(words)
        ids, mask = self._source(encodings)
        if beam == 1:
            hyps = greedy_decode(self.model, ids, mask, max_len=max_len, return_attention=True)
            ranked = [[h] for h in hyps]
        else:
            ranked = beam_search(
                self.model, ids, mask, beam_size=beam, length_penalty=length_penalty,
                max_len=max_len, return_attention=True, n_best=int(n_best or 1),
            )  # fmt: skip
        out = []
        for w, e, hs in zip(words, encodings, ranked):
            results = []
            for h in hs:
                target, target_word_of = self.target_tokenizer.decode(h.tokens)
                full = h.attention
                if not h.finished:  # no EOS row: repeat the last row so row j + 1 exists
                    full = torch.cat([full, full[:, :, -1:]], 2)
                tgt = Encoding(tuple(h.tokens), target_word_of)
                results.append(self._result(w, e, target, tgt, full, h.score, e.unknown_words))
            out.append(results if n_best is not None else results[0])
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
            max_len: most target tokens (default: twice the source length + 10).

        Returns:
            `TranslationResult` (words, weights (layers, heads, T, S), alignment, score, and
            the source words unknown to the model).
        """
        return self.translate_batch([sentence], beam=beam, length_penalty=length_penalty,
                                    max_len=max_len)[0]  # fmt: skip

    @torch.no_grad()
    def align(self, source: str | Sequence[str], target: str | Sequence[str]) -> TranslationResult:
        """Force-decode a given translation and align it; the score is its log-probability
        under the model (EOS included), as `translate` scores its own translations."""
        return self.align_batch([source], [target])[0]

    @torch.no_grad()
    def align_batch(
        self,
        sources: Sequence[str | Sequence[str]],
        targets: Sequence[str | Sequence[str]],
        *,
        batch_size: int = 64,
    ) -> list[TranslationResult]:
        """Force-decode given translations and align them, ``batch_size`` pairs at a time.

        Returns one `TranslationResult` per pair, in order, with the word alignment, the maps
        and the unknown words (source, then target); the score is the log-probability of the
        target (EOS included) given the source. Raises `ValueError`
        naming the first pair (0-indexed) that is empty or too long (see `too_long`).
        """
        if isinstance(sources, str) or isinstance(targets, str):
            raise TypeError("align_batch takes lists of sentences; use align(source, target)")
        if len(sources) != len(targets):
            raise ValueError(f"sources ({len(sources)}) and targets ({len(targets)}) must pair up")
        batch_size = _checks.positive_int(batch_size, "batch_size")
        src_words = [self.tokenize(s) for s in sources]
        tgt_words = [self.tokenize(t) for t in targets]
        src_enc = self.source_tokenizer.encode_batch(src_words)
        tgt_enc = self.target_tokenizer.encode_batch(tgt_words)
        limit = self.model.config.max_len
        for k, (s, t) in enumerate(zip(src_enc, tgt_enc)):
            if not s.ids or not t.ids:
                side = "source" if not s.ids else "target"
                raise ValueError(f"pair {k}: the {side} is empty: nothing to align")
            if len(s) > limit or len(t) > limit - 1:
                raise ValueError(f"pair {k}: {self.too_long(src_words[k], tgt_words[k])}")
        order = sorted(range(len(src_enc)), key=lambda i: (len(src_enc[i]), len(tgt_enc[i])))
        out: list[TranslationResult | None] = [None] * len(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = self._source([src_enc[i] for i in idx])
            tgt_ids = pad_ids([tgt_enc[i].ids for i in idx])  # (B, T), 0 = <pad>
            lengths = torch.tensor([len(tgt_enc[i]) for i in idx])
            maps, log_probs = force_decode(self.model, ids, mask, tgt_ids.to(self.device), lengths)
            scores = log_probs.tolist()
            for r, i in enumerate(idx):
                unknown = src_enc[i].unknown_words + tgt_enc[i].unknown_words
                out[i] = self._result(src_words[i], src_enc[i], tgt_words[i], tgt_enc[i],
                                      maps[r], scores[r], unknown)  # fmt: skip
        return out  # type: ignore[return-value]


def _as_tokenizer(value: Vocabulary | Tokenizer, name: str) -> Tokenizer:
    if isinstance(value, Tokenizer):
        return value
    if isinstance(value, Vocabulary):
        return WordTokenizer(value)
    raise TypeError(f"{name} must be a Vocabulary or a Tokenizer, got {type(value).__name__}")


def describe_unknown(
    results: Sequence[TranslationResult], *, unit: str = "sentence", shown: int = 5
) -> str:
    """One line on the unknown words of results (``""`` when there is none), for a warning:
    how many, in how many sentences (or another ``unit``), and the first few words."""
    words = [w for r in results for w in r.unknown_words]
    if not words:
        return ""
    hit = sum(1 for r in results if r.unknown_words)
    first = list(dict.fromkeys(words))[:shown]
    more = ", ..." if len(set(words)) > shown else ""
    return (
        f"{len(words)} word(s) in {hit} of {len(results)} {unit}(s) are unknown to the model "
        f"and became <unk>: {', '.join(repr(w) for w in first)}{more}"
    )
