"""Tokenizers: a sentence's words to model token ids and back, and which word each token is in.

A **word** is a whitespace-separated token of the input (`crossattn.data.parallel.tokenize`).
The model reads and writes **tokens**: one per word with `WordTokenizer` (a `Vocabulary`, the
default), or subwords with `SubwordTokenizer` (BPE or unigram, trained by the Hugging Face
``tokenizers`` library, with the ``▁`` word-start marker of SentencePiece). Everything the
user sees stays in words: `Encoding.word_of` maps each token to its word, `Tokenizer.decode`
joins tokens back into words, `subword_links` spreads word links over tokens (gold alignments
for training) and `pool_to_words` turns a token-level attention map into a word-level one.

Unicode normalisation (``"nfkc"``, ``"nfc"`` or ``"none"``) is applied to each word before it is
looked up; ``"nfkc"`` is the default of ``bpe`` and ``unigram``, ``"none"`` that of ``word``.

A model directory holds its vocabularies (``source_vocab.json``, ``target_vocab.json``: the
token strings by id) and, unless the tokenizer is ``word`` without normalisation, a
``tokenizer.json`` (`TOKENIZER_FILE`) with the kind, the normalisation and, for subwords, both
trained ``tokenizers`` models. A directory without it (every directory written before subwords
existed) is read as ``word`` without normalisation, exactly as before.

Example::

    from crossattn.models.tokenizer import train_tokenizer

    tok = train_tokenizer("bpe", [["the", "red", "car"], ["the", "cars"]] * 20, vocab_size=40)
    enc = tok.encode(["the", "cars"])
    enc.ids, enc.word_of          # token ids, and the word of each: (0, 1, 1, ...)
    tok.decode(enc.ids)           # (('the', 'cars'), (0, 1, 1, ...))
"""

from __future__ import annotations

import json
import os
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _checks
from .seq2seq import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from .vocab import SPECIALS, Vocabulary

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "KINDS",
    "NORMALIZATIONS",
    "TOKENIZER_FILE",
    "Encoding",
    "SubwordTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "default_normalization",
    "load_tokenizers",
    "pool_to_words",
    "resume_conflicts",
    "save_tokenizers",
    "subword_links",
    "train_tokenizer",
]

KINDS = ("word", "bpe", "unigram")
NORMALIZATIONS = ("nfkc", "nfc", "none")
DEFAULT_VOCAB_SIZE = 8000
"""Tokens per side of a subword tokenizer when no size is given (specials included)."""
TOKENIZER_FILE = "tokenizer.json"
WORD_START = "\u2581"  # "▁": marks the first token of a word (as in SentencePiece)
_NOT_TEXT = (PAD_ID, BOS_ID, EOS_ID)  # text never holds these: a word spelled so is unknown


def default_normalization(kind: str) -> str:
    """``"none"`` for ``word`` (the words as written), ``"nfkc"`` for subword kinds."""
    return "none" if kind == "word" else "nfkc"


@dataclass(frozen=True)
class Encoding:
    """The tokens of one sentence's words.

    Attributes:
        ids: token ids, one per token (no BOS or EOS).
        word_of: the word index of each token (non-decreasing; a word may have no token only
            when normalisation leaves nothing of it).
        unknown_words: the words (as given) with a token that became ``<unk>``, in order.
    """

    ids: tuple[int, ...]
    word_of: tuple[int, ...]
    unknown_words: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)


class Tokenizer(ABC):
    """One side's tokenizer (source or target): words to token ids and back.

    Attributes:
        kind: ``"word"``, ``"bpe"`` or ``"unigram"``.
        normalization: ``"nfkc"``, ``"nfc"`` or ``"none"``.
        vocab: the `Vocabulary` of token strings by id (what ``*_vocab.json`` holds).
    """

    kind: str
    normalization: str
    vocab: Vocabulary

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def one_token_per_word(self) -> bool:
        """Whether every word is exactly one token (then tokens and words are the same)."""
        return self.kind == "word"

    @abstractmethod
    def encode(self, words: Sequence[str]) -> Encoding:
        """The `Encoding` of a sentence given as its words."""

    def encode_batch(self, sentences: Sequence[Sequence[str]]) -> list[Encoding]:
        """`encode` of each sentence."""
        return [self.encode(words) for words in sentences]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """``(words, word_of)``: the words the token ids spell, and each token's word index."""

    def to_dict(self) -> dict[str, Any]:
        """What `TOKENIZER_FILE` stores for this side (besides the vocabulary)."""
        return {}


