"""The toy grammar: one sentence pair with its gold alignment, drawn from a lexicon.

The source is built left to right; each constituent returns its target tokens as
``[word, [(source_index, sure), ...]]`` in target order, which its parent arranges by the
language's rules. See `crossattn.data.toy_translation` for the alignment convention.
"""

from __future__ import annotations

import random

from ._toy_lexicon import _DET_CUM, _DET_NAMES, _VOWELS, _Lexicon
from .parallel import ParallelExample

_Tok = list  # [str, list[tuple[int, bool]]]


class _Builder:
    __slots__ = ("rng", "lex", "src")

    def __init__(self, rng: random.Random, lex: _Lexicon) -> None:
        self.rng, self.lex, self.src = rng, lex, []

    def add(self, word: str) -> int:
        self.src.append(word)
        return len(self.src) - 1

    def adds(self, words: tuple[str, ...]) -> list[int]:
        return [self.add(w) for w in words]


def _phrase(b: _Builder, entry) -> list[_Tok]:
    en, fr, links = entry
    idx = b.adds(en)
    toks = [[w, []] for w in fr]
    for k, m in links:
        toks[m][1].append((idx[k], True))
    return toks


def _possessor(b: _Builder) -> list[_Tok]:
    """Source "the dog 's" (a noun phrase and the possessive word) -> target "dog the GEN"."""
    toks, _, _ = _noun_phrase(b, animate=True, possessor_ok=False)
    return toks + [[b.lex.tgt["GEN"], [(b.add(b.lex.src["'s"]), True)]]]


def _noun_phrase(
    b: _Builder, *, animate: bool, number: str | None = None, negated_object: bool = False,
    relative: bool = False, case: str | None = None, possessor_ok: bool = True,
) -> tuple[list[_Tok], str, str]:  # fmt: skip
    """Determiner or possessor, adjectives, noun, maybe a relative clause -> (tokens, number,
    gender). With the language's rules: a possessor after the noun, a plural word after a plural
    noun and the ``case`` particle (``"NOM"``, ``"ACC"``) after the phrase, the last two possible
    links of the noun."""
    rng, lex = b.rng, b.lex
    rules = lex.rules
    noun = rng.choice(lex.animate if animate or rng.random() < 0.3 else lex.inanimate)
    gender = noun[4]
    while True:
        det = rng.choices(_DET_NAMES, cum_weights=_DET_CUM)[0]
        forms = lex.determiners[det]
        number_ = number or ("pl" if rng.random() < 0.35 else "sg")
        if forms[0 if number_ == "sg" else 1] is not None:
            break
    plural = number_ == "pl"
    form = (2 if plural else 0) + (gender == "f")  # adjective forms: m.sg f.sg m.pl f.pl
    adjs = []
    for _ in range(2):
        if rng.random() < 0.25:
            adj = rng.choice(lex.adjectives)
            if all(adj[2] != a[2] for a, _ in adjs):  # at most one pre and one post adjective
                adjs.append((adj, rng.random() < 0.15))
    adjs.sort(key=lambda a: not a[0][2])  # english order: pre-noun adjectives first
    possessor: list[_Tok] = []
    if rules.possessors_after_noun and possessor_ok and rng.random() < 0.2:
        possessor = _possessor(b)  # the possessor takes the determiner's place
    # source: det [very] adj... noun
    en_det = None if possessor else forms[1 if plural else 0]
    det_idx = b.adds(tuple(en_det.split())) if en_det else []
    if det == "a" and lex.rules.french_phonology:
        first = adjs[0] if adjs else None
        nxt = lex.src["very"] if first and first[1] else (first[0][0] if first else noun[0])
        if nxt[0] in "aeiou":
            b.src[det_idx[0]] = lex.src["an"]
    adj_toks: list[tuple[bool, list[_Tok]]] = []  # (goes before the noun, tokens)
    for (en, fr_forms, pre), very in adjs:
        toks = [[lex.tgt["très"], [(b.add(lex.src["very"]), True)]]] if very else []
        toks.append([fr_forms[form], [(b.add(en), True)]])
        if rules.adjectives == "lexical":
            before = pre
        elif rules.adjectives == "flipped":
            before = not pre
        else:
            before = rules.adjectives == "all_pre"
        adj_toks.append((before, toks))
    noun_idx = b.add(noun[1] if plural else noun[0])
    if plural and rules.plural_word:  # "cats" -> "cat PL", the plural word possible
        noun_toks = [[noun[2], [(noun_idx, True)]], [lex.tgt["PL"], [(noun_idx, False)]]]
    else:
        noun_toks = [[noun[3] if plural else noun[2], [(noun_idx, True)]]]
    fr_det = forms[4] if plural else forms[3 if gender == "f" else 2]
    if det == "" and negated_object and rules.french_phonology:
        fr_det = lex.tgt["de"]
    if possessor:
        fr_det = ""
    det_toks = [[w, [(i, True) for i in det_idx] or [(noun_idx, False)]] for w in fr_det.split()]
    before = [t for pre, toks in adj_toks if pre for t in toks]
    after = [t for pre, toks in adj_toks if not pre for t in toks]
    if rules.det_after_noun:
        out = before + noun_toks + det_toks + after + possessor
    else:
        out = det_toks + before + noun_toks + after + possessor
    if relative:
        that = b.add(lex.src["that"])
        out.append([lex.tgt["qui"], [(that, True)]])
        out += _verb_phrase(b, number_, gender)[0]
    if case and rules.case_particles:
        out.append([lex.tgt[case], [(noun_idx, False)]])
    return out, number_, gender


