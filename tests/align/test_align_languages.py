"""The default extraction measured (not tuned) on a reordering toy language beside language 0.

Language 8 of `crossattn.data.toy_translation` is verb-final, with postpositions and the
determiner after the noun; language 0 is the French-like one the defaults were first set on.
A small model is trained in each direction and the links of `crossattn align` at its defaults
(the extraction without gold, both directions symmetrised) must beat the monotone diagonal by
a wide margin, and symmetrising must not lose to one direction on the reordering language.
"""

from __future__ import annotations

import pytest

from crossattn.align import aer
from crossattn.cli import main
from crossattn.data.toy_translation import generate_corpus, language_rules, write_corpus

REORDERING = 8
SMALL = ["--d-model", "32", "--heads", "2", "--dim-ff", "64", "--encoder-layers", "1",
         "--decoder-layers", "2", "--batch-tokens", "600", "--warmup", "20", "--dev-size", "50",
         "--no-progress", "--threads", "1", "--steps", "1200"]  # fmt: skip


def test_the_reordering_language_has_the_rules_it_is_chosen_for():
    rules = language_rules(REORDERING)
    assert rules["verb_final"] and rules["postpositions"] and rules["det_after_noun"]
    assert not language_rules(0)["verb_final"]


def _diagonal(examples):
    return [
        {
            (round(j * (len(e.source) - 1) / max(len(e.target) - 1, 1)), j)
            for j in range(len(e.target))
        }
        for e in examples
    ]


def _align(capsys, model, data, *extra):
    assert (
        main(["align", "--model", str(model), "--data", str(data), "--threads", "1", *extra]) == 0
    )
    return capsys.readouterr().out.rstrip("\n").split("\n")


@pytest.mark.slow
@pytest.mark.parametrize("language", [0, REORDERING])
def test_default_alignment_on_each_language(capsys, tmp_path, language):
    corpus = generate_corpus(1, n_train=3000, n_dev=0, n_test=100, max_len=10, language=language)
    paths = write_corpus(corpus, tmp_path / "data")
    out = tmp_path / "model"
    code = main(["train", "--data", str(paths["train"]), "--out", str(out), "--both-directions",
                 *SMALL])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    both = aer(corpus.test, _align(capsys, out, paths["test"]))
    one = aer(corpus.test, _align(capsys, out, paths["test"], "--reverse-model", "none"))
    diagonal = aer(corpus.test, _diagonal(corpus.test))
    print(f"language {language}: both {both}, forward {one}, diagonal {diagonal}")
    assert both.aer < 0.5 * diagonal.aer
    if language == REORDERING:
        assert both.aer <= one.aer
