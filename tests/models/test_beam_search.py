"""The vectorised beam search and the fast greedy decoder against a slow, obviously correct
reference: a per-input, per-beam Python loop over full teacher-forced forward passes (the
semantics of beam search before it was vectorised)."""

from __future__ import annotations

import copy

import pytest
import torch

from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer, beam_search, greedy_decode
from crossattn.models.incremental import IncrementalDecoder
from crossattn.models.steppers import GeneralStepper, make_stepper
from tests.conftest import mod7_task, train_word_task

LAYERS, HEADS = 3, 2


def _model(seed=0, dtype=torch.float32, **kw) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = dict(d_model=16, heads=HEADS, encoder_layers=2, decoder_layers=LAYERS, dim_ff=24)
    cfg.update(dropout=0.0, max_len=40)
    cfg.update(kw)
    model = Seq2SeqTransformer(Seq2SeqConfig(13, 11, **cfg)).to(dtype).eval()
    with torch.no_grad():  # a peaked output layer, so that sentences vary and end
        model.output.weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def trained() -> Seq2SeqTransformer:
    """Trained briefly on a copy-like task: hypotheses end at varied steps."""
    model = _model(seed=0)
    return train_word_task(model, mod7_task, steps=150, lengths=(1, 6))


def _source(seed=1, b=5, s=7, left=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 13, (b, s), generator=g)
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    lengths[0] = s
    pos = torch.arange(s)
    mask = (pos >= s - lengths[:, None]) if left else (pos < lengths[:, None])
    return ids.masked_fill(~mask, 0), mask


# ---------------------------------------------------------------------------- the reference
def _reference_step(model, ids, mask, prefix):
    """Full forward over the whole prefix: log-probs (N, V) of the next token, maps (N, L, H, S)."""
    out = model(ids, mask, prefix, attention_layers=list(range(len(model.decoder))))
    logits = out.logits[:, -1].float()
    logits[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
    attn = torch.stack([out.cross_weights[i][:, :, -1] for i in range(len(model.decoder))], 1)
    return torch.log_softmax(logits, -1), attn


@torch.no_grad()
def reference_beam_search(model, ids, mask, beam_size, length_penalty, max_len, n_best=None):
    """Per input and per beam, in Python: (tokens, score, finished, attention (T, L, H, S));
    with ``n_best``, per input the list of its ``n_best`` best, best first."""
    cfg, k, (b, _) = model.config, beam_size, ids.shape
    wide_ids, wide_mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    prefix = torch.full((b * k, 1), cfg.bos_id)
    alive = torch.full((b, k), float("-inf"))
    alive[:, 0] = 0.0
    history = torch.zeros(b * k, 0, LAYERS, HEADS, ids.shape[1])
    finished = [[] for _ in range(b)]
    done = [False] * b

    def penalty(n):
        return ((5.0 + n) / 6.0) ** length_penalty

    for _ in range(max_len):
        logp, attn = _reference_step(model, wide_ids, wide_mask, prefix)
        vocab = logp.shape[-1]
        cand = (alive.reshape(b * k, 1) + logp).view(b, k * vocab)
        top_s, top_i = cand.topk(min(2 * k, k * vocab), dim=1)
        rows, tokens, new_alive, ends = [], [], [], []
        for i in range(b):
            kept = 0
            for s, idx in zip(top_s[i].tolist(), top_i[i].tolist()):
                if done[i] or s == float("-inf") or kept == k:
                    break
                row, tok = i * k + idx // vocab, idx % vocab
                if tok == cfg.eos_id:
                    if len(finished[i]) < k:
                        ends.append((i, row, s))
                    continue
                rows.append(row)
                tokens.append(tok)
                new_alive.append(s)
                kept += 1
            rows += [i * k] * (k - kept)
            tokens += [cfg.pad_id] * (k - kept)
            new_alive += [float("-inf")] * (k - kept)
        for i, row, s in ends:
            seq = prefix[row, 1:].tolist()
            att = torch.cat([history[row], attn[row][None]], 0)
            finished[i].append((s / penalty(len(seq) + 1), s, seq, True, att))
        done = [d or len(f) >= k for d, f in zip(done, finished, strict=True)]
        if all(done):
            break
        index = torch.tensor(rows)
        prefix = torch.cat([prefix[index], torch.tensor(tokens)[:, None]], 1)
        history = torch.cat([history[index], attn[index][:, None]], 1)
        alive = torch.tensor(new_alive).view(b, k)
        alive[torch.tensor(done)] = float("-inf")
    else:  # the length limit: the unfinished beams are ranked too
        for i in range(b):
            for j in range(k):
                s = float(alive[i, j])
                if not done[i] and s != float("-inf"):
                    seq = prefix[i * k + j, 1:].tolist()
                    finished[i].append((s / penalty(len(seq)), s, seq, False, history[i * k + j]))
    if n_best is not None:  # a stable sort: equal scores keep the order they finished in
        return [
            [h[1:] for h in sorted(f, key=lambda h: h[0], reverse=True)[:n_best]] for f in finished
        ]  # noqa: E501
    return [max(f, key=lambda h: h[0])[1:] for f in finished]


def _compare(model, ids, mask, *, beam, alpha, max_len, atol=1e-5):
    ref = reference_beam_search(model, ids, mask, beam, alpha, max_len)
    got = beam_search(model, ids, mask, beam_size=beam, length_penalty=alpha, max_len=max_len,
                      return_attention=True)  # fmt: skip
    for row, ((score, tokens, ended, att), h) in enumerate(zip(ref, got, strict=True)):
        assert h.tokens == tokens, row
        assert h.score == pytest.approx(score, abs=atol), row
        assert h.finished == ended, row
        expected = att.permute(1, 2, 0, 3)[..., mask[row]]  # (layers, H, T, S_row)
        torch.testing.assert_close(h.attention, expected.to(h.attention.dtype), atol=atol, rtol=0)
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 2, 3, 5])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_matches_the_reference_on_a_trained_model(trained, beam, alpha):
    ids, mask = _source(seed=beam)
    ref = _compare(trained, ids, mask, beam=beam, alpha=alpha, max_len=12)
    lengths = {len(tokens) for _, tokens, ended, _ in ref if ended}
    assert len(lengths) > 1  # hypotheses ended at different steps: the test can tell


