"""Language 9 of the toy corpus: verb-final, postpositions, possessors after the noun, case
particles and a plural word, with the particles as possible links; languages 0 and 8 unchanged."""

from __future__ import annotations

import hashlib

import pytest

from crossattn.data.toy_translation import (
    _lexicon,
    generate_corpus,
    language_rules,
    vocabulary,
    word_classes,
)

LANGUAGE = 9
NEW_RULES = ("possessors_after_noun", "case_particles", "plural_word")


@pytest.fixture(scope="module")
def lex():
    return _lexicon(LANGUAGE)


@pytest.fixture(scope="module")
def examples():
    corpus = generate_corpus(3, n_train=1500, n_dev=0, n_test=0, language=LANGUAGE)
    return corpus.train


def _targets(ex, i: int, *, sure: bool = True) -> list[int]:
    return sorted(j for a, j in (ex.sure if sure else ex.possible) if a == i)


def _corpus_digest(language: int) -> str:
    c = generate_corpus(5, n_train=400, n_dev=20, n_test=20, language=language)
    text = "".join(
        " ".join(e.source) + "|" + " ".join(e.target) + "|" + e.pharaoh() + "\n"
        for e in c.train + c.dev + c.test
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("language", "digest"),
    [(0, "2174704372955e59"), (1, "55aec596289be75b"), (8, "a1cc5fbcec99bea0")],
)
def test_the_older_languages_are_unchanged(language, digest):
    # digests of the corpora as they were before language 9's rules existed
    assert _corpus_digest(language) == digest
    assert not any(language_rules(language)[r] for r in NEW_RULES)


def test_language_9_has_the_rules_of_a_verb_final_postpositional_language():
    rules = language_rules(LANGUAGE)
    for name in ("verb_final", "postpositions", "det_after_noun") + NEW_RULES:
        assert rules[name] is True, name
    assert not language_rules(0)["verb_final"] and not language_rules(0)["postpositions"]


def test_the_new_function_words_are_in_the_vocabulary_of_language_9_only(lex):
    src, tgt = vocabulary(LANGUAGE)
    assert lex.src["'s"] in src
    assert {lex.tgt[w] for w in ("GEN", "NOM", "ACC", "PL")} <= tgt
    assert len({lex.tgt[w] for w in ("GEN", "NOM", "ACC", "PL")}) == 4
    assert "GEN" not in _lexicon(8).tgt and "'s" not in _lexicon(0).src


def test_particles_and_the_plural_word_are_possible_links_of_one_noun(examples, lex):
    particles = {lex.tgt[w]: w for w in ("NOM", "ACC", "PL")}
    classes = word_classes(LANGUAGE)
    nouns = classes["masculine_nouns"] | classes["feminine_nouns"] | classes["plural_nouns"]
    pronouns = {en for en, _, _, _ in lex.subject_pronouns}
    seen = dict.fromkeys(particles.values(), 0)
    for ex in examples:
        for j, word in enumerate(ex.target):
            if word not in particles:
                continue
            seen[particles[word]] += 1
            assert not any(b == j for _, b in ex.sure), (ex, j)
            linked = [i for i, b in ex.possible if b == j]
            assert len(linked) == 1, (ex, j)
            allowed = nouns | pronouns if particles[word] == "NOM" else nouns
            assert ex.source[linked[0]] in allowed, (ex, j)
            if particles[word] == "PL":
                assert ex.source[linked[0]] in classes["plural_nouns"]
    assert all(n >= 50 for n in seen.values()), seen
    # every plural noun gets its plural word, right after the noun's own target word
    plural = 0
    for ex in examples:
        for i, w in enumerate(ex.source):
            if (
                w in classes["plural_nouns"]
                and w not in classes["masculine_nouns"] | classes["feminine_nouns"]
            ):
                plural += 1
                (j,) = _targets(ex, i)
                assert ex.target[j + 1] == lex.tgt["PL"] and j + 1 in _targets(ex, i, sure=False)
    assert plural >= 100


def test_objects_come_before_their_verb(examples, lex):
    classes = word_classes(LANGUAGE)
    verbs = classes["transitive_verbs"] | classes["intransitive_verbs"]
    acc = lex.tgt["ACC"]
    checked = 0
    for ex in examples:
        for j, word in enumerate(ex.target):
            if word != acc:
                continue
            (noun,) = [i for i, b in ex.possible if b == j]
            verb = max(i for i in range(noun) if ex.source[i] in verbs)
            assert max(_targets(ex, verb)) > j, ex  # source: verb object; target: object verb
            checked += 1
    assert checked >= 100


def test_possessors_follow_the_noun_they_possess(examples, lex):
    classes = word_classes(LANGUAGE)
    nouns = classes["masculine_nouns"] | classes["feminine_nouns"] | classes["plural_nouns"]
    possessive, gen = lex.src["'s"], lex.tgt["GEN"]
    checked = 0
    for ex in examples:
        for i, word in enumerate(ex.source):
            if word != possessive:
                continue
            (j_gen,) = _targets(ex, i)
            assert ex.target[j_gen] == gen
            owner = i - 1  # "the dog 's ball": the possessor's noun ends its phrase
            owned = next(k for k in range(i + 1, len(ex.source)) if ex.source[k] in nouns)
            assert ex.source[owner] in nouns
            # target: "ball dog the GEN"
            assert max(_targets(ex, owned)) < min(_targets(ex, owner)) < j_gen, ex
            checked += 1
    assert checked >= 50


def test_postpositions_follow_their_noun(examples, lex):
    classes = word_classes(LANGUAGE)
    nouns = classes["masculine_nouns"] | classes["feminine_nouns"] | classes["plural_nouns"]
    single = {en[0] for en, fr, _ in lex.prepositions if len(en) == 1 and len(fr) == 1}
    checked = 0
    for ex in examples:
        for i, word in enumerate(ex.source):
            if word not in single:
                continue
            following = [k for k in range(i + 1, len(ex.source)) if ex.source[k] in nouns]
            if not following or not _targets(ex, i):
                continue
            # the first noun: the phrase's own, or its possessor's ("near the dog 's house")
            assert min(_targets(ex, i)) > max(_targets(ex, following[0])), ex
            checked += 1
    assert checked >= 100
