"""Models built on crossattn's layers: an encoder-decoder translator, its decoding and its API."""

from .decoding import Hypothesis, beam_search, force_decode_attention, greedy_decode
from .seq2seq import DecoderOutput, Seq2SeqConfig, Seq2SeqTransformer
from .vocab import Vocabulary

__all__ = [
    "DecoderOutput",
    "Hypothesis",
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "Translator",
    "TranslationResult",
    "Vocabulary",
    "beam_search",
    "force_decode_attention",
    "greedy_decode",
]


def __getattr__(name: str):
    # The high-level Translator needs crossattn.align; import it on first use.
    if name in ("Translator", "TranslationResult"):
        from . import translator

        return getattr(translator, name)
    raise AttributeError(name)
