"""The lexicon and word-order rules of the toy languages, and language 0's words.

A `_Lexicon` holds a language's nouns, adjectives, verbs, determiners, phrases and function
words, each with its source (English-like) and target forms, and its `_Rules` (where adjectives,
determiners, verbs, negation and adpositions go). `_french_lexicon` is language 0, English to
(simplified) French; `crossattn.data._toy_languages` draws the others from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .pharaoh import parse_pharaoh

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

# "english words = french words [: sure links, Pharaoh (english k - french m); default 0-0]"
_PREPOSITIONS_TEXT = """
in = dans; on = sur; under = sous; behind = derrière; in front of = devant : 0-0 1-0 2-0;
near = près de : 0-0 0-1; with = avec; without = sans; from = de; to = à; at = à;
towards = vers; inside = dans; across = à travers : 0-0 0-1
"""
# clause-final adverbs, in the same form
_END_ADVERBS_TEXT = """
here = ici; there = là; today = aujourd'hui; now = maintenant; tonight = ce soir : 0-0 0-1;
quickly = vite; slowly = lentement; together = ensemble; outside = dehors; again = encore;
every day = chaque jour : 0-0 1-1; upstairs = en haut : 0-0 0-1
"""
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


_Phrase = tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, int], ...]]


def _phrases(text: str) -> list[_Phrase]:
    """(english words, french words, sure links (english k, french m)) of a phrase table."""
    out = []
    for entry in filter(str.strip, text.replace("\n", " ").split(";")):
        pair, _, links = entry.partition(":")
        en, _, fr = pair.partition("=")
        sure, _ = parse_pharaoh(links or "0-0")
        out.append((tuple(en.split()), tuple(fr.split()), tuple(sorted(sure))))
    return out


_PREPOSITIONS = _phrases(_PREPOSITIONS_TEXT)
_END_ADVERBS = _phrases(_END_ADVERBS_TEXT)


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
    # Only languages that set these (`_toy_languages._FIXED_RULES`) draw the constructions:
    possessors_after_noun: bool = False  # "the dog 's ball" -> "ball dog the GEN"
    case_particles: bool = False  # a subject (NOM) or object (ACC) particle after the phrase
    plural_word: bool = False  # the singular noun and a plural word: "cats" -> "cat PL"

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
    prepositions: list[_Phrase]
    end_adverbs: list[_Phrase]
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