@pytest.mark.slow
@pytest.mark.parametrize(("beam", "n_best", "max_len"), [(4, 4, 12), (3, 2, 12), (4, 3, 3)])
def test_n_best_matches_the_reference(trained, beam, n_best, max_len):
    ids, mask = _source(seed=beam + n_best)
    ref = reference_beam_search(trained, ids, mask, beam, 0.6, max_len, n_best=n_best)
    got = beam_search(trained, ids, mask, beam_size=beam, length_penalty=0.6, max_len=max_len,
                      return_attention=True, n_best=n_best)  # fmt: skip
    assert any(len(r) > 1 for r in ref)
    for row, (want, hyps) in enumerate(zip(ref, got, strict=True)):
        assert len(hyps) == len(want), row
        for (score, tokens, ended, att), h in zip(want, hyps, strict=True):
            assert (h.tokens, h.finished) == (tokens, ended), row
            assert h.score == pytest.approx(score, abs=1e-5), row
            expected = att.permute(1, 2, 0, 3)[..., mask[row]]
            torch.testing.assert_close(
                h.attention, expected.to(h.attention.dtype), atol=1e-5, rtol=0
            )  # noqa: E501
        assert hyps[0].tokens == beam_search(trained, ids[row : row + 1], mask[row : row + 1],
                                             beam_size=beam, max_len=max_len)[0].tokens  # fmt: skip


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize(("seed", "max_len"), [(0, 3), (1, 6), (2, 15)])
def test_matches_the_reference_on_random_models(seed, max_len, left):
    model = _model(seed=seed)
    ids, mask = _source(seed=seed + 10, left=left)
    ref = _compare(model, ids, mask, beam=4, alpha=0.6, max_len=max_len)
    if max_len == 3:
        assert any(not ended for _, _, ended, _ in ref)  # unfinished beams ranked at max_len


def test_matches_the_reference_in_post_norm_and_float64():
    for model in (_model(seed=4, norm_first=False), _model(seed=5, dtype=torch.float64)):
        ids, mask = _source(seed=6)
        _compare(model, ids, mask, beam=3, alpha=0.6, max_len=10, atol=1e-5)


