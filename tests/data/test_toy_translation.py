"""The toy translation corpus: determinism, splits, lengths, grammar and the gold convention."""

from __future__ import annotations

import pytest

from crossattn.data import read_parallel
from crossattn.data.toy_translation import (
    ParallelExample,
    _lexicon,
    generate_corpus,
    in_vocabulary,
    language_rules,
    vocabulary,
    word_classes,
    write_corpus,
)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(0)  # the default corpus: 20,000 / 500 / 500


@pytest.fixture(scope="module")
def examples(corpus):
    return corpus.train + corpus.dev + corpus.test


def _links_of(ex: ParallelExample, i: int) -> tuple[list[int], list[int]]:
    """(sure target indices, possible target indices) of source word i."""
    sure = sorted(j for a, j in ex.sure if a == i)
    possible = sorted(j for a, j in ex.possible if a == i)
    return sure, possible


def test_same_seed_same_corpus_and_other_seed_another():
    a = generate_corpus(7, n_train=300, n_dev=40, n_test=40)
    b = generate_corpus(7, n_train=300, n_dev=40, n_test=40)
    c = generate_corpus(8, n_train=300, n_dev=40, n_test=40)
    assert a.train == b.train and a.dev == b.dev and a.test == b.test
    assert [e.source for e in a.train] != [e.source for e in c.train]


def test_dev_and_test_do_not_depend_on_the_training_size():
    small = generate_corpus(3, n_train=50, n_dev=30, n_test=30)
    large = generate_corpus(3, n_train=500, n_dev=30, n_test=30)
    assert small.dev == large.dev and small.test == large.test
    assert large.train[:50] == small.train


def test_split_sizes_and_no_source_sentence_in_two_splits(corpus):
    assert (len(corpus.train), len(corpus.dev), len(corpus.test)) == (20000, 500, 500)
    train = {e.source for e in corpus.train}
    dev = {e.source for e in corpus.dev}
    test = {e.source for e in corpus.test}
    assert len(train) == 20000 and len(dev) == 500 and len(test) == 500
    assert not (train & dev) and not (train & test) and not (dev & test)


def test_sentence_lengths_are_3_to_20_words_and_span_the_range(examples):
    src = [len(e.source) for e in examples]
    tgt = [len(e.target) for e in examples]
    assert min(src) == 3 and max(src) == 20
    assert min(tgt) >= 3 and max(tgt) <= 20
    assert all(3 <= n <= 20 for n in src + tgt)
    assert len(set(src)) == 18  # every length occurs


def test_custom_length_bounds_hold():
    c = generate_corpus(1, n_train=200, n_dev=10, n_test=10, min_len=5, max_len=8)
    for e in c.train + c.dev + c.test:
        assert 5 <= len(e.source) <= 8 and 5 <= len(e.target) <= 8


def test_several_hundred_words_and_the_corpus_uses_only_them(examples):
    src_vocab, tgt_vocab = vocabulary(0)
    assert len(src_vocab) >= 300 and len(tgt_vocab) >= 300
    used_src = {w for e in examples for w in e.source}
    used_tgt = {w for e in examples for w in e.target}
    assert used_src <= src_vocab and used_tgt <= tgt_vocab
    assert len(used_src) >= 300 and len(used_tgt) >= 300


def test_the_cat_sits_here_is_in_the_language(examples):
    assert in_vocabulary("the cat sits here")
    assert not in_vocabulary("the cat sits on the mat")  # "mat" is no toy word
    # each piece occurs with the expected sure link
    pieces = {("cat", "chat"): 0, ("sits", "est"): 0, ("here", "ici"): 0, ("the", "le"): 0}
    for e in examples:
        for i, j in e.sure:
            if (e.source[i], e.target[j]) in pieces:
                pieces[e.source[i], e.target[j]] += 1
    assert all(n > 0 for n in pieces.values()), pieces
    # "sits here" -> "est ici", and the frame "the N V ADV" -> "DET N V ADV"
    sits_here = [e for e in examples if " sits here" in " ".join(e.source)]
    assert sits_here and all(" est ici" in " ".join(e.target) for e in sits_here)
    classes = word_classes(0)
    nouns = (classes["masculine_nouns"] | classes["feminine_nouns"]) - classes["plural_nouns"]
    frames = [
        e
        for e in examples
        if len(e.source) == 4
        and e.source[0] == "the"
        and e.source[1] in nouns
        and e.source[2] in classes["intransitive_verbs"]
    ]
    assert len(frames) > 20
    for e in frames:
        assert e.target[0] in ("le", "la", "l'") and {(0, 0), (1, 1)} <= e.sure
        assert min(_links_of(e, 2)[0]) >= 2 and min(_links_of(e, 3)[0]) >= 3


