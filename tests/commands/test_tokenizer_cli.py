"""`crossattn train --tokenizer`: a tiny BPE run through the CLI (train, translate, align, aer),
unknown words counted and warned about, and model directories of word models as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crossattn.cli import main

TINY = ["--d-model", "16", "--heads", "2", "--dim-ff", "24", "--encoder-layers", "1",
        "--decoder-layers", "2", "--batch-tokens", "300", "--warmup", "2", "--dev-size", "20",
        "--no-progress", "--threads", "1", "--steps", "6"]  # fmt: skip
WORD_MODEL_FILES = {"config.json", "model.safetensors", "source_vocab.json", "target_vocab.json",
                    "extraction.json", "train_state.json", "checkpoint.safetensors"}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from crossattn.data.toy_translation import generate_corpus, write_corpus

    c = generate_corpus(7, n_train=200, n_dev=0, n_test=10, max_len=10)
    return write_corpus(c, tmp_path_factory.mktemp("toy"))


def _train(corpus, out, *extra) -> int:
    args = ["train", "--data", str(corpus["train"]), "--alignments", str(corpus["train_align"])]
    return main([*args, "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def bpe_model(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    assert _train(corpus, out, "--tokenizer", "bpe", "--vocab-size", "120") == 0
    return out


@pytest.fixture(scope="module")
def word_model(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("word")
    assert _train(corpus, out) == 0
    return out


def test_bpe_model_directory_holds_the_tokenizers(bpe_model):
    assert {p.name for p in bpe_model.iterdir()} == WORD_MODEL_FILES | {"tokenizer.json"}
    saved = json.loads((bpe_model / "tokenizer.json").read_text())
    assert saved["kind"] == "bpe" and saved["source"]["normalization"] == "nfkc"
    tokens = json.loads((bpe_model / "source_vocab.json").read_text())["tokens"]
    assert len(tokens) == 120 and tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert any(t.startswith("\u2581") for t in tokens) and any(t[0] != "\u2581" for t in tokens[4:])
    config = json.loads((bpe_model / "config.json").read_text())
    assert config["model"]["source_vocab_size"] == 120
    assert config["train"]["tokenizer"] == "bpe" and config["train"]["vocab_size"] == 120


def test_bpe_translate_and_align_speak_in_words(bpe_model, corpus, capsys, tmp_path):
    sentence = "the red car is near the house"
    assert main(["translate", "--model", str(bpe_model), "--json", "--beam", "2", sentence]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["source"] == sentence.split()
    assert all("\u2581" not in w and w for w in data["target"])
    links = [tuple(map(int, link.split("-"))) for link in data["alignment"].split()]  # Pharaoh
    assert links and all(i < 7 and j < len(data["target"]) for i, j in links)
    assert "unknown" not in err

    assert main(["align", "--model", str(bpe_model), "--data", str(corpus["test"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    pairs = [line.split(" ||| ") for line in corpus["test"].read_text().splitlines()]
    assert len(lines) == len(pairs) == 10
    for line, (src, tgt) in zip(lines, pairs):
        for link in line.split():
            i, j = map(int, re.fullmatch(r"(\d+)-(\d+)", link).groups())
            assert i < len(src.split()) and j < len(tgt.split())  # words, not subwords
    hyp = tmp_path / "hyp.align"
    hyp.write_text("\n".join(lines) + "\n")
    assert main(["aer", str(corpus["test_align"]), str(hyp)]) == 0
    assert re.search(r"AER \d+\.\d\d", capsys.readouterr().out)


def test_bpe_translator_results_carry_the_subword_view(bpe_model):
    from crossattn.models import Translator

    tr = Translator.load(bpe_model)
    assert tr.source_tokenizer.kind == "bpe" and tr.target_tokenizer.kind == "bpe"
    r = tr.align("the red cars", "les voitures rouges")
    view = r.subwords
    assert view is not None and len(view.source_word_of) >= 3
    assert r.weights.shape[2:] == (3, 3) and r.decoder_attention.shape[2:] == (4, 3)
    assert view.attention.shape[2:] == (len(view.target_tokens) + 1, len(view.source_tokens))
    merged = {(view.source_word_of[k], view.target_word_of[t]) for k, t in view.alignment}
    assert set(r.alignment) == merged
    # "ﬁ" is "fi" under NFKC: the same tokens as the plain spelling
    assert tr.source_tokenizer.encode(["\ufb01ve"]).ids == tr.source_tokenizer.encode(["five"]).ids


def test_resume_keeps_the_saved_tokenizer(bpe_model, corpus, tmp_path):
    import shutil

    from crossattn.training import TrainOptions, train

    out = tmp_path / "resumed"
    shutil.copytree(bpe_model, out)
    opts = TrainOptions(data=str(corpus["train"]), out=str(out), steps=6, resume=True,
                        tokenizer="unigram", progress=False)  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"resume: these options differ from the model saved in .*\(saved -> given\): "
        "tokenizer 'bpe' -> 'unigram'",
    ):
        train(opts)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _train(corpus, out, "--resume", "--normalization", "nfc") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing was written
    opts.tokenizer, opts.normalization = "word", None  # left out: the saved bpe model goes on
    assert train(opts).steps == 0  # 6 steps were the total


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tokenizer": "spm"}, ValueError, "TrainOptions.tokenizer must be one of 'word', 'bpe', "),
        ({"normalization": "nfd"}, ValueError, "TrainOptions.normalization must be one of 'nfkc'"),
        ({"vocab_size": 4}, ValueError, r"TrainOptions.vocab_size must be an int >= 5, got 4"),
        (
            {"vocab_size": "8000"},
            TypeError,
            "TrainOptions.vocab_size must be an int >= 5, got '8000'",
        ),
    ],
)
def test_tokenizer_options_are_checked(kwargs, error, match):
    from crossattn.training import TrainOptions

    with pytest.raises(error, match=match):
        TrainOptions(data="d", out="o", **kwargs)


def test_tokenizer_cli_arguments_are_checked(capsys, corpus, tmp_path):
    with pytest.raises(SystemExit):
        _train(corpus, tmp_path / "m", "--tokenizer", "sentencepiece")
    assert "invalid choice: 'sentencepiece'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train(corpus, tmp_path / "m", "--vocab-size", "3")
    assert "--vocab-size" in capsys.readouterr().err


# --------------------------------------------------------------------------- word models
def test_word_model_directory_keeps_its_layout_and_loads(word_model):
    from crossattn.models import Translator, Vocabulary
    from crossattn.models.tokenizer import WordTokenizer
    from crossattn.training import load_model

    assert {p.name for p in word_model.iterdir()} == WORD_MODEL_FILES  # no tokenizer.json
    tr = Translator.load(word_model)
    assert isinstance(tr.source_tokenizer, WordTokenizer)
    assert tr.source_tokenizer.normalization == "none"
    # the same as a Translator made from the saved model and vocabularies, as before
    model, src, tgt = load_model(word_model)
    assert isinstance(src, Vocabulary) and src.tokens == tr.source_vocab.tokens
    old = Translator(model, src, tgt, tr.extraction)
    for a, b in ((tr.translate("the red car"), old.translate("the red car")),
                 (tr.align("the cat", "le chat"), old.align("the cat", "le chat"))):  # fmt: skip
        assert a.target_tokens == b.target_tokens and a.alignment == b.alignment
        assert a.subwords is None and a.weights.equal(b.weights)


def test_unknown_words_are_counted_and_warned_about(word_model, corpus, capsys, tmp_path):
    assert main(["translate", "--model", str(word_model), "the zorblax car", "the cat"]) == 0
    out, err = capsys.readouterr()
    assert "unknown" not in out and len(out.splitlines()) == 6  # the output as before
    assert re.search(r"warning: 1 word\(s\) in 1 of 2 sentence\(s\) are unknown to the model and "
                     r"became <unk>: 'zorblax'", err)  # fmt: skip

    data = tmp_path / "pairs.txt"
    data.write_text("the qqq car ||| la voiture rouge\nthe cat ||| le zzz\n")
    assert main(["align", "--model", str(word_model), "--data", str(data)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert "2 word(s) in 2 of 2 pair(s) are unknown to the model" in err
    assert "'qqq', 'zzz'" in err

    assert main(["translate", "--model", str(word_model), "the cat"]) == 0
    assert "unknown" not in capsys.readouterr().err


def test_serve_answers_with_the_unknown_words(word_model):
    from crossattn.models import Translator
    from crossattn.viz.server import TranslationService

    service = TranslationService(Translator.load(word_model), beam=1)
    answer = service.answer("the zorblax car zorblax")
    assert answer["unknown"] == 2 and answer["unknown_words"] == ["zorblax", "zorblax"]
    assert service.answer("the car")["unknown"] == 0