@pytest.mark.slow
def test_beam_of_one_is_greedy(trained):
    ids, mask = _source(seed=7, b=6)
    greedy = greedy_decode(trained, ids, mask, max_len=12, return_attention=True)
    beam = beam_search(trained, ids, mask, beam_size=1, length_penalty=0.0, max_len=12,
                       return_attention=True)  # fmt: skip
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert [h.finished for h in greedy] == [h.finished for h in beam]
    assert [h.score for h in greedy] == pytest.approx([h.score for h in beam], abs=1e-5)
    for g, b in zip(greedy, beam, strict=True):
        torch.testing.assert_close(g.attention, b.attention, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_matches_full_recomputation(seed, trained):
    model = trained if seed == 0 else _model(seed=seed)
    ids, mask = _source(seed=seed + 3)
    fast = greedy_decode(model, ids, mask, max_len=10, return_attention=True)
    slow = greedy_decode(model, ids, mask, max_len=10, return_attention=True, use_cache=False)
    for f, s in zip(fast, slow, strict=True):
        assert (f.tokens, f.finished) == (s.tokens, s.finished)
        assert f.score == pytest.approx(s.score, abs=1e-5)
        torch.testing.assert_close(f.attention, s.attention, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_fast_path_runs_and_reads_the_device_once_per_step(trained):
    ids, mask = _source(seed=2)
    memory = trained.encode(ids, mask)
    with torch.no_grad():
        kw = dict(beams=2, steps=5, layers=[], use_cache=True, reuse_context=True)
        assert isinstance(make_stepper(trained, memory, mask, **kw), IncrementalDecoder)
        kw["use_cache"] = False
        assert isinstance(make_stepper(trained, memory, mask, **kw), GeneralStepper)
    model = _model(seed=1)
    with torch.no_grad():  # EOS never wins: every call runs all its steps
        model.output.weight[model.config.eos_id] = 0.0
        model.decoder_norm.bias.fill_(0.0)
    steps = 9
    from torch.profiler import profile

    def reads(decode, rows):
        g = torch.Generator().manual_seed(rows)
        ids = torch.randint(4, 13, (rows, 6), generator=g)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[0, 3:] = False
        with profile() as prof:
            hyps = decode(model, ids, mask, max_len=steps)
        assert all(len(h.tokens) == steps for h in hyps)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")

    for decode in (greedy_decode, beam_search):
        # one flag per step, plus the encoder's checks (ids in range, padded keys per layer):
        # a number that does not grow with the batch
        assert reads(decode, 2) == reads(decode, 7) <= steps + 10


@pytest.mark.slow
def test_fused_weights_follow_in_place_changes(trained):
    model = copy.deepcopy(trained)
    ids, mask = _source(seed=8)
    before = beam_search(model, ids, mask, beam_size=3, max_len=10)
    with torch.no_grad():
        for layer in model.decoder:
            layer.self_attn.to_v.weight.mul_(-1.5)
            layer.cross_attn_target_to_source.to_k.weight.add_(0.3)
    after = beam_search(model, ids, mask, beam_size=3, max_len=10)
    general = beam_search(model, ids, mask, beam_size=3, max_len=10, use_cache=False)
    assert [h.tokens for h in after] == [h.tokens for h in general]
    assert [h.score for h in after] == pytest.approx([h.score for h in general], abs=1e-5)
    assert [h.score for h in after] != pytest.approx([h.score for h in before], abs=1e-3)
    assert set(model.state_dict()) == set(trained.state_dict())  # nothing added to the model


@pytest.mark.slow
def test_a_replaced_or_hooked_linear_is_called_as_a_module(trained):
    model = copy.deepcopy(trained)
    ids, mask = _source(seed=9)
    expected = beam_search(model, ids, mask, beam_size=2, max_len=8)
    calls = []

    class Spy(torch.nn.Linear):  # stands for a quantised replacement
        def forward(self, features):
            calls.append(features.shape)
            return super().forward(features)

    layer = model.decoder[0]
    spy = Spy(16, 16)
    spy.load_state_dict(layer.self_attn.to_q.state_dict())
    layer.self_attn.to_q = spy
    hooked = []
    model.decoder[1].cross_attn_target_to_source.to_v.register_forward_hook(
        lambda *_: hooked.append(1)
    )
    got = beam_search(model, ids, mask, beam_size=2, max_len=8)
    assert [h.tokens for h in got] == [h.tokens for h in expected]
    assert calls and hooked  # both went through the module call