class WordTokenizer(Tokenizer):
    """One token per word, looked up in a `Vocabulary` (unknown words become ``<unk>``)."""

    kind = "word"

    def __init__(self, vocab: Vocabulary, normalization: str = "none"):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
        self.vocab = vocab
        self.normalization = _checks.choice(normalization, "normalization", NORMALIZATIONS)

    @classmethod
    def train(
        cls,
        sentences: Iterable[Sequence[str]],
        *,
        vocab_size: int | None = None,
        normalization: str = "none",
    ) -> WordTokenizer:
        """Every word of ``sentences``, most frequent first, at most ``vocab_size`` tokens
        (specials included; None: all)."""
        normalization = _checks.choice(normalization, "normalization", NORMALIZATIONS)
        norm = _normalizer(normalization)
        words = ([norm(w) for w in sent] for sent in sentences)
        return cls(Vocabulary.build(words, max_size=vocab_size), normalization)

    def encode(self, words: Sequence[str]) -> Encoding:
        norm = _normalizer(self.normalization)
        ids = self.vocab.encode([norm(w) for w in words])
        unknown = tuple(w for w, i in zip(words, ids) if i == UNK_ID)
        return Encoding(tuple(ids), tuple(range(len(ids))), unknown)

    def decode(self, ids: Iterable[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        words = tuple(self.vocab.decode(ids))
        return words, tuple(range(len(words)))


def _normalizer(normalization: str):
    if normalization == "none":
        return lambda word: word
    form = normalization.upper()
    return lambda word: unicodedata.normalize(form, word)


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as err:  # an optional dependency (the "train" extra)
        raise ImportError(
            "subword tokenizers need the Hugging Face 'tokenizers' package: "
            "pip install 'crossattn[train]' (or pip install tokenizers)"
        ) from err
    return tokenizers


class SubwordTokenizer(Tokenizer):
    """BPE or unigram subwords of a Hugging Face ``tokenizers.Tokenizer``.

    Each word is normalised, then split into tokens; the first token of a word starts with ``▁``.
    `decode` starts a new word at every token that starts with ``▁``. A word whose tokens hold
    ``<unk>`` (a character never seen in training, or a word spelled like a special token) is
    counted in `Encoding.unknown_words`.
    """

    def __init__(self, tokenizer: Any, kind: str, normalization: str):
        self.kind = _checks.choice(kind, "kind", KINDS[1:])
        self.normalization = _checks.choice(normalization, "normalization", NORMALIZATIONS)
        self._tokenizer = tokenizer
        tokenizer.encode_special_tokens = True  # text never holds specials (not saved: set here)
        n = tokenizer.get_vocab_size(with_added_tokens=True)
        self.vocab = Vocabulary([tokenizer.id_to_token(i) for i in range(n)])

    @classmethod
    def train(
        cls,
        sentences: Iterable[Sequence[str]],
        *,
        kind: str = "bpe",
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        normalization: str = "nfkc",
    ) -> SubwordTokenizer:
        """Train on ``sentences`` (word lists): about ``vocab_size`` tokens, specials included
        (fewer when the text has fewer distinct pieces; BPE keeps at least every character)."""
        tk = _import_tokenizers()
        kind = _checks.choice(kind, "kind", KINDS[1:])
        normalization = _checks.choice(normalization, "normalization", NORMALIZATIONS)
        if kind == "bpe":
            tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
            trainer = tk.trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False
            )
        else:
            tokenizer = tk.Tokenizer(tk.models.Unigram())
            trainer = tk.trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=list(SPECIALS), unk_token="<unk>",
                show_progress=False,
            )  # fmt: skip
        if normalization != "none":
            tokenizer.normalizer = getattr(tk.normalizers, normalization.upper())()
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace(
            replacement=WORD_START, prepend_scheme="always", split=True
        )
        tokenizer.train_from_iterator((" ".join(sent) for sent in sentences), trainer)
        if kind == "unigram":
            tokenizer = _sorted_unigram(tokenizer)
        return cls(tokenizer, kind, normalization)

    def encode(self, words: Sequence[str]) -> Encoding:
        return self.encode_batch([words])[0]

    def encode_batch(self, sentences: Sequence[Sequence[str]]) -> list[Encoding]:
        """`encode` of many sentences at once (faster)."""
        sentences = [list(words) for words in sentences]
        out = []
        nonempty = [words for words in sentences if words]
        done = iter(self._tokenizer.encode_batch(
            nonempty, is_pretokenized=True, add_special_tokens=False
        ))  # fmt: skip
        for words in sentences:
            if not words:
                out.append(Encoding((), ()))
                continue
            e = next(done)
            ids = tuple(UNK_ID if i in _NOT_TEXT else i for i in e.ids)
            word_of = tuple(e.word_ids)
            bad = sorted({w for w, i in zip(word_of, ids) if i == UNK_ID})
            out.append(Encoding(ids, word_of, tuple(words[w] for w in bad)))
        return out

    def decode(self, ids: Iterable[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        pieces = self.vocab.decode(ids)
        groups: list[list[str]] = []  # the pieces of each word
        word_of: list[int] = []
        for piece in pieces:
            if piece.startswith(WORD_START) or not groups:
                groups.append([])
            groups[-1].append(piece.removeprefix(WORD_START))
            word_of.append(len(groups) - 1)
        # a word left empty (a lone "▁" token) joins the next word, or the previous at the end
        texts = ["".join(g) for g in groups]
        keep = [k for k, text in enumerate(texts) if text]
        if not keep:
            return (), tuple(0 for _ in word_of)
        new_index, n = [], 0  # group k -> index of the first kept word at or after it
        for k in range(len(texts)):
            n += n < len(keep) and keep[n] < k
            new_index.append(min(n, len(keep) - 1))
        return tuple(texts[k] for k in keep), tuple(new_index[w] for w in word_of)

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizers": json.loads(self._tokenizer.to_str())}

    @classmethod
    def from_dict(cls, data: dict[str, Any], kind: str, normalization: str) -> SubwordTokenizer:
        tk = _import_tokenizers()
        return cls(tk.Tokenizer.from_str(json.dumps(data["tokenizers"])), kind, normalization)


def _sorted_unigram(tokenizer: Any) -> Any:
    """The unigram model made the same from run to run: the trainer's scores vary in their
    last bits (summation order) and it orders pieces of equal score at random. Scores are
    rounded to 1e-9, and the pieces follow the specials by falling score, then by name."""
    tk = _import_tokenizers()
    data = json.loads(tokenizer.to_str())
    pieces = data["model"]["vocab"]  # [[piece, log-probability], ...], the specials first
    n = len(SPECIALS)
    rest = [[piece, round(score, 9)] for piece, score in pieces[n:]]
    data["model"]["vocab"] = pieces[:n] + sorted(rest, key=lambda p: (-p[1], p[0]))
    return tk.Tokenizer.from_str(json.dumps(data))


def train_tokenizer(
    kind: str,
    sentences: Iterable[Sequence[str]],
    *,
    vocab_size: int | None = None,
    normalization: str | None = None,
) -> Tokenizer:
    """A tokenizer of ``kind`` (``word``, ``bpe``, ``unigram``) trained on word lists.

    ``vocab_size``: most tokens, specials included (None: every word for ``word``,
    `DEFAULT_VOCAB_SIZE` for subwords). ``normalization``: None for the kind's default
    (`default_normalization`).
    """
    kind = _checks.choice(kind, "kind", KINDS)
    if vocab_size is not None:  # specials included
        vocab_size = _checks.integer(vocab_size, "vocab_size", minimum=5)
    norm = default_normalization(kind) if normalization is None else normalization
    norm = _checks.choice(norm, "normalization", NORMALIZATIONS)
    if kind == "word":
        return WordTokenizer.train(sentences, vocab_size=vocab_size, normalization=norm)
    size = DEFAULT_VOCAB_SIZE if vocab_size is None else int(vocab_size)
    return SubwordTokenizer.train(sentences, kind=kind, vocab_size=size, normalization=norm)


# ----------------------------------------------------------------------------------- files
def save_tokenizers(directory: str | os.PathLike, source: Tokenizer, target: Tokenizer) -> None:
    """Write `TOKENIZER_FILE` into a model directory (atomically), or nothing for ``word``
    tokenizers without normalisation (such a directory reads as it always did). The
    vocabularies (``*_vocab.json``) are saved by the caller with ``tokenizer.vocab.save``."""
    if source.kind != target.kind:
        raise ValueError(f"source and target tokenizers differ: {source.kind} / {target.kind}")
    path = Path(directory) / TOKENIZER_FILE
    if source.kind == "word" and source.normalization == target.normalization == "none":
        return
    data = {
        "kind": source.kind,
        "source": {"normalization": source.normalization, **source.to_dict()},
        "target": {"normalization": target.normalization, **target.to_dict()},
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def load_tokenizers(
    directory: str | os.PathLike, source_vocab: Vocabulary, target_vocab: Vocabulary
) -> tuple[Tokenizer, Tokenizer]:
    """The (source, target) tokenizers of a model directory whose vocabularies are given.

    Without `TOKENIZER_FILE`: ``word`` tokenizers without normalisation. Raises `ValueError`
    when the file is malformed or does not match the vocabularies.
    """
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        return WordTokenizer(source_vocab), WordTokenizer(target_vocab)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = _checks.choice(data["kind"], "kind", KINDS)
        sides = []
        for side, vocab in (("source", source_vocab), ("target", target_vocab)):
            entry = data[side]
            norm = _checks.choice(entry["normalization"], "normalization", NORMALIZATIONS)
            if kind == "word":
                sides.append(WordTokenizer(vocab, norm))
                continue
            tok = SubwordTokenizer.from_dict(entry, kind, norm)
            if tok.vocab.tokens != vocab.tokens:
                raise ValueError(f"its {side} tokens differ from the {side} vocabulary")
            sides.append(tok)
    except ImportError:
        raise
    except Exception as err:  # KeyError, TypeError, ValueError, and what `tokenizers` raises
        raise ValueError(f"{path}: not a valid tokenizer file of this model ({err})") from err
    return sides[0], sides[1]


def resume_conflicts(
    directory: str | os.PathLike, tokenizer: str, normalization: str | None
) -> list[str]:
    """``"option saved -> given"`` for each tokenizer option that a resumed run of the model in
    ``directory`` cannot honour: a ``tokenizer`` other than ``"word"`` (the default) and the
    saved kind, a ``normalization`` other than None and the saved one."""
    path = Path(directory) / TOKENIZER_FILE
    kind, norm = "word", "none"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            kind, norm = data["kind"], data["source"]["normalization"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a valid tokenizer file of this model ({err})") from err
    out = []
    if tokenizer not in ("word", kind):
        out.append(f"tokenizer {kind!r} -> {tokenizer!r}")
    if normalization not in (None, norm):
        out.append(f"normalization {norm!r} -> {normalization!r}")
    return out


# ----------------------------------------------------------------------------------- words
def subword_links(
    links: Iterable[tuple[int, int]], source_word_of: Sequence[int], target_word_of: Sequence[int]
) -> frozenset[tuple[int, int]]:
    """Word links ``(i, j)`` spread over tokens: every token of source word i with every token
    of target word j (the inverse of `crossattn.align.word_links_from_subwords`)."""
    src: dict[int, list[int]] = {}
    tgt: dict[int, list[int]] = {}
    for k, w in enumerate(source_word_of):
        src.setdefault(w, []).append(k)
    for k, w in enumerate(target_word_of):
        tgt.setdefault(w, []).append(k)
    return frozenset((a, b) for i, j in links for a in src.get(i, ()) for b in tgt.get(j, ()))


def pool_to_words(
    attention: Tensor,
    source_word_of: Sequence[int],
    n_source_words: int,
    target_word_of: Sequence[int],
    n_target_words: int,
) -> Tensor:
    """A token-level cross-attention map pooled to words, for display.

    Args:
        attention: ``(layers, heads, T + 1, S)``: row t is the step predicting target token t
            (the last row predicts EOS), column k is source token k (columns past
            ``len(source_word_of)`` are dropped).
        source_word_of, target_word_of: each token's word (``len`` S' <= S and T).
        n_source_words, n_target_words: word counts.

    Returns:
        ``(layers, heads, n_target_words + 1, n_source_words)``: column i sums the columns of
        source word i's tokens; row j averages the rows predicting target word j's tokens; the
        last row is the EOS row. Rows keep summing to the attention on words.
    """
    import torch

    n_src, n_tgt = len(source_word_of), len(target_word_of)
    a = attention[..., : n_tgt + 1, :n_src].float()  # (L, H, T + 1, S')
    cols = torch.zeros(n_src, n_source_words)  # (S', n_source_words): token -> word
    cols[torch.arange(n_src), torch.as_tensor(list(source_word_of), dtype=torch.long)] = 1.0
    rows = torch.zeros(n_target_words + 1, n_tgt + 1)  # (n_target_words + 1, T + 1)
    rows[torch.as_tensor(list(target_word_of), dtype=torch.long), torch.arange(n_tgt)] = 1.0
    rows[n_target_words, n_tgt] = 1.0
    rows = rows / rows.sum(-1, keepdim=True).clamp_min(1.0)  # averages
    return torch.einsum("wt,lhts,sv->lhwv", rows, a, cols).contiguous()
