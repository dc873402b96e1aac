"""Models built on crossattn's layers: an encoder-decoder translator, its decoding and its API."""

from .decoding import Hypothesis, beam_search, force_decode_attention, greedy_decode
from .quantize import COMPUTE_TYPES, quantize
from .seq2seq import DecoderOutput, Seq2SeqConfig, Seq2SeqTransformer
from .vocab import Vocabulary

__all__ = [
    "COMPUTE_TYPES",
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
    "quantize",
]


def __getattr__(name: str):
    # The high-level Translator needs crossattn.align; import it on first use.
    if name in ("Translator", "TranslationResult"):
        from . import translator

        return getattr(translator, name)
    raise AttributeError(name)
