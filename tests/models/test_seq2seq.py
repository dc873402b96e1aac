"""Seq2SeqTransformer: cached decoding equals full recomputation, beams share the prepared
context, attention maps per layer and head, vocabulary files, config and input errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from crossattn.layers.attention import PreparedContext
from crossattn.models import (
    Seq2SeqConfig,
    Seq2SeqTransformer,
    Translator,
    Vocabulary,
    beam_search,
    force_decode_attention,
    greedy_decode,
)
from crossattn.models.decoding import force_decode
from crossattn.models.kv_cache import KVCache
from crossattn.models.seq2seq import UNK_ID
from tests.conftest import mod7_task, train_word_task

LAYERS, HEADS = 3, 2


def _model(dtype=torch.float32, seed=0, **kw) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = dict(d_model=16, heads=HEADS, encoder_layers=2, decoder_layers=LAYERS, dim_ff=24)
    cfg.update(dropout=0.0, max_len=40)
    cfg.update(kw)
    model = Seq2SeqTransformer(Seq2SeqConfig(13, 11, **cfg)).to(dtype).eval()
    with torch.no_grad():  # a peaked output layer, so the decoded sentences vary and end
        model.output.weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def trained() -> Seq2SeqTransformer:
    """A model trained briefly on a copy-like task, so that decoding ends at varied lengths."""
    model = _model()
    return train_word_task(model, mod7_task, steps=150, lengths=(1, 6))


def _source(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 13, (4, 7), generator=g)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 1:] = False  # S = 1 for this row
    mask[3, 6:] = False
    return ids.masked_fill(~mask, 0), mask


def _full_logits(model, ids, mask, tokens):
    """Logits of every decoder position, recomputed from scratch (no cache, raw memory)."""
    bos = torch.full((1, 1), model.config.bos_id)
    target_in = torch.cat([bos, torch.tensor([tokens])], 1)
    memory = model.encode(ids, mask)
    return model.decode(target_in, memory, source_mask=mask).logits[0]


def _cached_logits(model, ids, mask, tokens):
    contexts = model.prepare_contexts(model.encode(ids, mask), mask)
    caches, rows = None, []
    for tok in [model.config.bos_id, *tokens]:
        out = model.decode(torch.tensor([[tok]]), contexts, caches=caches, use_cache=True)
        caches = out.caches
        rows.append(out.logits[0, 0])
    return torch.stack(rows)


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_logits_equal_full_recomputation(norm_first):
    model = _model(norm_first=norm_first)
    ids, mask = _source()
    with torch.no_grad():
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            tokens = torch.randint(4, 11, (9,)).tolist()
            full = _full_logits(model, ids[row : row + 1, :n], mask[row : row + 1, :n], tokens)
            cached = _cached_logits(model, ids[row : row + 1, :n], mask[row : row + 1, :n], tokens)
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_cached_decoding_equals_uncached(decode, trained):
    model = trained
    ids, mask = _source()

    def run(**kw):
        if decode == "greedy":
            return greedy_decode(model, ids, mask, max_len=15, return_attention=True, **kw)
        return beam_search(model, ids, mask, beam_size=3, max_len=15, return_attention=True, **kw)

    fast = run()
    slow = run(use_cache=False, reuse_context=False)
    assert any(h.finished for h in fast) and len({len(h.tokens) for h in fast}) > 1
    for a, b in zip(fast, slow):
        assert a.tokens == b.tokens and a.finished == b.finished
        assert a.score == pytest.approx(b.score, abs=1e-5)
        torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)
    # the scores are the log-probabilities of the produced tokens, recomputed from scratch
    with torch.no_grad():
        for row, h in enumerate(fast):
            n = int(mask[row].sum())
            tokens = h.tokens + ([model.config.eos_id] if h.finished else [])
            logits = _full_logits(model, ids[row : row + 1, :n], mask[row : row + 1, :n], tokens)
            logits[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
            logp = torch.log_softmax(logits[: len(tokens)], -1)
            expected = logp.gather(1, torch.tensor(tokens)[:, None]).sum().item()
            assert h.score == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_batched_decoding_equals_one_by_one_and_padding_is_never_read(trained):
    model = copy.deepcopy(trained)
    ids, mask = _source()
    with torch.no_grad():
        model.source_embed.weight[model.config.pad_id] = float("nan")  # poison the padding
    batched = beam_search(model, ids, mask, beam_size=3, max_len=12, return_attention=True)
    for row, h in enumerate(batched):
        n = int(mask[row].sum())
        alone = beam_search(model, ids[row : row + 1, :n], None, beam_size=3, max_len=12,
                            return_attention=True)[0]  # fmt: skip
        assert h.tokens == alone.tokens
        assert h.score == pytest.approx(alone.score, abs=1e-5)
        assert torch.isfinite(h.attention).all()
        torch.testing.assert_close(h.attention, alone.attention, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_beam_of_one_is_greedy(trained):
    model = trained
    ids, mask = _source()
    greedy = greedy_decode(model, ids, mask, max_len=12)
    beam = beam_search(model, ids, mask, beam_size=1, length_penalty=0.0, max_len=12)
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert [h.score for h in greedy] == pytest.approx([h.score for h in beam], abs=1e-5)


@pytest.mark.slow
def test_beam_search_is_no_worse_than_greedy(trained):
    ids, mask = _source(seed=4)
    greedy = greedy_decode(trained, ids, mask, max_len=15)
    beam = beam_search(trained, ids, mask, beam_size=5, length_penalty=0.0, max_len=15)
    assert all(g.finished for g in greedy)  # the trained model ends every sentence
    assert all(b.finished for b in beam)
    for g, b in zip(greedy, beam, strict=True):
        assert b.score >= g.score - 1e-5
    assert any(b.score > g.score + 1e-3 for g, b in zip(greedy, beam, strict=True))


def test_beams_share_the_prepared_context(monkeypatch):
    model = _model()
    ids, mask = _source()
    calls = {"to_k": 0, "select": 0, "reorder": []}
    for layer in model.decoder:
        layer.cross_attn_target_to_source.to_k.register_forward_hook(
            lambda *_: calls.__setitem__("to_k", calls["to_k"] + 1)
        )
    select, reorder = PreparedContext.index_select, KVCache.reorder

    def spy_select(self, index):
        calls["select"] += 1
        return select(self, index)

    def spy_reorder(self, rows):
        calls["reorder"].append(len(rows))
        return reorder(self, rows)

    monkeypatch.setattr(PreparedContext, "index_select", spy_select)
    monkeypatch.setattr(KVCache, "reorder", spy_reorder)
    hyps = beam_search(model, ids, mask, beam_size=4, max_len=12)
    assert len(hyps) == 4
    assert calls["to_k"] == LAYERS  # the source was projected once per layer, for every beam
    assert calls["select"] == 0  # the beams of an input read its keys and values: no copies
    # the self-attention caches follow the beams at every step, all 4 x 4 rows
    assert len(calls["reorder"]) >= LAYERS and set(calls["reorder"]) == {16}
    # recomputing the cross-attention K/V projects at every step: the test can tell
    calls["to_k"] = 0
    beam_search(model, ids, mask, beam_size=4, max_len=12, reuse_context=False)
    assert calls["to_k"] > LAYERS


def _left_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding in front."""
    ids, mask = ids.clone(), mask.clone()
    for r in range(len(ids)):
        n = int(mask[r].sum())
        ids[r], mask[r] = torch.cat([ids[r, n:], ids[r, :n]]), torch.cat([mask[r, n:], mask[r, :n]])
    return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_attention_maps_per_layer_and_head(decode, padding, trained):
    model = trained
    ids, mask = _source() if padding == "right" else _left_padded(*_source())
    fn = greedy_decode if decode == "greedy" else beam_search
    hyps = fn(model, ids, mask, max_len=12, return_attention=True)
    for row, h in enumerate(hyps):
        n = int(mask[row].sum())
        steps = len(h.tokens) + (1 if h.finished else 0)
        assert h.attention.shape == (LAYERS, HEADS, steps, n)
        sums = h.attention.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
        # the same maps as a teacher-forced pass over the produced tokens: the columns of the
        # valid source tokens, in order, wherever the padding is
        target_in = torch.tensor([[model.config.bos_id, *h.tokens]])
        with torch.no_grad():
            out = model(ids[row : row + 1], mask[row : row + 1], target_in,
                        attention_layers=list(range(LAYERS)))  # fmt: skip
        full = torch.stack([out.cross_weights[i][0] for i in range(LAYERS)])  # (layers, H, T, S)
        torch.testing.assert_close(
            h.attention, full[:, :, :steps][..., mask[row]], atol=1e-5, rtol=0
        )
        forced = force_decode_attention(
            model, ids[row : row + 1], mask[row : row + 1], torch.tensor([h.tokens or [4]]),
            torch.tensor([len(h.tokens)]),
        )[0]  # fmt: skip
        torch.testing.assert_close(h.attention, forced[:, :, :steps], atol=1e-5, rtol=0)
    assert all(h.attention is None for h in fn(model, ids, mask, max_len=5))