def _verb_phrase(b: _Builder, number: str, gender: str) -> tuple[list[_Tok], str]:
    """Verb group with its object and negation, in target order (agreeing with the subject)."""
    rng, lex = b.rng, b.lex
    rules, src, tgt = lex.rules, lex.src, lex.tgt
    sg = number == "sg"
    r = rng.random()
    kind = "be" if r < 0.12 else ("intr" if r < 0.4 else "tr")
    r = rng.random()
    neg = "not" if r < 0.2 else ("never" if r < 0.26 else "")
    freq: list[_Tok] = []
    verb_toks: list[_Tok]
    obj: list[_Tok] = []
    clitic: list[_Tok] = []
    neg_idx: list[int] = []
    do_idx: int | None = None
    if kind == "be":
        # "is [not] happy": no do-support, the adjective agrees with the subject
        verb_toks = [[tgt["est" if sg else "sont"], [(b.add(src["is" if sg else "are"]), True)]]]
        if neg:
            neg_idx = [b.add(src[neg])]
        adj = rng.choice(lex.adjectives)
        form = (0 if sg else 2) + (gender == "f")
        obj = [[adj[1][form], [(b.add(adj[0]), True)]]]
    else:
        if neg == "not":
            do_idx = b.add(src["does" if sg else "do"])
            neg_idx = [b.add(src["not"])]
        elif neg == "never":
            neg_idx = [b.add(src["never"])]
        elif rng.random() < 0.12:
            en, fr = rng.choice(lex.freq_adverbs)
            freq = [[fr, [(b.add(en), True)]]]
        base = neg == "not"
        if kind == "intr":
            v = rng.choice(lex.intransitive)
            vi = b.add(v[1] if base or not sg else v[0])
            words = (v[2] if sg else v[3]).split()  # "se repose": the clitic "se" is possible
            verb_toks = [[w, [(vi, k == len(words) - 1)]] for k, w in enumerate(words)]
        else:
            v = rng.choice(lex.transitive)
            vi = b.add(v[1] if base or not sg else v[0])
            verb_toks = [[v[3] if sg else v[4], [(vi, True)]]]
            if v[2]:  # english particle without counterpart: "looks at"
                verb_toks[0][1].append((b.add(v[2]), False))
            prep = [[v[5], [(vi, False)]]] if v[5] else []
            if rng.random() < 0.15 and not v[2] and not v[5]:
                en, fr = rng.choice(lex.object_pronouns)
                clitic = [[fr, [(b.add(en), True)]]]
            else:
                np_, _, _ = _noun_phrase(
                    b, animate=False, negated_object=bool(neg), case=None if v[5] else "ACC"
                )
                obj = (np_ + prep) if rules.postpositions else (prep + np_)
    # the negation words
    if neg:
        word = "pas" if neg == "not" else "jamais"
        if rules.negation == "circum":
            neg_before = [[tgt["ne"], [(neg_idx[0], True)]]]
            neg_after = [[tgt[word], [(neg_idx[0], True)]]]
        elif rules.negation == "pre":
            neg_before, neg_after = [[tgt[word], [(neg_idx[0], True)]]], []
        else:
            neg_before, neg_after = [], [[tgt[word], [(neg_idx[0], True)]]]
    else:
        neg_before, neg_after = [], []
    if do_idx is not None:  # do-support: possible to the verb and its negation particles
        for tok in neg_before + verb_toks + neg_after:
            tok[1].append((do_idx, False))
    if rules.clitic_before_verb:
        core = neg_before + clitic + verb_toks + neg_after
    else:
        core = neg_before + verb_toks + neg_after + clitic
    core = core + freq if rules.freq_after_verb else freq + core
    return (obj + core if rules.verb_final else core + obj), kind


