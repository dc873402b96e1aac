"""The other toy languages: ``language=k`` with ``k > 0``, made up from language 0.

Every word of both sides gets a new made-up surface form (drawn from ``k``), and the target's
word-order rules are redrawn (adjective placement, determiner before or after the noun,
verb-final order, negation as one or two particles, object-pronoun placement, prepositions or
postpositions), at least three of them different from language 0. A language in
`_FIXED_RULES` then has the rules it lists set, whatever was drawn: language 9 is verb-final,
with postpositions, the determiner and the possessor after the noun, case particles and a
plural word. `_lexicon` gives any language's lexicon, built once.
"""

from __future__ import annotations

import dataclasses
import random

from .._checks import nonnegative_int
from ._toy_lexicon import _SRC_FUNCTION, _TGT_FUNCTION, _french_lexicon, _Lexicon, _Rules

# Rules set after the draw. Language 9: the order of a verb-final, postpositional language with
# possessors after the noun ("the dog 's ball" -> "ball dog the GEN"), a case particle after the
# subject and the object, and a plural word after a plural noun (both possible links of the noun).
_FIXED_RULES: dict[int, dict[str, bool]] = {
    9: {
        "verb_final": True,
        "postpositions": True,
        "det_after_noun": True,
        "possessors_after_noun": True,
        "case_particles": True,
        "plural_word": True,
    }
}
# The function words the constructions of `_FIXED_RULES` need: source "'s"; target GEN, NOM,
# ACC and PL (keys of `_Lexicon.src` and `_Lexicon.tgt`).
_POSSESSIVE_SRC, _EXTRA_TGT = "'s", ("GEN", "NOM", "ACC", "PL")


class _WordMaker:
    """Made-up words from a language's own syllables; never the same word twice."""

    def __init__(self, rng: random.Random, consonants: str, vowels: str, codas: str) -> None:
        self.rng, self.c, self.v, self.codas = rng, consonants, vowels, codas
        self.used: set[str] = set()

    def __call__(self, syllables: int | None = None) -> str:
        rng = self.rng
        while True:
            n = syllables or rng.choice((1, 2, 2, 2, 3))
            word = "".join(rng.choice(self.c) + rng.choice(self.v) for _ in range(n))
            if rng.random() < 0.4:
                word += rng.choice(self.codas)
            if word not in self.used:
                self.used.add(word)
                return word


def _draw_rules(rng: random.Random, language: int) -> _Rules:
    """The target's word-order rules: drawn until at least three differ from language 0, then
    those of `_FIXED_RULES` set."""
    while True:
        rules = _Rules(
            adjectives=rng.choice(("lexical", "all_post", "all_pre", "flipped")),
            det_after_noun=rng.random() < 0.5,
            verb_final=rng.random() < 0.5,
            negation=rng.choice(("circum", "pre", "post")),
            clitic_before_verb=rng.random() < 0.5,
            freq_after_verb=rng.random() < 0.5,
            postpositions=rng.random() < 0.5,
            french_phonology=False,
        )
        if rules.differences() >= 4:  # french_phonology plus at least three word-order rules
            return dataclasses.replace(rules, **_FIXED_RULES.get(language, {}))


def _made_up_lexicon(language: int) -> _Lexicon:
    base = _french_lexicon()
    rng = random.Random(f"crossattn-toy-language-{language}")
    rules = _draw_rules(rng, language)
    src_word = _WordMaker(rng, "bdfgklmnprstvz", "aeiou", "nrsl")
    tgt_word = _WordMaker(rng, "bcdfgklmnpqrstvxz", "aeiouy", "mnrtk")
    # Inflection suffixes hold a letter (h, j, w) that no stem has, so an inflected form is never
    # another word's stem.
    src_pl, src_3sg = rng.choice(("hen", "jir", "wos")), rng.choice(("hat", "jek", "wum"))
    tgt_pl, tgt_fem, tgt_vpl = rng.choice(("jai", "wou", "hei")), "h" + rng.choice("aei"), "jont"
    src_fn: dict[str, str] = {}
    tgt_fn: dict[str, str] = {}

    def s(word: str) -> str:  # an english function word, consistently
        if word not in src_fn:
            src_fn[word] = src_word(1)
        return src_fn[word]

    def t(word: str) -> str:  # a french function word, consistently
        if word not in tgt_fn:
            tgt_fn[word] = tgt_word(1)
        return tgt_fn[word]

    def noun(entry: tuple[str, str, str, str, str]) -> tuple[str, str, str, str, str]:
        a, b = src_word(), tgt_word()
        return (a, a + src_pl, b, b + tgt_pl, rng.choice("mf"))

    adjectives = []
    for _, _, pre in base.adjectives:
        b = tgt_word()
        adjectives.append((src_word(), (b, b + tgt_fem, b + tgt_pl, b + tgt_fem + tgt_pl), pre))
    intransitive = []
    for _ in base.intransitive:
        a, b = src_word(), tgt_word()
        intransitive.append((a + src_3sg, a, b, b + tgt_vpl))
    transitive = []
    for _, _, particle, _, _, prep in base.transitive:
        a, b = src_word(), tgt_word()
        transitive.append(
            (
                a + src_3sg,
                a,
                s(particle) if particle else None,
                b,
                b + tgt_vpl,
                t(prep) if prep else None,
            )
        )
    determiners = {}
    for name, forms in base.determiners.items():
        en = tuple(None if w is None else " ".join(s(x) for x in w.split()) for w in forms[:2])
        fr = tuple(None if w is None else " ".join(t(x) for x in w.split()) for w in forms[2:])
        determiners[name] = en + fr

    def phrase(entries):
        return [
            (tuple(s(w) for w in en), tuple(t(w) for w in fr), links) for en, fr, links in entries
        ]

    lex = _Lexicon(
        animate=[noun(e) for e in base.animate],
        inanimate=[noun(e) for e in base.inanimate],
        adjectives=adjectives,
        intransitive=intransitive,
        transitive=transitive,
        determiners=determiners,
        prepositions=phrase(base.prepositions),
        end_adverbs=phrase(base.end_adverbs),
        freq_adverbs=[(s(en), t(fr)) for en, fr in base.freq_adverbs],
        subject_pronouns=[(s(en), t(fr), n, g) for en, fr, n, g in base.subject_pronouns],
        object_pronouns=[(s(en + "_obj"), t(fr + "_obj")) for en, fr in base.object_pronouns],
        rules=rules,
    )
    lex.src = {w: s(w) for w in _SRC_FUNCTION}
    lex.tgt = {w: t(w) for w in _TGT_FUNCTION}
    lex.src["an"] = lex.determiners["a"][0]  # no a/an alternation in made-up languages
    if rules.possessors_after_noun or rules.case_particles or rules.plural_word:
        # drawn last, so that every other word is the same as without these rules
        lex.src[_POSSESSIVE_SRC] = s(_POSSESSIVE_SRC)
        lex.tgt.update((w, t(w)) for w in _EXTRA_TGT)
    return lex


_LEXICONS: dict[int, _Lexicon] = {}


def _lexicon(language: int) -> _Lexicon:
    """The words and rules of `language`, an int >= 0 (checked here, for every caller)."""
    language = nonnegative_int(language, "language")
    if language not in _LEXICONS:
        _LEXICONS[language] = _french_lexicon() if language == 0 else _made_up_lexicon(language)
    return _LEXICONS[language]