def test_determiners_agree_with_gender_and_number(examples):
    classes = word_classes(0)
    masc = classes["masculine_nouns"] - classes["plural_nouns"]
    fem = classes["feminine_nouns"] - classes["plural_nouns"]
    plural = classes["plural_nouns"] - classes["masculine_nouns"] - classes["feminine_nouns"]
    want = {
        "m": {"le", "l'", "au", "du"},
        "f": {"la", "l'"},
        "p": {"les", "aux", "des"},
    }
    seen = dict.fromkeys(want, 0)
    for e in examples:
        for i in range(len(e.source) - 1):
            if e.source[i] != "the":
                continue
            noun = e.source[i + 1]
            kind = "m" if noun in masc else "f" if noun in fem else "p" if noun in plural else None
            if kind is None:
                continue
            sure, _ = _links_of(e, i)
            assert len(sure) == 1 and e.target[sure[0]] in want[kind], (e, noun)
            seen[kind] += 1
    assert min(seen.values()) > 100, seen


@pytest.mark.slow
def test_adjectives_agree_with_the_noun():
    """An adjective takes its noun's gender and number: les voitures vertes, le livre vert."""
    lex = _lexicon(0)
    nouns = {}  # english noun -> (gender, number)
    for en_sg, en_pl, _, _, gender in lex.animate + lex.inanimate:
        if en_sg != en_pl:  # not "sheep", whose number the English word does not show
            nouns[en_sg], nouns[en_pl] = (gender, "sg"), (gender, "pl")
    index = {("m", "sg"): 0, ("f", "sg"): 1, ("m", "pl"): 2, ("f", "pl"): 3}
    # adjectives after the noun (no elision), with four distinct forms: "vert"/"verte"/...
    forms = {en: f for en, f, pre in lex.adjectives if not pre and len(set(f)) == 4}
    c = generate_corpus(0, n_train=20000, n_dev=0, n_test=0)
    hits = dict.fromkeys(index, 0)
    for e in c.train:
        for i in range(len(e.source) - 1):
            adjective, noun = e.source[i], e.source[i + 1]
            if adjective in forms and noun in nouns:
                sure, _ = _links_of(e, i)
                assert (
                    len(sure) == 1 and e.target[sure[0]] == forms[adjective][index[nouns[noun]]]
                ), (e, i)
                hits[nouns[noun]] += 1
    assert min(hits.values()) > 20, hits


def test_most_adjectives_move_after_the_noun_and_some_stay_before(examples):
    classes = word_classes(0)
    nouns = classes["masculine_nouns"] | classes["feminine_nouns"] | classes["plural_nouns"]
    after, before = classes["adjectives_after"], classes["adjectives_before"]
    assert len(after) > 2 * len(before) > 0  # most move
    verbs = classes["transitive_verbs"] | classes["intransitive_verbs"]  # "clean" is both
    after, before = after - verbs, before - verbs
    moved = stayed = 0
    for e in examples:
        for i in range(len(e.source) - 1):
            adj, noun = e.source[i], e.source[i + 1]
            if noun not in nouns or (adj not in after and adj not in before):
                continue
            (j_adj,), (j_noun,) = _links_of(e, i)[0], _links_of(e, i + 1)[0]
            if adj in after:
                assert j_adj > j_noun, e
                moved += 1
            else:
                assert j_adj < j_noun, e
                stayed += 1
    assert moved > 1000 and stayed > 200


def test_the_red_car_becomes_la_voiture_rouge(examples):
    """ "the ADJ car" -> "la voiture ADJ" for every adjective that moves, and red -> rouge."""
    after = word_classes(0)["adjectives_after"]
    found = 0
    for e in examples:
        for i in range(len(e.source) - 2):
            if e.source[i] == "the" and e.source[i + 1] in after and e.source[i + 2] == "car":
                j = _links_of(e, i)[0][0]
                assert e.target[j : j + 2] == ("la", "voiture"), e
                assert _links_of(e, i + 1)[0] == [j + 2], e
                found += 1
            if e.source[i] == "red":
                assert e.target[_links_of(e, i)[0][0]] in ("rouge", "rouges"), e
    assert found > 0


def test_negation_is_one_to_many_and_do_support_is_possible_only(examples):
    n = 0
    for e in examples:
        for i in range(1, len(e.source)):
            if e.source[i] != "not" or e.source[i - 1] not in ("does", "do"):
                continue
            sure, possible = _links_of(e, i)
            assert [e.target[j] for j in sure] in (["ne", "pas"], ["n'", "pas"]), e
            assert not possible
            do_sure, do_possible = _links_of(e, i - 1)
            # ne, the verb ("se repose": two words), pas
            assert not do_sure and len(do_possible) in (3, 4) and set(sure) < set(do_possible)
            verb_sure, _ = _links_of(e, i + 1)
            assert set(verb_sure) < set(do_possible)
            n += 1
    assert n > 500


def test_never_is_one_to_many_too(examples):
    n = 0
    for e in examples:
        for i, w in enumerate(e.source):
            if w == "never":
                sure, _ = _links_of(e, i)
                assert [e.target[j] for j in sure] in (["ne", "jamais"], ["n'", "jamais"]), e
                n += 1
    assert n > 100