@pytest.mark.slow
def test_force_decode_attention_checks_target_lengths(trained):
    ids, mask = _source()
    target = torch.full((4, 3), 4)
    with pytest.raises(ValueError, match=r"target_lengths must lie in 0..T = 0..3.*\[1, 4, 0, 2\]"):
        force_decode_attention(trained, ids, mask, target, torch.tensor([1, 4, 0, 2]))
    with pytest.raises(ValueError, match=r"target_lengths must lie in 0..T"):
        force_decode_attention(trained, ids, mask, target, torch.tensor([1, -1, 0, 2]))
    with pytest.raises(
        TypeError, match="target_lengths must be a \\(B,\\) integer tensor, got list"
    ):
        force_decode_attention(trained, ids, mask, target, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"source_ids has B=4 rows: .* got \(4, 3\) and \(3,\)"):
        force_decode_attention(trained, ids, mask, target, torch.tensor([1, 1, 1]))
    with pytest.raises(TypeError, match=r"target_ids must be a torch.Tensor \(B, T\), got list"):
        force_decode_attention(trained, ids, mask, target.tolist(), torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"target_ids must be 2-D \(B, T\), got shape \(4, 3, 1\)"):
        force_decode_attention(trained, ids, mask, target[..., None], torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"source_ids must be 2-D \(B, S\), got shape \(28\)"):
        greedy_decode(trained, ids.flatten())


