"""The translation service behind `crossattn serve`: one sentence in, one JSON answer out.

`TranslationService.answer` checks a sentence against the limits, translates it with the model
(one call at a time) and describes the result: tokens, the word alignment, and the viewer's data
of the cross-attention. Input it refuses raises `RequestError` with the HTTP status to answer.
"""

from __future__ import annotations

import threading
from typing import Any

from ... import _checks
from ...data.parallel import ALIGNMENT_FORMATS, alignment_as, strip_line_end
from .._record import as_record
from ..html import payload

__all__ = ["RequestError", "TranslationService"]


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message for the person typing.

    ``close`` asks the server to close the connection after answering (a body it did not read).
    """

    def __init__(self, status: int, message: str, *, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class TranslationService:
    """Translate one sentence at a time with a `crossattn.models.Translator` and describe it.

    Args:
        translator: a loaded `Translator`.
        max_words: the longest sentence accepted, in words (capped by what the model takes).
        max_chars: the longest sentence accepted, in characters.
        beam: beam size (1 for greedy decoding).
        alignment_format: ``"pharaoh"`` (a string ``"0-0 1-2"``) or ``"pairs"`` (``[[0, 0],
            [1, 2]]``): how the answer gives the alignment.
    """

    def __init__(
        self,
        translator: Any,
        *,
        max_words: int = 64,
        max_chars: int = 1000,
        beam: int = 4,
        alignment_format: str = "pharaoh",
    ):
        _checks.choice(alignment_format, "alignment_format", ALIGNMENT_FORMATS)
        max_words, max_chars, beam = _checks.positive_ints(
            max_words=max_words, max_chars=max_chars, beam=beam
        )
        try:
            model_limit = int(translator.model.config.max_len) - 2  # room for BOS and EOS
        except (AttributeError, TypeError, ValueError) as err:
            raise TypeError(
                "translator must be a loaded crossattn.models.Translator, got "
                f"{type(translator).__name__}"
            ) from err
        self.translator = translator
        self.max_words = max(1, min(max_words, model_limit))
        self.max_chars = max_chars
        self.beam = beam
        self.alignment_format = alignment_format
        self._lock = threading.Lock()

    def answer(self, sentence: Any) -> dict[str, Any]:
        """The JSON answer for one sentence; raises `RequestError` for input it refuses."""
        words = self._words(sentence)
        import torch

        with self._lock, torch.no_grad():
            result = self.translator.translate(list(words), beam=self.beam)
        source, target = list(result.source_tokens), list(result.target_tokens)
        answer: dict[str, Any] = {
            "translation": " ".join(target),
            "source": source,
            "target": target,
            "alignment": alignment_as(result.alignment, self.alignment_format),
            "score": float(result.score),
            "unknown": result.unknown,  # source words the model does not know (became <unk>)
            "unknown_words": list(result.unknown_words),
            "view": None,
        }
        if target:
            record = as_record(
                result.weights,
                source,
                target,
                predicted=list(result.alignment),
                layer_names=[f"decoder layer {i}" for i in range(result.weights.shape[0])],
            )
            answer["view"] = payload(
                record, title=" ".join(source), caption="\u2192 " + " ".join(target)
            )
        return answer

    def _words(self, sentence: Any) -> list[str]:
        """The sentence's words, once it passes every limit; `RequestError` otherwise."""
        if not isinstance(sentence, str):
            raise RequestError(400, 'send a JSON object {"sentence": "..."} with a string')
        sentence = strip_line_end(sentence)
        bad = next((c for c in sentence if "\ud800" <= c <= "\udfff"), None)
        if bad is not None:
            raise RequestError(
                400,
                f"the sentence holds a lone UTF-16 surrogate (\\u{ord(bad):04x}), which is not "
                "text: send valid Unicode",
            )
        if len(sentence) > self.max_chars:
            raise RequestError(
                413, f"the sentence has {len(sentence)} characters; the limit is {self.max_chars}"
            )
        words = self.translator.tokenize(sentence)
        if not words:
            raise RequestError(400, "the sentence is empty: type some words to translate")
        if len(words) > self.max_words:
            raise RequestError(
                413, f"the sentence has {len(words)} words; the limit is {self.max_words}"
            )
        reason = self.translator.too_long(words)  # subwords: a word may be several tokens
        if reason:
            raise RequestError(413, reason)
        return words
