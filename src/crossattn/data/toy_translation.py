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
them different from language 0. A model trained on language 0 has never seen it.

Example::

    corpus = generate_corpus(seed=0)            # 20,000 / 500 / 500 pairs, well under 5 s
    ex = corpus.train[0]
    ex.source, ex.target, sorted(ex.sure), sorted(ex.possible)
    write_corpus(corpus, "data/toy")            # train.txt, train.align, dev.txt, ...
"""

from __future__ import annotations

import numbers
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

# ----------------------------------------------------------------------------------------------
# The language-0 lexicon. Plurals follow the regular rules unless given after a "|".

# "english[|plural] french[|plural] gender" ; animate nouns can be subjects
_ANIMATE = """
cat chat m; dog chien m; bird oiseau m; horse cheval m; cow vache f; mouse|mice souris f;
rabbit lapin m; fox renard m; wolf|wolves loup m; bear ours m; duck canard m; pig cochon m;
sheep|sheep mouton m; goat chèvre f; frog grenouille f; lion lion m; tiger tigre m;
monkey singe m; snake serpent m; boy garçon m; girl fille f; man|men homme m;
woman|women femme f; child|children enfant m; teacher professeur m; student étudiant m;
doctor médecin m; baker boulanger m; farmer fermier m; king roi m; queen reine f; friend ami m;
neighbour voisin m; sister sœur f; brother frère m; mother mère f; father père m; uncle oncle m;
aunt tante f; cook cuisinier m; painter peintre m; singer chanteur m; soldier soldat m;
nurse infirmière f; lawyer avocat m; driver chauffeur m; owl chouette f; spider araignée f
"""
_INANIMATE = """
car voiture f; house maison f; table table f; chair chaise f; book livre m; apple pomme f;
tree arbre m; garden jardin m; door porte f; window fenêtre f; box boîte f; ball balle f;
bed lit m; road route f; river rivière f; bridge pont m; city ville f; village village m;
school école f; church église f; shop magasin m; market marché m; park parc m; forest forêt f;
field champ m; mountain montagne f; lake lac m; sea mer f; boat bateau m; train train m;
bicycle vélo m; letter lettre f; key clé f; hat chapeau m; shoe chaussure f; shirt chemise f;
dress robe f; coat manteau m; cup tasse f; glass verre m; plate assiette f; knife|knives couteau m;
spoon cuillère f; bottle bouteille f; cake gâteau m; cheese fromage m; egg œuf m;
flower fleur f; stone pierre f; picture tableau m; clock horloge f; lamp lampe f; pen stylo m;
newspaper journal m; song chanson f; kitchen cuisine f; room chambre f; wall mur m; roof toit m;
island île f; star étoile f; cloud nuage m; ship navire m; plane avion m;
computer ordinateur m; phone téléphone m; bag sac m; basket panier m; ring bague f;
gift cadeau m; umbrella parapluie m; rope corde f; candle bougie f; mirror miroir m;
bench banc m; wheel roue f; boot botte f; orange orange f; banana banane f; carrot carotte f;
map carte f; toy jouet m; blanket couverture f; pillow oreiller m
"""

# "english french[/feminine[/masc-plural/fem-plural]] pre|post"
_ADJECTIVES = """
big grand pre; small petit pre; good bon/bonne pre; bad mauvais pre; beautiful beau/belle/beaux/belles pre;
young jeune pre; old vieux/vieille/vieux/vieilles pre; new nouveau/nouvelle/nouveaux/nouvelles pre;
pretty joli pre; long long/longue pre; fat gros/grosse pre;
red rouge post; blue bleu post; green vert post; black noir post; white blanc/blanche post;
yellow jaune post; grey gris post; brown brun post; round rond post; square carré post;
heavy lourd post; light léger/légère post; happy heureux/heureuse post; sad triste post;
tired fatigué post; hungry affamé post; rich riche post; poor pauvre post; strong fort post;
weak faible post; fast rapide post; slow lent post; hot chaud post; cold froid post;
clean propre post; dirty sale post; quiet calme post; noisy bruyant post; empty vide post;
full plein post; wet mouillé post; dry sec/sèche post; soft doux/douce post; hard dur post;
broken cassé post; famous célèbre post; strange étrange post; angry fâché post;
clever intelligent post; brave courageux/courageuse post; lazy paresseux/paresseuse post;
french français post; english anglais post; polite poli post; curious curieux/curieuse post
"""

# "english-3sg english-base french-3sg french-3pl"
_INTRANSITIVE = """
sleeps sleep dort dorment; sits sit est sont; runs run court courent; walks walk marche marchent;
sings sing chante chantent; dances dance danse dansent; laughs laugh rit rient;
cries cry pleure pleurent; swims swim nage nagent; works work travaille travaillent;
plays play joue jouent; arrives arrive arrive arrivent; falls fall tombe tombent;
jumps jump saute sautent; smiles smile sourit sourient; waits wait attend attendent;
lives live habite habitent; rests rest se_repose se_reposent
"""

# "english-3sg english-base[+particle] french-3sg french-3pl[+preposition]"
_TRANSITIVE = """
sees see voit voient; eats eat mange mangent; likes like aime aiment; wants want veut veulent;
takes take prend prennent; finds find trouve trouvent; buys buy achète achètent;
sells sell vend vendent; opens open ouvre ouvrent; closes close ferme ferment;
carries carry porte portent; brings bring apporte apportent; drinks drink boit boivent;
reads read lit lisent; writes write écrit écrivent; paints paint peint peignent;
washes wash lave lavent; cleans clean nettoie nettoient; breaks break casse cassent;
pushes push pousse poussent; pulls pull tire tirent; follows follow suit suivent;
helps help aide aident; calls call appelle appellent; knows know connaît connaissent;
loves love adore adorent; hates hate déteste détestent; watches watch surveille surveillent;
forgets forget oublie oublient; hides hide cache cachent; throws throw lance lancent;
catches catch attrape attrapent; holds hold tient tiennent; draws draw dessine dessinent;
looks look+at regarde regardent; listens listen+to écoute écoutent; waits wait+for attend attendent;
searches search+for cherche cherchent; asks ask+for demande demandent;
enters enter entre entrent+dans; phones phone téléphone téléphonent+à; obeys obey obéit obéissent+à;
answers answer répond répondent+à; resembles resemble ressemble ressemblent+à
"""

# name: english singular, english plural, french m.sg, f.sg, plural (None = not allowed)
_DETERMINERS: dict[str, tuple[str | None, str | None, str | None, str | None, str | None]] = {
    "the": ("the", "the", "le", "la", "les"),
    "a": ("a", None, "un", "une", None),
    "this": ("this", "these", "ce", "cette", "ces"),
    "my": ("my", "my", "mon", "ma", "mes"),
    "his": ("his", "his", "son", "sa", "ses"),
    "her": ("her", "her", "son", "sa", "ses"),
    "our": ("our", "our", "notre", "notre", "nos"),
    "their": ("their", "their", "leur", "leur", "leurs"),
    "every": ("every", None, "chaque", "chaque", None),
    "some": (None, "some", None, None, "quelques"),
    "two": (None, "two", None, None, "deux"),
    "three": (None, "three", None, None, "trois"),
    "many": (None, "many", None, None, "beaucoup de"),
    "": (None, "", None, None, "des"),  # bare plural: "cats" -> "des chats"
}
_DET_WEIGHTS: dict[str, int] = {
    "the": 10, "a": 5, "this": 2, "my": 2, "his": 1, "her": 1, "our": 1, "their": 1,
    "every": 1, "some": 1, "two": 1, "three": 1, "many": 1, "": 3,
}  # fmt: skip

_DET_NAMES = list(_DET_WEIGHTS)
_DET_CUM = [sum(list(_DET_WEIGHTS.values())[: k + 1]) for k in range(len(_DET_WEIGHTS))]

# english words, french words, sure links (english k, french m)
_PREPOSITIONS: list[tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, int], ...]]] = [
    (("in",), ("dans",), ((0, 0),)),
    (("on",), ("sur",), ((0, 0),)),
    (("under",), ("sous",), ((0, 0),)),
    (("behind",), ("derrière",), ((0, 0),)),
    (("in", "front", "of"), ("devant",), ((0, 0), (1, 0), (2, 0))),
    (("near",), ("près", "de"), ((0, 0), (0, 1))),
    (("with",), ("avec",), ((0, 0),)),
    (("without",), ("sans",), ((0, 0),)),
    (("from",), ("de",), ((0, 0),)),
    (("to",), ("à",), ((0, 0),)),
    (("at",), ("à",), ((0, 0),)),
    (("towards",), ("vers",), ((0, 0),)),
    (("inside",), ("dans",), ((0, 0),)),
    (("across",), ("à", "travers"), ((0, 0), (0, 1))),
]
# clause-final adverbs: english words, french words, sure links
_END_ADVERBS: list[tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, int], ...]]] = [
    (("here",), ("ici",), ((0, 0),)),
    (("there",), ("là",), ((0, 0),)),
    (("today",), ("aujourd'hui",), ((0, 0),)),
    (("now",), ("maintenant",), ((0, 0),)),
    (("tonight",), ("ce", "soir"), ((0, 0), (0, 1))),
    (("quickly",), ("vite",), ((0, 0),)),
    (("slowly",), ("lentement",), ((0, 0),)),
    (("together",), ("ensemble",), ((0, 0),)),
    (("outside",), ("dehors",), ((0, 0),)),
    (("again",), ("encore",), ((0, 0),)),
    (("every", "day"), ("chaque", "jour"), ((0, 0), (1, 1))),
    (("upstairs",), ("en", "haut"), ((0, 0), (0, 1))),
]
# frequency adverbs: before the verb in english, after it in french
_FREQ_ADVERBS = [("often", "souvent"), ("always", "toujours"), ("sometimes", "parfois"),
                 ("rarely", "rarement"), ("also", "aussi")]  # fmt: skip
# english, french: subject and object pronouns (3rd person), singular then plural
_SUBJECT_PRONOUNS = [
    ("he", "il", "sg", "m"),
    ("she", "elle", "sg", "f"),
    ("they", "ils", "pl", "m"),
]
_OBJECT_PRONOUNS = [("him", "le"), ("her", "la"), ("them", "les")]
# function words used by the grammar: english (source) and french (target)
_SRC_FUNCTION = ("does", "do", "not", "never", "is", "are", "that", "and", "but", "very", "an")
_TGT_FUNCTION = ("ne", "pas", "jamais", "est", "sont", "qui", "et", "mais", "très", "de")

_VOWELS = frozenset("aeiouyhéèêâîôœ")


def _french_plural(word: str) -> str:
    if word.endswith(("s", "x", "z")):
        return word
    if word.endswith(("eau", "eu")):
        return word + "x"
    if word.endswith("al"):
        return word[:-2] + "aux"
    return word + "s"


def _english_plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _entries(text: str) -> list[list[str]]:
    return [e.split() for e in text.replace("\n", " ").split(";") if e.strip()]


# ----------------------------------------------------------------------------------------------
# Lexicon and word-order rules of one toy language.


@dataclass(frozen=True)
class _Rules:
    adjectives: str = "lexical"  # lexical | all_post | all_pre | flipped
    det_after_noun: bool = False
    verb_final: bool = False
    negation: str = "circum"  # circum (ne V pas) | pre (NEG V) | post (V NEG)
    clitic_before_verb: bool = True
    freq_after_verb: bool = True
    postpositions: bool = False
    french_phonology: bool = True  # elision and contraction

    def differences(self) -> int:
        base = _Rules()
        return sum(getattr(self, f) != getattr(base, f) for f in self.__dataclass_fields__)


@dataclass
class _Lexicon:
    # (en_sg, en_pl, fr_sg, fr_pl, gender)
    animate: list[tuple[str, str, str, str, str]]
    inanimate: list[tuple[str, str, str, str, str]]
    # (en, (m.sg, f.sg, m.pl, f.pl), pre)
    adjectives: list[tuple[str, tuple[str, str, str, str], bool]]
    # (en_3sg, en_base, fr_sg, fr_pl)
    intransitive: list[tuple[str, str, str, str]]
    # (en_3sg, en_base, particle | None, fr_sg, fr_pl, preposition | None)
    transitive: list[tuple[str, str, str | None, str, str, str | None]]
    determiners: dict[str, tuple[str | None, str | None, str | None, str | None, str | None]]
    prepositions: list[tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, int], ...]]]
    end_adverbs: list[tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, int], ...]]]
    freq_adverbs: list[tuple[str, str]]
    subject_pronouns: list[tuple[str, str, str, str]]  # (en, fr, number, gender)
    object_pronouns: list[tuple[str, str]]
    src: dict[str, str] = field(default_factory=dict)  # function words, english -> surface
    tgt: dict[str, str] = field(default_factory=dict)  # function words, french -> surface
    rules: _Rules = _Rules()


def _french_lexicon() -> _Lexicon:
    def nouns(text: str) -> list[tuple[str, str, str, str, str]]:
        out, seen = [], set()
        for en, fr, gender in _entries(text):
            en_sg, _, en_pl = en.partition("|")
            fr_sg, _, fr_pl = fr.partition("|")
            if en_sg in seen:
                continue
            seen.add(en_sg)
            out.append(
                (
                    en_sg,
                    en_pl or _english_plural(en_sg),
                    fr_sg,
                    fr_pl or _french_plural(fr_sg),
                    gender,
                )
            )
        return out

    adjectives = []
    for en, forms, pos in _entries(_ADJECTIVES):
        f = forms.split("/")
        if len(f) == 1:
            f.append(f[0] if f[0].endswith("e") else f[0] + "e")
        if len(f) == 2:
            f += [_french_plural(f[0]), _french_plural(f[1])]
        adjectives.append((en, (f[0], f[1], f[2], f[3]), pos == "pre"))
    intransitive = [(a, b, c.replace("_", " "), d.replace("_", " ")) for a, b, c, d in _entries(_INTRANSITIVE)]  # fmt: skip
    transitive = []
    for en3, base, fr_sg, fr_pl in _entries(_TRANSITIVE):
        base, _, particle = base.partition("+")
        fr_pl, _, prep = fr_pl.partition("+")
        transitive.append((en3, base, particle or None, fr_sg, fr_pl, prep or None))
    return _Lexicon(
        animate=nouns(_ANIMATE),
        inanimate=nouns(_INANIMATE),
        adjectives=adjectives,
        intransitive=intransitive,
        transitive=transitive,
        determiners=dict(_DETERMINERS),
        prepositions=list(_PREPOSITIONS),
        end_adverbs=list(_END_ADVERBS),
        freq_adverbs=list(_FREQ_ADVERBS),
        subject_pronouns=list(_SUBJECT_PRONOUNS),
        object_pronouns=list(_OBJECT_PRONOUNS),
        src={w: w for w in _SRC_FUNCTION},
        tgt={w: w for w in _TGT_FUNCTION},
    )


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


def _made_up_lexicon(language: int) -> _Lexicon:
    base = _french_lexicon()
    rng = random.Random(f"crossattn-toy-language-{language}")
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
            break
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
    return lex


_LEXICONS: dict[int, _Lexicon] = {}


def _check_int(value: object, name: str, *, minimum: int | None = 0) -> int:
    """`value` as an int (Python or NumPy integer, not a bool), at least `minimum`."""
    what = "a non-negative int" if minimum == 0 else "an int"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _lexicon(language: int) -> _Lexicon:
    language = _check_int(language, "language")
    if language not in _LEXICONS:
        _LEXICONS[language] = _french_lexicon() if language == 0 else _made_up_lexicon(language)
    return _LEXICONS[language]


# ----------------------------------------------------------------------------------------------
# The grammar. The source is built left to right; each constituent returns its target tokens as
# [word, [(source_index, sure), ...]] in target order, which its parent arranges.

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


def _noun_phrase(
    b: _Builder, *, animate: bool, number: str | None = None, negated_object: bool = False,
    relative: bool = False,
) -> tuple[list[_Tok], str, str]:  # fmt: skip
    """Determiner, adjectives, noun, maybe a relative clause -> (tokens, number, gender)."""
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
    # source: det [very] adj... noun
    en_det = forms[1 if plural else 0]
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
    noun_tok = [noun[3] if plural else noun[2], [(noun_idx, True)]]
    fr_det = forms[4] if plural else forms[3 if gender == "f" else 2]
    if det == "" and negated_object and rules.french_phonology:
        fr_det = lex.tgt["de"]
    det_toks = [[w, [(i, True) for i in det_idx] or [(noun_idx, False)]] for w in fr_det.split()]
    before = [t for pre, toks in adj_toks if pre for t in toks]
    after = [t for pre, toks in adj_toks if not pre for t in toks]
    if rules.det_after_noun:
        out = before + [noun_tok] + det_toks + after
    else:
        out = det_toks + before + [noun_tok] + after
    if relative:
        that = b.add(lex.src["that"])
        out.append([lex.tgt["qui"], [(that, True)]])
        out += _verb_phrase(b, number_, gender)[0]
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
                np_, _, _ = _noun_phrase(b, animate=False, negated_object=bool(neg))
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
        subject = [[fr, [(b.add(en), True)]]]
    else:
        subject, number, gender = _noun_phrase(b, animate=True, relative=rng.random() < 0.08)
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
    sure: set[tuple[int, int]] = set()
    possible: set[tuple[int, int]] = set()
    for j, (word, links) in enumerate(toks):
        for i, is_sure in links:
            (sure if is_sure else possible).add((i, j))
        target.extend(word.split())  # multi-word surface forms are never produced; a guard
    possible -= sure
    return ParallelExample(tuple(b.src), tuple(target), frozenset(sure), frozenset(possible))


# ----------------------------------------------------------------------------------------------
# Public API


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
    seed = _check_int(seed, "seed", minimum=None)
    n_train = _check_int(n_train, "n_train")
    n_dev = _check_int(n_dev, "n_dev")
    n_test = _check_int(n_test, "n_test")
    min_len = _check_int(min_len, "min_len")
    max_len = _check_int(max_len, "max_len")
    language = _check_int(language, "language")
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