def test_float64_model_matches_its_float32_self():
    m32, m64 = _model(), _model(torch.float64)
    ids, mask = _source()
    target = torch.randint(4, 11, (4, 6))
    a = m32(ids, mask, target, attention_layers=[0, -1])
    b = m64(ids, mask, target, attention_layers=[0, -1])
    torch.testing.assert_close(a.logits.double(), b.logits, atol=1e-4, rtol=1e-4)
    assert set(a.cross_weights) == {0, LAYERS - 1}


def test_tied_embeddings_and_gradients_through_attention_weights():
    model = _model(tie_embeddings=True)
    assert model.output.weight is model.target_embed.weight
    untied = _model(tie_embeddings=False)
    assert untied.output.weight is not untied.target_embed.weight
    model.train()
    ids, mask = _source()
    out = model(ids, mask, torch.randint(4, 11, (4, 5)), attention_layers=[1])
    out.cross_weights[1][:, 0].max(-1).values.sum().backward()  # weights carry gradients
    grad = model.decoder[1].cross_attn_target_to_source.to_q.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_config_roundtrip_and_errors():
    cfg = Seq2SeqConfig(10, 12, d_model=8, heads=2)
    assert Seq2SeqConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown Seq2SeqConfig keys \['colour'\]"):
        Seq2SeqConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="d_model=10 must be divisible by heads=4"):
        Seq2SeqConfig(10, 10, d_model=10, heads=4)
    with pytest.raises(ValueError, match=r"Seq2SeqConfig.max_len must be a positive int, got 0"):
        Seq2SeqConfig(10, 10, max_len=0)
    with pytest.raises(TypeError, match="config must be a Seq2SeqConfig, got dict"):
        Seq2SeqTransformer(cfg.to_dict())
    with pytest.raises(ValueError, match="source_vocab_size must be a positive int, got True"):
        Seq2SeqConfig(True, 10)
    with pytest.raises(ValueError, match="target_vocab_size=3 must be at least 4: the special"):
        Seq2SeqConfig(10, 3)
    with pytest.raises(ValueError, match="source_vocab_size=10 must be at least 21"):
        Seq2SeqConfig(10, 30, pad_id=20)
    with pytest.raises(ValueError, match="pad_id, bos_id and eos_id must differ"):
        Seq2SeqConfig(10, 10, bos_id=2)
    with pytest.raises(ValueError, match="must differ from each other and from <unk> = 3"):
        Seq2SeqConfig(10, 10, pad_id=3)
    with pytest.raises(ValueError, match="Seq2SeqConfig.bos_id must be a non-negative int, got -1"):
        Seq2SeqConfig(10, 10, bos_id=-1)


