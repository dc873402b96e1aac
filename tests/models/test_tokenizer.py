"""Tokenizers: word and subword round trips (NFKC included), the word <-> token mappings, word
links merged from token links, and saving and loading with a model directory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossattn.align import ExtractionConfig, word_links_from_subwords
from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer, Translator, Vocabulary
from crossattn.models.seq2seq import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from crossattn.models.tokenizer import (
    TOKENIZER_FILE,
    WORD_START,
    SubwordTokenizer,
    WordTokenizer,
    load_tokenizers,
    pool_to_words,
    save_tokenizers,
    subword_links,
    train_tokenizer,
)

WORDS = ["le", "cochon", "casse", "journal", "chat", "chats", "voit", "petits", "rouge", "voiture"]
SENTENCES = [WORDS[k : k + 4] for k in range(len(WORDS) - 3)] * 30 + [["fiancé", "café"]] * 5


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def subword(request) -> SubwordTokenizer:
    return train_tokenizer(request.param, SENTENCES, vocab_size=40)


def _nfkc(words):
    return tuple(unicodedata.normalize("NFKC", w) for w in words)


# --------------------------------------------------------------------------- round trips
def test_subword_tokenizer_splits_words_and_decodes_them_back(subword):
    assert subword.vocab.tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert len(subword) <= 40 and subword.normalization == "nfkc"
    words = ("le", "cochon", "casse", "le", "journal")
    enc = subword.encode(words)
    assert len(enc.ids) > len(words)  # 40 tokens cannot hold every word whole
    assert len(enc.word_of) == len(enc.ids) and enc.unknown_words == ()
    assert sorted(set(enc.word_of)) == list(range(len(words)))
    assert list(enc.word_of) == sorted(enc.word_of)
    pieces = subword.vocab.decode(enc.ids)
    assert all(pieces[k].startswith(WORD_START) == (enc.word_of[k] != enc.word_of[k - 1] or k == 0)
               for k in range(len(pieces)) if pieces[k] != WORD_START)  # fmt: skip
    decoded, word_of = subword.decode(enc.ids)
    assert decoded == words and word_of == enc.word_of


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="lecohnasjurtvip\ufb01\u00e9", min_size=1, max_size=9),
                min_size=1, max_size=6))  # fmt: skip
def test_subword_round_trip_is_the_nfkc_words(words):
    for tok in (_BPE, _UNIGRAM):
        enc = tok.encode(words)
        assert enc.unknown_words == ()  # every character was seen in training
        decoded, word_of = tok.decode(enc.ids)
        assert decoded == _nfkc(words)
        assert word_of == enc.word_of


_BPE = train_tokenizer("bpe", SENTENCES + [["\ufb01"]], vocab_size=40)
_UNIGRAM = train_tokenizer("unigram", SENTENCES, vocab_size=40)


def test_nfkc_nfc_and_no_normalisation():
    ligature, decomposed = "\ufb01ve", "cafe\u0301"  # "ﬁve", "café" written as e + accent
    nfkc = train_tokenizer("bpe", SENTENCES + [["five"]], vocab_size=60)
    assert nfkc.decode(nfkc.encode([ligature, decomposed]).ids)[0] == ("five", "café")
    nfc = train_tokenizer("bpe", SENTENCES + [["five"]], vocab_size=60, normalization="nfc")
    enc = nfc.encode([ligature, decomposed])
    assert enc.unknown_words == (ligature,)  # NFC keeps the ligature, never seen in training
    assert nfc.decode(enc.ids)[0][1] == "café"  # composed
    raw = train_tokenizer("bpe", SENTENCES, vocab_size=60, normalization="none")
    assert raw.encode([decomposed]).unknown_words == (decomposed,)  # U+0301 was never seen
    word = train_tokenizer("word", SENTENCES, normalization="nfkc")
    assert word.encode(["caf\u00e9", decomposed]).unknown_words == ()
    assert train_tokenizer("word", SENTENCES).encode([decomposed]).unknown_words == (decomposed,)


def test_word_tokenizer_is_the_vocabulary():
    tok = train_tokenizer("word", SENTENCES)
    assert isinstance(tok, WordTokenizer) and tok.normalization == "none"
    assert tok.vocab.tokens == Vocabulary.build(SENTENCES).tokens
    enc = tok.encode(["le", "zzz", "chat", "<s>"])
    assert enc.ids == tuple(tok.vocab.encode(["le", "zzz", "chat", "<s>"]))
    assert enc.word_of == (0, 1, 2, 3) and enc.unknown_words == ("zzz", "<s>")
    assert tok.decode(enc.ids) == (("le", "<unk>", "chat", "<unk>"), (0, 1, 2, 3))
    small = train_tokenizer("word", SENTENCES, vocab_size=7)
    assert len(small) == 7 and small.vocab.tokens[4:] == tok.vocab.tokens[4:7]


def test_specials_spelled_as_words_are_unknown(subword):
    enc = subword.encode(["le", "<s>", "</s>", "<pad>"])
    assert not set(enc.ids) & {PAD_ID, BOS_ID, EOS_ID}
    assert enc.unknown_words == ("<s>", "</s>", "<pad>")
    assert UNK_ID in enc.ids


def test_unseen_characters_are_unknown_words(subword):
    enc = subword.encode(["le", "\u65e5\u672c", "chat", "\u00fe"])
    assert enc.unknown_words == ("\u65e5\u672c", "\u00fe")
    assert sorted(set(enc.word_of)) == [0, 1, 2, 3]


def test_decode_of_odd_token_sequences(subword):
    # a sequence that starts inside a word, and a lone word-start token, still gives words
    cont = next(t for t in subword.vocab.tokens[4:] if not t.startswith(WORD_START))
    ids = [subword.vocab.index[cont], *subword.encode(["chat"]).ids]
    words, word_of = subword.decode(ids)
    assert words[0] == cont and len(word_of) == len(ids) and word_of[0] == 0
    if WORD_START in subword.vocab.index:  # "▁" alone joins the next word
        lone = subword.vocab.index[WORD_START]
        words, word_of = subword.decode([lone, *subword.encode(["chat"]).ids])
        assert words == ("chat",) and set(word_of) == {0}
        assert subword.decode([lone]) == ((), (0,))
    assert subword.decode([]) == ((), ())


@pytest.mark.slow
def test_training_is_the_same_in_every_process():
    # the unigram trainer's piece order and last score bits vary from process to process
    code = (
        "import sys, hashlib; from tests.models.test_tokenizer import SENTENCES\n"
        "from crossattn.models.tokenizer import train_tokenizer\n"
        "for kind in ('bpe', 'unigram'):\n"
        "    text = train_tokenizer(kind, SENTENCES, vocab_size=40)._tokenizer.to_str()\n"
        "    print(kind, hashlib.sha256(text.encode()).hexdigest())\n"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).parents[2]).stdout  # fmt: skip
            for _ in range(3)}  # fmt: skip
    assert len(runs) == 1, runs
    in_process = {
        kind: train_tokenizer(kind, SENTENCES, vocab_size=40) for kind in ("bpe", "unigram")
    }
    for line in runs.pop().splitlines():
        kind, digest = line.split()
        text = in_process[kind]._tokenizer.to_str()
        assert hashlib.sha256(text.encode()).hexdigest() == digest


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"kind": "sentencepiece"},
            "kind must be one of 'word', 'bpe', 'unigram'; got 'sentencepiece'",
        ),
        ({"normalization": "nfd"}, "normalization must be one of 'nfkc', 'nfc', 'none'; got 'nfd'"),
        ({"vocab_size": 4}, r"vocab_size must be an int >= 5, got 4"),
        ({"vocab_size": 1.5}, "vocab_size must be an int >= 5, got 1.5"),
    ],
)
def test_train_tokenizer_checks_its_arguments(kwargs, match):
    kw = {"kind": "bpe", **kwargs}
    with pytest.raises(ValueError, match=match):
        train_tokenizer(kw.pop("kind"), SENTENCES, **kw)


# --------------------------------------------------------------------------- word links
def test_word_links_merge_hand_made_subword_links():
    # source "unable cat" = un ##able cat; target "le chat noir" = le ch ##at noir
    source_word_of, target_word_of = [0, 0, 1], [0, 1, 1, 2]
    links = {(0, 0), (1, 0), (2, 1), (2, 2)}  # both "un" and "##able" -> "le"; cat -> ch, ##at
    assert word_links_from_subwords(links, source_word_of, target_word_of) == {(0, 0), (1, 1)}
    assert subword_links({(0, 0), (1, 1)}, source_word_of, target_word_of) == {
        (0, 0), (1, 0), (2, 1), (2, 2)
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"subword link \(3, 0\) is out of range"):
        word_links_from_subwords({(3, 0)}, source_word_of, target_word_of)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=5),
       st.lists(st.integers(1, 3), min_size=1, max_size=5), st.data())  # fmt: skip
def test_subword_links_and_word_links_invert_each_other(src_sizes, tgt_sizes, data):
    src = [w for w, n in enumerate(src_sizes) for _ in range(n)]
    tgt = [w for w, n in enumerate(tgt_sizes) for _ in range(n)]
    pairs = st.tuples(st.integers(0, len(src_sizes) - 1), st.integers(0, len(tgt_sizes) - 1))
    links = data.draw(st.sets(pairs))
    spread = subword_links(links, src, tgt)
    assert len(spread) == sum(src_sizes[i] * tgt_sizes[j] for i, j in links)
    assert word_links_from_subwords(spread, src, tgt) == links


def _translator(tokenizer_src, tokenizer_tgt, layers=1, heads=1) -> Translator:
    config = Seq2SeqConfig(
        source_vocab_size=len(tokenizer_src), target_vocab_size=len(tokenizer_tgt), d_model=8,
        heads=heads, encoder_layers=1, decoder_layers=layers, dim_ff=8, max_len=32,
    )  # fmt: skip
    torch.manual_seed(0)
    extraction = ExtractionConfig(shift="predict", method="argmax")
    return Translator(Seq2SeqTransformer(config), tokenizer_src, tokenizer_tgt, extraction)


def test_translator_reports_word_links_merged_from_hand_made_token_attention():
    tr = _translator(_BPE, _BPE)
    source, target = ("cochon", "le", "journal"), ("le", "journal", "chat")
    src, tgt = _BPE.encode(source), _BPE.encode(target)
    assert len(src) > 3 and len(tgt) > 3  # some words are several tokens
    # every target token attends to one source token: the last token of the source word
    # with the same index read backwards (target word j -> source word 2 - j)
    s_len, t_len = len(src), len(tgt)
    full = torch.zeros(1, 1, t_len + 1, s_len)
    for t, j in enumerate(tgt.word_of):
        k = max(k for k, w in enumerate(src.word_of) if w == 2 - j)
        full[0, 0, t, k] = 1.0
    full[0, 0, t_len, 0] = 1.0  # the EOS row
    r = tr._result(source, src, target, tgt, full, 0.0, ())
    assert r.alignment == [(0, 2), (1, 1), (2, 0)]
    assert r.source_tokens == source and r.target_tokens == target
    assert r.weights.shape == (1, 1, 3, 3) and r.decoder_attention.shape == (1, 1, 4, 3)
    torch.testing.assert_close(r.weights[0, 0], torch.eye(3).flip(1))
    view = r.subwords
    assert view.source_word_of == src.word_of and view.target_word_of == tgt.word_of
    assert len(view.alignment) == t_len and view.attention.shape == (1, 1, t_len + 1, s_len)
    assert word_links_from_subwords(view.alignment, src.word_of, tgt.word_of) == set(r.alignment)


def test_pool_to_words_against_a_float64_sum():
    torch.manual_seed(1)
    src_word_of, tgt_word_of = [0, 0, 1, 2, 2, 2], [0, 1, 1, 1, 2]
    a = torch.rand(2, 3, 6, 7, dtype=torch.float64)  # one padding column
    a = a / a.sum(-1, keepdim=True)
    got = pool_to_words(a, src_word_of, 3, tgt_word_of, 3)
    want = torch.zeros(2, 3, 4, 3, dtype=torch.float64)
    for j, rows in enumerate([[0], [1, 2, 3], [4], [5]]):
        for i, cols in enumerate([[0, 1], [2], [3, 4, 5]]):
            want[:, :, j, i] = a[:, :, rows][:, :, :, cols].sum(-1).mean(-1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    ident = pool_to_words(a[..., :6], range(6), 6, range(5), 5)
    torch.testing.assert_close(ident.double(), a[..., :6], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- files
def test_subword_tokenizers_are_saved_and_loaded_with_the_model_directory(tmp_path, subword):
    target = train_tokenizer(subword.kind, [list(reversed(s)) for s in SENTENCES], vocab_size=50)
    subword.vocab.save(tmp_path / "source_vocab.json")
    target.vocab.save(tmp_path / "target_vocab.json")
    save_tokenizers(tmp_path, subword, target)
    src, tgt = load_tokenizers(
        tmp_path, Vocabulary.load(tmp_path / "source_vocab.json"),
        Vocabulary.load(tmp_path / "target_vocab.json"),
    )  # fmt: skip
    assert (src.kind, src.normalization) == (subword.kind, "nfkc")
    for a, b in ((src, subword), (tgt, target)):
        words = ["\ufb01", "cochon", "<s>", "journal"]
        assert a.encode(words) == b.encode(words)
        assert a.vocab.tokens == b.vocab.tokens
    # the file must match the vocabularies next to it
    with pytest.raises(ValueError, match="its source tokens differ from the source vocabulary"):
        load_tokenizers(tmp_path, Vocabulary.build(SENTENCES), target.vocab)
    (tmp_path / TOKENIZER_FILE).write_text('{"kind": "bpe"}')
    with pytest.raises(ValueError, match="not a valid tokenizer file of this model"):
        load_tokenizers(tmp_path, subword.vocab, target.vocab)


def test_a_directory_without_tokenizer_file_reads_as_words(tmp_path):
    vocab = Vocabulary.build(SENTENCES)
    word = WordTokenizer(vocab)
    save_tokenizers(tmp_path, word, word)
    assert list(tmp_path.iterdir()) == []  # the layout of a word model is what it always was
    src, tgt = load_tokenizers(tmp_path, vocab, vocab)
    assert isinstance(src, WordTokenizer) and src.normalization == "none"
    assert src.vocab is vocab and tgt.vocab is vocab
    save_tokenizers(tmp_path, WordTokenizer(vocab, "nfkc"), WordTokenizer(vocab, "nfkc"))
    assert json.loads((tmp_path / TOKENIZER_FILE).read_text())["kind"] == "word"
    src, _ = load_tokenizers(tmp_path, vocab, vocab)
    assert isinstance(src, WordTokenizer) and src.normalization == "nfkc"


def test_translator_takes_vocabularies_as_word_tokenizers():
    vocab = Vocabulary.build(SENTENCES)
    tr = _translator(vocab, vocab)
    assert isinstance(tr.source_tokenizer, WordTokenizer) and tr.source_vocab is vocab
    r = tr.translate("le zzz chat", beam=1, max_len=4)
    assert r.unknown_words == ("zzz",) and r.unknown == 1 and r.subwords is None
    assert r.weights.shape[2:] == (len(r.target_tokens), 3)
    with pytest.raises(TypeError, match="source_vocab must be a Vocabulary or a Tokenizer"):
        Translator(tr.model, ["le"], vocab)


def test_extraction_is_selected_on_word_links_merged_from_token_links():
    from crossattn.align import aer, extract_alignment, select_extraction
    from crossattn.data.parallel import ParallelExample

    gen = torch.Generator().manual_seed(3)
    maps, gold, src_maps, tgt_maps = [], [], [], []
    for _ in range(12):
        src_sizes = torch.randint(
            1, 4, (int(torch.randint(2, 6, (), generator=gen)),), generator=gen
        )
        tgt_sizes = torch.randint(
            1, 4, (int(torch.randint(2, 6, (), generator=gen)),), generator=gen
        )
        src = [w for w, n in enumerate(src_sizes.tolist()) for _ in range(n)]
        tgt = [w for w, n in enumerate(tgt_sizes.tolist()) for _ in range(n)]
        logits = 3 * torch.randn(2, 2, len(tgt) + 1, len(src), generator=gen)
        maps.append(logits.softmax(-1))
        sure = {(j % len(src_sizes), j) for j in range(len(tgt_sizes))}
        gold.append(ParallelExample(("s",) * len(src_sizes), ("t",) * len(tgt_sizes),
                                    frozenset(sure)))  # fmt: skip
        src_maps.append(src)
        tgt_maps.append(tgt)
    grid = {"thresholds": (0.1, 0.3, 0.5), "units": [(None, None), ((0,), (1,))]}
    best = select_extraction(maps, gold, source_word_of=src_maps, target_word_of=tgt_maps, **grid)

    def merged_aer(config) -> float:
        links = [
            word_links_from_subwords(extract_alignment(w, config, len(s), len(t)), s, t)
            for w, s, t in zip(maps, src_maps, tgt_maps)
        ]
        return aer(gold, links).aer

    brute = [
        merged_aer(ExtractionConfig(layers, heads, shift, method, t))
        for layers, heads in grid["units"]
        for shift in ("feed", "predict", "average")
        for method in ("threshold", "argmax", "argmax_threshold", "bidirectional")
        for t in grid["thresholds"]
    ]
    assert best.dev_aer == pytest.approx(min(brute), abs=1e-6)
    assert merged_aer(best) == pytest.approx(best.dev_aer, abs=1e-6)
    with pytest.raises(ValueError, match="give source_word_of and target_word_of together"):
        select_extraction(maps, gold, source_word_of=src_maps)
