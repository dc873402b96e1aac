"""The training fast paths: `fast_dropout` (the law of ``nn.functional.dropout``, cheaper random
numbers) in the Transformer layers and the translator, and the fused AdamW of the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crossattn.layers import CrossAttention
from crossattn.layers._common import FastDropout, FeedForward, fast_dropout
from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fast_dropout_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    x = torch.ones(123, 457)  # odd shape
    out = fast_dropout(x, p)
    kept = out != 0
    n = x.numel()
    # the kept count is Binomial(n, 1 - p): allow 5 standard deviations
    assert abs(kept.sum().item() - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p))
    # kept elements are scaled by 1 / (1 - p), the others are exactly 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 1.0 / (1.0 - p)))
    # rows and columns are independent of each other: no stripes
    col_rate = kept.float().mean(0)
    assert col_rate.std() < 5 * math.sqrt(p * (1 - p) / x.shape[0])


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(7, 13, 33, dtype=torch.float64, requires_grad=True)
    out = fast_dropout(x, 0.3)
    grad = torch.randn_like(out)
    out.backward(grad)
    mask = (out != 0).to(x.dtype) / 0.7
    torch.testing.assert_close(out, x.detach() * mask, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, grad * mask, rtol=1e-15, atol=0)


def test_fast_dropout_identity_in_eval_and_at_p0_and_seeded():
    x = torch.randn(5, 9)
    assert fast_dropout(x, 0.4, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(3)
    a = fast_dropout(x, 0.4)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.4)
    assert torch.equal(a, b)
    assert not torch.equal(a, fast_dropout(x, 0.4))  # a fresh mask per call


def test_fast_dropout_keeps_the_input_dtype_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(31, 65, dtype=torch.bfloat16)
    out = fast_dropout(x, 0.25)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    ref = (x.float() / 0.75)[kept]
    torch.testing.assert_close(out[kept].float(), ref, rtol=2**-7, atol=0)


def test_fast_dropout_module_is_a_dropout_without_state():
    module = FastDropout(0.2)
    assert isinstance(module, nn.Dropout) and module.p == 0.2
    assert module.state_dict() == {}
    x = torch.randn(4, 6)
    assert module.eval()(x) is x
    assert isinstance(FeedForward(8, 16, dropout=0.1).dropout, nn.Dropout)


def test_translator_state_dict_and_eval_outputs_are_unchanged_by_the_fast_dropout():
    torch.manual_seed(0)
    config = Seq2SeqConfig(23, 29, d_model=16, heads=2, encoder_layers=2, decoder_layers=2,
                           dim_ff=24, dropout=0.3)  # fmt: skip
    model = Seq2SeqTransformer(config).double()
    # every dropout of the translator is the fast one, and none holds state
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(isinstance(m, FastDropout) for m in drops)
    assert not any("dropout" in k for k in model.state_dict())
    src = torch.randint(4, 23, (3, 7))
    tgt = torch.randint(4, 29, (3, 5))
    model.eval()
    ref = model(src, None, tgt).logits
    # with dropout switched off, training mode computes the eval-mode function
    for m in drops:
        m.p = 0.0
    for m in model.modules():
        if isinstance(m, CrossAttention):
            m.dropout = 0.0  # attention dropout: the op's own
    model.train()
    torch.testing.assert_close(model(src, None, tgt).logits, ref, rtol=1e-12, atol=1e-12)


def test_translator_training_step_drops_and_trains():
    torch.manual_seed(0)
    config = Seq2SeqConfig(23, 29, d_model=16, heads=2, encoder_layers=1, decoder_layers=1,
                           dim_ff=24, dropout=0.5)  # fmt: skip
    model = Seq2SeqTransformer(config).train()
    src = torch.randint(4, 23, (4, 6))
    tgt = torch.randint(4, 29, (4, 5))
    a = model(src, None, tgt).logits
    b = model(src, None, tgt).logits
    assert not torch.allclose(a, b)  # dropout is active in training
    a.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_trainer_optimizer_is_fused_and_steps_like_plain_adamw(tmp_path):
    from crossattn.training import TrainOptions
    from crossattn.training.loop import make_optimizer as _make_optimizer

    torch.manual_seed(0)
    config = Seq2SeqConfig(23, 29, d_model=16, heads=2, encoder_layers=1, decoder_layers=1,
                           dim_ff=24, dropout=0.0)  # fmt: skip
    model = Seq2SeqTransformer(config).double()
    twin = Seq2SeqTransformer(config).double()
    twin.load_state_dict(model.state_dict())
    opts = TrainOptions(data=tmp_path, out=tmp_path / "m", lr=1e-2, weight_decay=0.1)
    fused = _make_optimizer(model, opts)
    assert all(g["fused"] for g in fused.param_groups)
    plain = _make_optimizer(twin, opts)
    for g in plain.param_groups:
        g["fused"], g["foreach"] = None, False
    src = torch.randint(4, 23, (3, 6))
    tgt = torch.randint(4, 29, (3, 5))
    for _ in range(3):
        for m, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            m(src, None, tgt).logits.square().mean().backward()
            opt.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("norm_first", [True, False])
def test_residual_dropout_add_is_tokens_plus_dropped_update(norm_first):
    from crossattn.layers.transformer import _Residual

    block = _Residual(19, 0.3, norm_first, 1e-5).double().train()
    tokens = torch.randn(3, 7, 19, dtype=torch.float64, requires_grad=True)
    update = torch.randn(3, 7, 19, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    out = block.add(tokens, update)
    torch.manual_seed(5)
    mask = fast_dropout(torch.ones_like(update), 0.3)  # the same draws
    ref = tokens + update * mask
    ref = ref if norm_first else block.norm(ref)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (tokens, update), grad)
    want = torch.autograd.grad(ref, (tokens, update), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)
    assert 0 < (mask == 0).sum() < mask.numel()  # some dropped, some kept
    block.eval()
    plain = tokens + update
    torch.testing.assert_close(
        block.add(tokens, update), plain if norm_first else block.norm(plain), rtol=0, atol=0
    )


@pytest.mark.parametrize("activation", [nn.ReLU, nn.GELU])
def test_feed_forward_training_dropout_matches_the_plain_composition(activation):
    torch.manual_seed(0)
    ffn = FeedForward(11, 37, activation=activation, dropout=0.4).double().train()
    x = torch.randn(2, 9, 11, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(8)
    out = ffn(x)
    torch.manual_seed(8)
    hidden = ffn.linear_in(x)
    mask = fast_dropout(torch.ones_like(hidden), 0.4)  # the same draws
    ref = ffn.linear_out(ffn.act(hidden) * mask)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    grad = torch.randn_like(out)
    params = (x, *ffn.parameters())
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(ref, params, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    ffn.eval()
    plain = ffn.linear_out(ffn.act(ffn.linear_in(x)))
    torch.testing.assert_close(ffn(x), plain, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_fast_dropout_draws_are_uniform_in_every_lane_of_a_word(p):
    """Four 16-bit draws share one int64 word: each position in the word keeps 1 - p of its
    elements (a lane with a biased bit would keep 1 - 2p or 1)."""
    torch.manual_seed(2)
    kept = (fast_dropout(torch.ones(4 * 40_000), p) != 0).view(-1, 4).double()
    rate = kept.mean(0)  # (4,): one per lane
    sigma = math.sqrt(p * (1 - p) / kept.shape[0])
    assert ((rate - (1 - p)).abs() < 5 * sigma).all(), rate.tolist()
    # neighbours in a word are independent: both kept as often as (1 - p) ** 2
    both = (kept[:, 0] * kept[:, 3]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / kept.shape[0])


def test_fast_dropout_compiles_without_a_graph_break_and_keeps_its_law():
    """Under torch.compile the keep-mask compares uniform floats (in-place random_ would break
    the graph): the same law."""
    p, x = 0.3, torch.ones(300, 301)
    compiled = torch.compile(lambda t: fast_dropout(t, p), fullgraph=True, backend="eager")
    torch.manual_seed(0)
    out = compiled(x)
    kept = out != 0
    assert abs(kept.sum().item() - x.numel() * (1 - p)) <= 5 * math.sqrt(x.numel() * p * (1 - p))
    assert torch.equal(out[kept], torch.full_like(out[kept], 1.0 / (1.0 - p)))


@pytest.mark.parametrize("p", [1 - 1e-6, 1 - 2**-17])
def test_fast_dropout_within_a_draw_step_of_one_drops_everything(p):
    """A threshold of 2**16 draws would overflow int16 (and keep everything): it drops all."""
    out = fast_dropout(torch.ones(1000), p)
    assert torch.equal(out, torch.zeros(1000))


def test_sdpa_dropout_of_16_bit_inputs_is_computed_in_float32():
    """The sdpa backend's own CPU dropout math upcasts bfloat16, as SDPA's math does: under one
    seed (the same keep-mask, drawn in float32) it equals the float32 call on the same values
    to within bfloat16 output rounding, far closer than bfloat16 scores would give."""
    from crossattn import cross_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 22, 16, generator=gen).mul(3).bfloat16() for _ in range(3))
    torch.manual_seed(5)
    low = cross_attention(q, k, v, dropout_p=0.2, backend="sdpa")
    torch.manual_seed(5)
    full = cross_attention(q.float(), k.float(), v.float(), dropout_p=0.2, backend="sdpa")
    assert low.dtype == torch.bfloat16
    # one bfloat16 rounding of the output: half a unit in the last place, 2**-9 relative
    torch.testing.assert_close(low.float(), full, rtol=2**-8, atol=2**-8 * full.abs().max().item())