def test_input_errors():
    model = _model()
    ids, mask = _source()
    with pytest.raises(ValueError, match=r"source_ids must be a long tensor \(B, length\)"):
        model.encode(ids.float(), mask)
    with pytest.raises(ValueError, match=r"source_mask must have the shape of source_ids \(4, 7\)"):
        model.encode(ids, mask[:, :3])
    with pytest.raises(
        ValueError, match="target_ids reaches position 41 but the model's max_len is 40"
    ):
        model(ids, mask, torch.full((4, 41), 4))
    with pytest.raises(ValueError, match="attention_layers holds 3, but the decoder has 3 layers"):
        model(ids, mask, torch.full((4, 2), 4), attention_layers=[3])
    with pytest.raises(TypeError, match="attention_layers must be a collection of layer indices"):
        model(ids, mask, torch.full((4, 2), 4), attention_layers="0")
    numpy_layers = model(ids, mask, torch.full((4, 2), 4), attention_layers=[np.int64(-1)])
    assert set(numpy_layers.cross_weights) == {LAYERS - 1}
    with pytest.raises(ValueError, match=r"source_ids holds ids from 0 to 13; this vocabulary has ids 0..12"):  # fmt: skip
        model(ids.masked_fill(ids == 5, 13), mask, torch.full((4, 2), 4))
    with pytest.raises(ValueError, match=r"target_ids holds ids from -1 to 4; .* ids 0..10"):
        model(ids, mask, torch.tensor([[4, -1]] * 4))
    contexts = model.prepare_contexts(model.encode(ids, mask), mask)
    with pytest.raises(ValueError, match=r"target_ids has B=3 rows but the prepared contexts hold B=\[4\]"):  # fmt: skip
        model.decode(torch.full((3, 2), 4), contexts)
    with pytest.raises(ValueError, match="beam_size must be a positive int, got 0"):
        beam_search(model, ids, mask, beam_size=0)
    with pytest.raises(ValueError, match=r"n_best must be an int in 1\.\.2, got 0"):
        beam_search(model, ids, mask, beam_size=np.int64(2), n_best=0)
    with pytest.raises(ValueError, match=r"source_mask must be bool with the shape of source_ids"):
        greedy_decode(model, ids, mask.long())
    with pytest.raises(ValueError, match="max_len must be a positive int, got -1"):
        greedy_decode(model, ids, mask, max_len=-1)


def test_vocabulary_roundtrip_and_errors(tmp_path):
    vocab = Vocabulary.build([["the", "red", "car"], ["the", "cat"]])
    assert vocab.tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert vocab.tokens[4] == "the"  # most frequent first
    assert vocab.encode(["the", "dog"]) == [4, 3]
    assert vocab.decode(vocab.encode(["red", "cat"])) == ["red", "cat"]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").tokens == vocab.tokens
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]  # no temporary file left
    with pytest.raises(ValueError, match="must start with the specials"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match=r"must be unique; repeated: \['a'\]"):
        Vocabulary(["<pad>", "<s>", "</s>", "<unk>", "a", "a"])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: not a vocabulary file"):
        Vocabulary.load(tmp_path / "bad.json")


def test_recorder_keeps_only_the_cross_attention_of_the_model():
    from crossattn.capture import AttentionRecorder

    torch.manual_seed(0)
    cfg = Seq2SeqConfig(source_vocab_size=11, target_vocab_size=13, d_model=16, heads=2,
                        encoder_layers=2, decoder_layers=2, dim_ff=32, dropout=0.0)  # fmt: skip
    model = Seq2SeqTransformer(cfg).eval()
    source = torch.randint(3, 11, (2, 6))
    target = torch.randint(3, 13, (2, 5))
    with AttentionRecorder(model) as rec, torch.no_grad():
        model(source, None, target)
    names = sorted(rec.maps)
    assert len(names) == cfg.decoder_layers
    assert all("cross_attn" in n for n in names), names
    assert all(m[0].shape == (2, 5, 6) for m in rec.maps.values())


def _translator() -> Translator:
    words = "a b c d e f g h i".split()
    src, tgt = Vocabulary.build([words]), Vocabulary.build([words[:7]])
    model = _model(seed=5)  # 13 source and 11 target ids: 4 specials + 9 and 7 words
    return Translator(model, src, tgt)