def test_sure_and_possible_convention(examples):
    des = particles = 0
    for e in examples:
        assert not (e.sure & e.possible)
        links = e.sure | e.possible
        assert all(0 <= i < len(e.source) and 0 <= j < len(e.target) for i, j in links)
        # every word on both sides has a link
        assert {i for i, _ in links} == set(range(len(e.source))), e
        assert {j for _, j in links} == set(range(len(e.target))), e
        for j, w in enumerate(e.target):
            if w == "des" and not any(jj == j for _, jj in e.sure):
                # bare plural: "cats" -> "des chats"; "des" has no counterpart
                (i,) = [i for i, jj in e.possible if jj == j]
                assert e.source[i] in word_classes()["plural_nouns"]
                des += 1
        for i, w in enumerate(e.source):
            if w in ("at", "for") and i > 0 and e.source[i - 1] in ("looks", "look", "waits"):
                sure, possible = _links_of(e, i)
                if not sure:  # the verb particle: possible to the verb only
                    assert len(possible) == 1 and possible == _links_of(e, i - 1)[0]
                    particles += 1
    assert des > 100 and particles > 20


def test_many_to_one_and_one_to_many_prepositions(examples):
    devant = pres = 0
    for e in examples:
        for i in range(len(e.source) - 2):
            if e.source[i : i + 3] == ("in", "front", "of"):
                targets = {tuple(_links_of(e, i + k)[0]) for k in range(3)}
                assert len(targets) == 1 and e.target[targets.pop()[0]] == "devant"
                devant += 1
        for i, w in enumerate(e.source):
            if w == "near":
                sure, _ = _links_of(e, i)
                assert e.target[sure[0]] == "près" and len(sure) == 2
                pres += 1
    assert devant > 20 and pres > 20


def test_another_language_has_other_words_and_other_word_order():
    c1 = generate_corpus(0, n_train=2000, n_dev=50, n_test=50, language=1)
    c2 = generate_corpus(0, n_train=2000, n_dev=50, n_test=50, language=2)
    src0, tgt0 = vocabulary(0)
    src1, tgt1 = vocabulary(1)
    assert len(src1) >= 300 and len(tgt1) >= 300
    assert len(src0 & src1) < 0.05 * len(src1) and len(tgt0 & tgt1) < 0.05 * len(tgt1)
    rules0, rules1 = language_rules(0), language_rules(1)
    differ = [k for k in rules0 if k != "french_phonology" and rules0[k] != rules1[k]]
    assert len(differ) >= 3, (rules0, rules1)
    assert c1.train != c2.train
    for e in c1.train + c1.dev + c1.test:
        assert 3 <= len(e.source) <= 20 and 3 <= len(e.target) <= 20
        assert {i for i, _ in e.sure | e.possible} == set(range(len(e.source)))
    # determinism holds per language too
    assert generate_corpus(0, n_train=2000, n_dev=50, n_test=50, language=1).train == c1.train


def test_write_corpus_round_trips_through_read_parallel(tmp_path):
    c = generate_corpus(5, n_train=100, n_dev=20, n_test=20)
    paths = write_corpus(c, tmp_path / "toy")
    for split, examples in c.splits().items():
        data = read_parallel(paths[split], alignments=paths[f"{split}_align"])
        assert data.examples == examples and data.skipped == 0
        assert (tmp_path / "toy" / f"{split}.txt").read_text(encoding="utf-8").count("\n") == len(
            examples
        )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_train must be a non-negative int"):
        generate_corpus(0, n_train=-1)
    with pytest.raises(ValueError, match="min_len <= max_len"):
        generate_corpus(0, min_len=9, max_len=4)
    with pytest.raises(ValueError, match="language must be a non-negative int"):
        generate_corpus(0, n_train=1, language=-2)


def test_argument_types_are_checked_up_front():
    import numpy as np

    with pytest.raises(TypeError, match=r"seed must be an int, got None"):
        generate_corpus(seed=None, n_train=1, n_dev=0, n_test=0)
    with pytest.raises(TypeError, match=r"seed must be an int, got 'abc'"):
        generate_corpus(seed="abc", n_train=1, n_dev=0, n_test=0)
    with pytest.raises(TypeError, match="language must be a non-negative int, got True"):
        generate_corpus(0, n_train=1, n_dev=0, n_test=0, language=True)
    with pytest.raises(TypeError, match="n_train must be a non-negative int, got True"):
        generate_corpus(0, n_train=True, n_dev=0, n_test=0)
    with pytest.raises(TypeError, match=r"min_len must be a non-negative int, got 3\.5"):
        generate_corpus(0, n_train=1, min_len=3.5, max_len=3.9)
    corpus = generate_corpus(
        np.int64(3), n_train=np.int32(2), n_dev=0, n_test=0, language=np.int8(1)
    )
    assert len(corpus.train) == 2 and type(corpus.seed) is int and corpus.language == 1
