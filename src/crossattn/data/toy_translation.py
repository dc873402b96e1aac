"""A deterministic English-to-French-like toy language with gold word alignments.

``generate_corpus(seed)`` draws sentence pairs from a small grammar: subject, verb, object,
prepositional phrases, adverbs, relative clauses and coordinated clauses, over a lexicon of a few
hundred words. Language 0 is English to (simplified) French:

* nouns carry gender and number, and determiners and adjectives agree with them
  ("the red cars" -> "les voitures rouges", "a small house" -> "une petite maison");
* most adjectives move after the noun ("the red car" -> "la voiture rouge"), a few stay before
  it ("the big car" -> "la grande voiture"); "very" moves with its adjective;
* frequency adverbs move after the verb ("the cat often sleeps" -> "le chat dort souvent") and
  object pronouns before it ("sees him" -> "le voit");
* negation is one-to-many: "does not see" -> "ne voit pas", "never sees" -> "ne voit jamais";
* some prepositions are one-to-many ("near" -> "près de") or many-to-one ("in front of" ->
  "devant"), "to the" contracts to "au", "le"/"la" elide to "l'" before a vowel.

Sentences have ``min_len`` to ``max_len`` words on both sides (3 to 20 by default). The target is a
function of the source (one correct translation per sentence), so exact match is a fair metric.

Gold alignment convention (as in the human gold standards of Och & Ney 2003 and Mihalcea &
Pedersen 2003): a link is **sure** where a word has a clear counterpart (cat-chat, the-le,
not-ne and not-pas, in/front/of-devant, to-au and the-au) and **possible** where a word has none
and is linked only to the words it goes with: English do-support ("does" -> the French verb and
its negation particles), verb particles with no French counterpart ("looks at" -> "regarde": at
is possible to "regarde"), French articles with no English counterpart ("cats" -> "des chats":
"des" is possible to "cats") and prepositions a French verb requires ("enters the house" ->
"entre dans la maison": "dans" is possible to "enters"), and the reflexive "se" ("rests" ->
"se repose": "se" is possible to "rests"). ``ParallelExample.sure`` and
``ParallelExample.possible`` are disjoint; the P of AER is their union. Every word on both sides
has at least one link.

``language=k`` with ``k > 0`` gives another toy language from the same grammar: every word of both
sides gets a new made-up surface form (drawn from ``k``), and the target's word-order rules are
redrawn (adjective placement, determiner before or after the noun, verb-final order, negation as
one or two particles, object-pronoun placement, prepositions or postpositions), at least three of
them different from language 0. A model trained on language 0 has never seen it. Language 9 has
more constructions, which no other language draws: it is verb-final with postpositions, the
determiner and the possessor after the noun ("the dog 's ball" -> "ball dog the GEN", the GEN
particle sure to "'s"), a case particle after the subject and the object (NOM, ACC) and a plural
word after a plural noun (PL, the noun itself singular); the particles and the plural word are
possible links of the noun (or subject pronoun) they mark.

Example::

    corpus = generate_corpus(seed=0)            # 20,000 / 500 / 500 pairs, well under 5 s
    ex = corpus.train[0]
    ex.source, ex.target, sorted(ex.sure), sorted(ex.possible)
    write_corpus(corpus, "data/toy")            # train.txt, train.align, dev.txt, ...
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import _checks
from ._toy_grammar import _CONTRACTIONS, _ELISIONS, _sentence
from ._toy_languages import _lexicon
from .parallel import ParallelExample

__all__ = [
    "ParallelExample",
    "ToyCorpus",
    "generate_corpus",
    "in_vocabulary",
    "language_rules",
    "vocabulary",
    "word_classes",
    "write_corpus",
]


@dataclass(frozen=True)
class ToyCorpus:
    """Train, dev and test splits of one toy language; no source sentence is in two splits."""

    train: list[ParallelExample]
    dev: list[ParallelExample]
    test: list[ParallelExample]
    seed: int = 0
    language: int = 0

    def splits(self) -> dict[str, list[ParallelExample]]:
        return {"train": self.train, "dev": self.dev, "test": self.test}


def generate_corpus(
    seed: int = 0,
    *,
    n_train: int = 20000,
    n_dev: int = 500,
    n_test: int = 500,
    min_len: int = 3,
    max_len: int = 20,
    language: int = 0,
) -> ToyCorpus:
    """Draw a toy parallel corpus with gold alignments, deterministically from ``seed``.

    Args:
        seed: an int; the same seed (and arguments) gives the same corpus.
        n_train, n_dev, n_test: number of pairs per split. Dev and test are drawn first, so they
            do not change with ``n_train``.
        min_len, max_len: both sides have between ``min_len`` and ``max_len`` words (inclusive);
            ints with ``1 <= min_len <= max_len``.
        language: 0 is English to French-like; ``k > 0`` is another made-up language pair with
            its own words and word-order rules (see the module docstring).

    Returns:
        A ``ToyCorpus``; no source sentence occurs twice in it, so the splits are disjoint.

    Raises:
        TypeError: an argument that is not an int (bools are refused).
        ValueError: a negative count or language, or lengths outside the grammar's range.
    """
    seed = _checks.integer(seed, "seed")
    n_train, n_dev, n_test, min_len, max_len, language = _checks.nonnegative_ints(
        n_train=n_train, n_dev=n_dev, n_test=n_test, min_len=min_len, max_len=max_len,
        language=language,
    )  # fmt: skip
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if min_len > 12 or max_len < 3:
        raise ValueError(
            f"the toy grammar makes sentences of about 3 to 40 words; min_len={min_len}, "
            f"max_len={max_len} leaves too few of them"
        )
    lex = _lexicon(language)
    rng = random.Random(seed * 1_000_003 + language)
    total = n_dev + n_test + n_train
    seen: set[tuple[str, ...]] = set()
    examples: list[ParallelExample] = []
    attempts = 0
    while len(examples) < total:
        attempts += 1
        if attempts > 20 * total + 10_000:
            raise RuntimeError(
                f"could draw only {len(examples)} distinct pairs of {min_len} to {max_len} words "
                f"out of {total} requested"
            )
        ex = _sentence(rng, lex)
        if not (min_len <= len(ex.source) <= max_len and min_len <= len(ex.target) <= max_len):
            continue
        if ex.source in seen:
            continue
        seen.add(ex.source)
        examples.append(ex)
    dev, test = examples[:n_dev], examples[n_dev : n_dev + n_test]
    return ToyCorpus(
        train=examples[n_dev + n_test :], dev=dev, test=test, seed=seed, language=language
    )


def write_corpus(corpus: ToyCorpus, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``{split}.txt`` (``source ||| target`` lines) and ``{split}.align`` (Pharaoh lines,
    0-indexed, ``i-j`` sure and ``ipj`` possible) for train, dev and test. Returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, examples in corpus.splits().items():
        text = directory / f"{split}.txt"
        align = directory / f"{split}.align"
        text.write_text(
            "".join(f"{' '.join(e.source)} ||| {' '.join(e.target)}\n" for e in examples),
            encoding="utf-8",
        )
        align.write_text("".join(e.pharaoh() + "\n" for e in examples), encoding="utf-8")
        paths[split] = text
        paths[f"{split}_align"] = align
    return paths


def vocabulary(language: int = 0) -> tuple[frozenset[str], frozenset[str]]:
    """Every word the grammar of ``language`` can produce: (source words, target words)."""
    lex = _lexicon(language)
    src: set[str] = set(lex.src.values())
    tgt: set[str] = set(lex.tgt.values())
    for noun in lex.animate + lex.inanimate:
        src.update(noun[:2])
        tgt.update(noun[2:4])
    for en, forms, _ in lex.adjectives:
        src.add(en)
        tgt.update(forms)
    for verb in lex.intransitive:
        src.update(verb[:2])
        tgt.update(" ".join(verb[2:]).split())
    for verb in lex.transitive:
        src.update(w for w in (verb[0], verb[1], verb[2]) if w)
        tgt.update(w for w in (verb[3], verb[4], verb[5]) if w)
    for forms in lex.determiners.values():
        src.update(" ".join(w for w in forms[:2] if w).split())
        tgt.update(" ".join(w for w in forms[2:] if w).split())
    for en, fr, _ in lex.prepositions + lex.end_adverbs:
        src.update(en)
        tgt.update(fr)
    for en, fr in lex.freq_adverbs + lex.object_pronouns:
        src.add(en)
        tgt.add(fr)
    for en, fr, _, _ in lex.subject_pronouns:
        src.add(en)
        tgt.add(fr)
    if lex.rules.french_phonology:
        tgt.update(_CONTRACTIONS.values())
        tgt.update(_ELISIONS.values())
    return frozenset(src), frozenset(tgt)


def in_vocabulary(sentence: str | list[str] | tuple[str, ...], language: int = 0) -> bool:
    """Whether every word of ``sentence`` is in the source vocabulary of ``language``."""
    words = sentence.split(" ") if isinstance(sentence, str) else list(sentence)
    src, _ = vocabulary(language)
    return all(w in src for w in words if w)


def word_classes(language: int = 0) -> dict[str, frozenset[str]]:
    """Source words of ``language`` by grammatical class, for tests and analysis.

    Keys: ``masculine_nouns``, ``feminine_nouns`` (singular forms, by the target's gender),
    ``plural_nouns``, ``adjectives_before``, ``adjectives_after`` (where the target places them),
    ``intransitive_verbs``, ``transitive_verbs`` (both verb forms).
    """
    lex = _lexicon(language)
    nouns = lex.animate + lex.inanimate
    rules = lex.rules

    def before(pre: bool) -> bool:
        if rules.adjectives == "lexical":
            return pre
        if rules.adjectives == "flipped":
            return not pre
        return rules.adjectives == "all_pre"

    return {
        "masculine_nouns": frozenset(n[0] for n in nouns if n[4] == "m"),
        "feminine_nouns": frozenset(n[0] for n in nouns if n[4] == "f"),
        "plural_nouns": frozenset(n[1] for n in nouns),
        "adjectives_before": frozenset(a[0] for a in lex.adjectives if before(a[2])),
        "adjectives_after": frozenset(a[0] for a in lex.adjectives if not before(a[2])),
        "intransitive_verbs": frozenset(w for v in lex.intransitive for w in v[:2]),
        "transitive_verbs": frozenset(w for v in lex.transitive for w in v[:2]),
    }


def language_rules(language: int = 0) -> dict[str, object]:
    """The target word-order rules of ``language`` (language 0: French-like), as a dict."""
    return asdict(_lexicon(language).rules)