def test_align_scores_the_forced_translation_by_its_log_probability():
    tr = _translator()
    model, cfg = tr.model, tr.model.config
    sources, targets = ["a b c", "d e f g h", "i"], ["b a", "c d e f g", "<unk> g"]
    forced = tr.align_batch(sources, targets, batch_size=2)  # two batches, one padded
    with torch.no_grad():
        for source, target, result in zip(sources, targets, forced, strict=True):
            ids = torch.tensor([tr.source_tokenizer.encode(source.split()).ids])
            gold = [*tr.target_tokenizer.encode(target.split()).ids, cfg.eos_id]
            logits = _full_logits(model, ids, torch.ones_like(ids, dtype=torch.bool), gold[:-1])
            logits = logits.double()
            logits[:, [cfg.pad_id, cfg.bos_id]] = float("-inf")  # never produced
            logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(gold)[:, None]).sum()
            assert math.isfinite(result.score)
            assert result.score == pytest.approx(logp.item(), abs=1e-4 * len(gold))
    assert tr.align("a b c", "b a").score == pytest.approx(forced[0].score, abs=1e-5)
    ids = torch.tensor([tr.source_tokenizer.encode(["a", "b", "c"]).ids])
    target, lengths = torch.tensor([[5, 4]]), torch.tensor([2])
    both = force_decode(model, ids, None, target, lengths)
    only = force_decode(model, ids, None, target, lengths, log_probs=False)
    assert only.log_probs is None and both.log_probs.shape == (1,)
    torch.testing.assert_close(only.attention, both.attention, rtol=0, atol=1e-6)
    torch.testing.assert_close(force_decode_attention(model, ids, None, target, lengths),
                               both.attention, rtol=0, atol=1e-6)  # fmt: skip


def test_align_gives_a_translation_the_score_decoding_gave_it(trained):
    words = "a b c d e f g h i".split()
    tr = Translator(trained, Vocabulary.build([words]), Vocabulary.build([words[:7]]))
    sources = ["a b c", "d e f g h", "i", "h g f e"]
    for source in sources:
        ids = torch.tensor([tr.source_tokenizer.encode(source.split()).ids])
        assert greedy_decode(trained, ids)[0].finished  # EOS in both scores
        produced = tr.translate(source, beam=1)
        assert produced.target_tokens
        assert tr.align(source, produced.target_tokens).score == pytest.approx(
            produced.score, abs=1e-4
        )


def test_words_spelled_like_specials_are_unknown_words():
    vocab = Vocabulary.build([["the", "cat"]])
    assert vocab.encode(["<pad>", "<s>", "</s>", "<unk>", "the"]) == [UNK_ID] * 4 + [
        vocab.index["the"]
    ]
    tr = _translator()
    plain = tr.translate("a zzz c", beam=2)
    special = tr.translate("a <pad> c", beam=2)  # the same ids: an unknown word in the middle
    assert special.weights.shape[-1] == 3
    assert special.target_tokens == plain.target_tokens
    torch.testing.assert_close(special.weights, plain.weights)
    assert tr.align("a </s> c", "a b").weights.shape[-1] == 3


def test_translator_input_errors():
    tr = _translator()
    with pytest.raises(TypeError, match=r"translate_batch takes a list of sentences, got one"):
        tr.translate_batch("a b")
    assert tr.translate_batch([]) == []
    with pytest.raises(
        TypeError, match="a sentence is a string or a sequence of word strings, got int"
    ):
        tr.translate(123)
    with pytest.raises(TypeError, match="got list holding non-strings"):
        tr.translate(["a", 1])
    with pytest.raises(ValueError, match="beam must be a positive int, got 0"):
        tr.translate("a b", beam=0)
    with pytest.raises(ValueError, match=r"n_best must be an int in 1\.\.2, got 3"):
        tr.translate_batch(["a b"], beam=2, n_best=3)
    with pytest.raises(TypeError, match=r"n_best must be an int in 1\.\.2, got True"):
        tr.translate_batch(["a b"], beam=2, n_best=True)
    assert (
        tr.translate("a b", beam=np.int64(2)).target_tokens
        == tr.translate("a b", beam=2).target_tokens
    )
    with pytest.raises(ValueError, match="length_penalty must be a finite real number, got nan"):
        tr.translate("a b", length_penalty=float("nan"))
    with pytest.raises(ValueError, match="cannot translate an empty sentence"):
        tr.translate("   ")


def test_decoding_warns_in_training_mode_and_refuses_an_empty_batch():
    model = _model().train()
    ids, mask = _source()
    for decode in (greedy_decode, beam_search):
        with pytest.warns(UserWarning, match="decoding a model in training mode") as caught:
            decode(model, ids, mask, max_len=3)
        assert caught[0].filename == __file__  # the warning points at the caller's line
    model.eval()
    with pytest.raises(
        ValueError, match=r"source_ids must be a non-empty \(B, S\) long tensor, got \(0, 7\)"
    ):
        beam_search(model, ids[:0], mask[:0], max_len=3)