def _clause(b: _Builder) -> list[_Tok]:
    rng, lex = b.rng, b.lex
    if rng.random() < 0.15:
        en, fr, number, gender = rng.choice(lex.subject_pronouns)
        pronoun = b.add(en)
        subject = [[fr, [(pronoun, True)]]]
        if lex.rules.case_particles:
            subject.append([lex.tgt["NOM"], [(pronoun, False)]])
    else:
        relative = rng.random() < 0.08
        subject, number, gender = _noun_phrase(b, animate=True, relative=relative, case="NOM")
    verb, kind = _verb_phrase(b, number, gender)
    out = subject + verb
    r = rng.random()
    if r < 0.35:
        entry = rng.choice(lex.prepositions)
        en, fr, links = entry
        prep_idx = b.adds(en)
        np_, _, _ = _noun_phrase(b, animate=False)
        prep = [[w, []] for w in fr]
        for k, m in links:
            prep[m][1].append((prep_idx[k], True))
        out += (np_ + prep) if lex.rules.postpositions else (prep + np_)
    # intransitive verbs take a clause-final adverb ("the cat sits here") more often
    if r > (0.6 if kind == "intr" else 0.75) or (r < 0.1 and rng.random() < 0.5):
        out += _phrase(b, rng.choice(lex.end_adverbs))
    return out


_CONTRACTIONS = {
    ("à", "le"): "au", ("à", "les"): "aux", ("de", "le"): "du", ("de", "les"): "des",
    ("de", "des"): "de",
}  # fmt: skip
_ELISIONS = {"le": "l'", "la": "l'", "de": "d'", "ne": "n'", "ce": "cet", "ma": "mon", "sa": "son"}


def _french_phonology(toks: list[_Tok]) -> list[_Tok]:
    """Elision ("le arbre" -> "l' arbre"), then contraction ("à le" -> "au")."""
    for k in range(len(toks) - 1):
        w = toks[k][0]
        if w in _ELISIONS and toks[k + 1][0][0] in _VOWELS:
            toks[k][0] = _ELISIONS[w]
    out: list[_Tok] = []
    for tok in toks:
        if out and (out[-1][0], tok[0]) in _CONTRACTIONS:
            out[-1] = [_CONTRACTIONS[out[-1][0], tok[0]], out[-1][1] + tok[1]]
        else:
            out.append(tok)
    return out


def _sentence(rng: random.Random, lex: _Lexicon) -> ParallelExample:
    b = _Builder(rng, lex)
    toks = _clause(b)
    while rng.random() < 0.3:
        conj = "and" if rng.random() < 0.7 else "but"
        toks.append([lex.tgt["et" if conj == "and" else "mais"], [(b.add(lex.src[conj]), True)]])
        toks += _clause(b)
    if lex.rules.french_phonology:
        toks = _french_phonology(toks)
    target: list[str] = []
    sure: set[tuple[int, int]] = set()  # plain pairs: as Link, 8% slower to draw
    possible: set[tuple[int, int]] = set()
    for j, (word, links) in enumerate(toks):
        for i, is_sure in links:
            (sure if is_sure else possible).add((i, j))
        target.extend(word.split())  # multi-word surface forms are never produced; a guard
    possible -= sure
    return ParallelExample(tuple(b.src), tuple(target), frozenset(sure), frozenset(possible))
