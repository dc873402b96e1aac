"""`CrossAttention` against a float64 computation written out from its own weights;
`PreparedContext`; `from_torch` against `torch.nn.MultiheadAttention`."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from crossattn import CrossAttention, PreparedContext
from tests.conftest import TOLERANCE_FACTOR, rounding_floor


def manual(layer, queries, context, values=None, context_mask=None, attn_mask=None, grad=False):
    """The layer's computation from its parameters, in plain float64 math: (out, probs).

    With ``grad=True`` the parameters are used as they are (gradients reach them)."""
    p = {name: t if grad else t.detach().double() for name, t in layer.named_parameters()}
    queries, context = queries.double(), context.double()
    values = context if values is None else values.double()
    h, hk, d = layer.heads, layer.kv_heads, layer.dim_head
    b, length, _ = queries.shape
    s = context.shape[1]

    def linear(x, name):
        y = x @ p[f"{name}.weight"].T
        return y + p[f"{name}.bias"] if f"{name}.bias" in p else y

    def norm(x, name):
        eps = layer.q_norm.eps if layer.qk_norm else 0.0
        if layer.qk_norm == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]
        if layer.qk_norm == "rms_norm":
            return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * p[f"{name}.weight"]
        return x

    q = norm(linear(queries, "to_q").view(b, length, h, d).transpose(1, 2), "q_norm")
    k = norm(linear(context, "to_k").view(b, s, hk, d).transpose(1, 2), "k_norm")
    v = linear(values, "to_v").view(b, s, hk, d).transpose(1, 2)
    k = k.repeat_interleave(h // hk, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(h // hk, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, L, S)
    allowed = torch.ones(b, h, length, s, dtype=torch.bool)
    if context_mask is not None:
        allowed = allowed & context_mask[:, None, None, :]
    if attn_mask is not None:
        m = attn_mask
        m = m[None, None] if m.dim() == 2 else (m[:, None] if m.dim() == 3 else m)
        if m.dtype == torch.bool:
            allowed = allowed & m
        else:
            scores = scores + m.double()
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_ok = (scores > float("-inf")).any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~row_ok, 0.0), -1) * row_ok
    out = (probs @ v).transpose(1, 2).reshape(b, length, h * d)
    return linear(out, "to_out"), probs


def randomise_norms(layer, gen):
    """Give the q/k norms non-trivial weights so that the test sees them."""
    with torch.no_grad():
        for module in (layer.q_norm, layer.k_norm):
            for t in module.parameters():
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))


CONFIGS = {
    "plain": dict(dims=(16,), heads=4, dim_head=8),
    "dims": dict(dims=(6, 10, 7), heads=2, dim_head=5, out_dim=9, bias=True),
    "kv_heads=2": dict(dims=(12, 8), heads=4, dim_head=3, kv_heads=2),
    "kv_heads=1": dict(dims=(12,), heads=4, dim_head=4, kv_heads=1, out_bias=False),
    "layer_norm": dict(dims=(12, 8), heads=2, dim_head=6, qk_norm="layer_norm", bias=True),
    "rms_norm": dict(dims=(12, 8), heads=4, dim_head=3, kv_heads=2, qk_norm="rms_norm"),
}


def build(name, gen):
    cfg = dict(CONFIGS[name])
    dims = cfg.pop("dims")
    torch.manual_seed(int(torch.randint(0, 1 << 30, (1,), generator=gen)))
    layer = CrossAttention(*dims, **cfg).double().eval()
    randomise_norms(layer, gen)
    return layer


def inputs(layer, gen, b=2, length=5, s=7, separate_values=False):
    queries = torch.randn(b, length, layer.query_dim, generator=gen, dtype=torch.float64)
    context = torch.randn(b, s, layer.context_dim, generator=gen, dtype=torch.float64)
    values = None
    if separate_values or layer.value_dim != layer.context_dim:
        values = torch.randn(b, s, layer.value_dim, generator=gen, dtype=torch.float64)
    return queries, context, values


def context_mask_for(gen, b, s):
    mask = torch.rand(b, s, generator=gen) < 0.7
    mask[:, 0] = True
    return mask


def attn_mask_for(gen, kind, shape):
    if kind == "bool":
        mask = torch.rand(shape, generator=gen) < 0.7
        mask[..., 0] = True
        return mask
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def close(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=what)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_layer_matches_manual_float64(name, backend, gen):
    layer = build(name, gen)
    layer.backend = backend
    queries, context, values = inputs(layer, gen)
    mask = context_mask_for(gen, 2, 7)
    out = layer(queries, context, values, context_mask=mask)
    ref, _ = manual(layer, queries, context, values, context_mask=mask)
    assert out.shape == (2, 5, layer.out_dim) and out.dtype == torch.float64
    close(out, ref)


@pytest.mark.parametrize("name", ["plain", "kv_heads=2", "rms_norm"])
def test_layer_gradients_match_manual(name, backend, gen):
    layer = build(name, gen)
    layer.backend = backend
    queries, context, values = inputs(layer, gen)
    queries.requires_grad_()
    context.requires_grad_()
    mask = context_mask_for(gen, 2, 7)
    layer(queries, context, values, context_mask=mask).square().sum().backward()
    got = [queries.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    q2, c2 = queries.detach().requires_grad_(), context.detach().requires_grad_()
    ref, _ = manual(layer, q2, c2, values, context_mask=mask, grad=True)
    ref.square().sum().backward()
    want = [q2.grad] + [p.grad for p in layer.parameters()]
    assert len(got) == len(want) > 3
    for g, w in zip(got, want):
        close(g, w)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", ["LS", "BLS", "BHLS"])
def test_layer_attn_mask_shapes(shape, kind, backend, gen):
    layer = build("kv_heads=2", gen)
    layer.backend = backend
    queries, context, _ = inputs(layer, gen)
    full = {"LS": (5, 7), "BLS": (2, 5, 7), "BHLS": (2, 4, 5, 7)}[shape]
    attn_mask = attn_mask_for(gen, kind, full)
    mask = context_mask_for(gen, 2, 7)
    out = layer(queries, context, context_mask=mask, attn_mask=attn_mask)
    ref, _ = manual(layer, queries, context, context_mask=mask, attn_mask=attn_mask)
    close(out, ref)


@pytest.mark.parametrize("mode", [True, "mean"])
@pytest.mark.parametrize("name", ["plain", "kv_heads=1", "layer_norm"])
def test_layer_return_weights(name, mode, gen):
    layer = build(name, gen)
    queries, context, _ = inputs(layer, gen)
    mask = context_mask_for(gen, 2, 7)
    attn_mask = attn_mask_for(gen, "bool", (2, layer.heads, 5, 7))
    out, weights = layer(
        queries, context, context_mask=mask, attn_mask=attn_mask, return_weights=mode
    )
    ref, probs = manual(layer, queries, context, context_mask=mask, attn_mask=attn_mask)
    close(out, ref)
    close(weights, probs if mode is True else probs.mean(1))
    assert weights.shape == ((2, layer.heads, 5, 7) if mode is True else (2, 5, 7))


def test_values_separate_from_context(gen):
    """Keys from the context, values from another sequence (MHA parity, SelfDoc)."""
    layer = build("plain", gen)
    queries, context, values = inputs(layer, gen, separate_values=True)
    out = layer(queries, context, values)
    close(out, manual(layer, queries, context, values)[0])
    assert not torch.allclose(out, layer(queries, context))


def test_fully_masked_context_gives_the_output_bias(gen):
    layer = build("dims", gen)
    queries, context, values = inputs(layer, gen)
    mask = context_mask_for(gen, 2, 7)
    mask[1] = False
    out = layer(queries, context, values, context_mask=mask)
    torch.testing.assert_close(out[1], layer.to_out.bias.detach().expand(5, -1), rtol=0, atol=0)
    assert torch.isfinite(out).all()


def test_dropout_only_in_training(gen):
    layer = CrossAttention(8, heads=2, dim_head=4, dropout=0.5).double()
    queries, context, _ = inputs(layer, gen)
    layer.eval()
    close(layer(queries, context), manual(layer, queries, context)[0])
    layer.train()
    torch.manual_seed(3)
    first = layer(queries, context)
    torch.manual_seed(3)
    assert torch.equal(first, layer(queries, context))
    assert not torch.allclose(first, manual(layer, queries, context)[0])


# --- PreparedContext ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prepare_context_gives_exactly_the_same_output(name, backend, gen):
    layer = build(name, gen)
    layer.backend = backend
    queries, context, values = inputs(layer, gen)
    mask = context_mask_for(gen, 2, 7)
    attn_mask = attn_mask_for(gen, "bool", (5, 7))
    prepared = layer.prepare_context(context, values, context_mask=mask)
    assert isinstance(prepared, PreparedContext)
    assert prepared.key.shape == (2, layer.kv_heads, 7, layer.dim_head)
    assert prepared.value.shape == (2, layer.kv_heads, 7, layer.dim_head)
    assert prepared.key.is_contiguous() and prepared.value.is_contiguous()
    assert prepared.key_mask is mask
    direct = layer(queries, context, values, context_mask=mask, attn_mask=attn_mask)
    reused = layer(queries, prepared, attn_mask=attn_mask)
    assert torch.equal(direct, reused)
    # and again, for a second set of queries (a decoding step)
    more = torch.randn(2, 1, layer.query_dim, generator=gen, dtype=torch.float64)
    assert torch.equal(layer(more, context, values, context_mask=mask), layer(more, prepared))
    if backend is None:
        w_direct = layer(queries, context, values, context_mask=mask, return_weights="mean")
        w_reused = layer(queries, prepared, return_weights="mean")
        assert all(torch.equal(a, b) for a, b in zip(w_direct, w_reused))


def test_prepared_context_from_another_layer_is_refused(gen):
    layer, other = build("plain", gen), build("plain", gen)
    other.load_state_dict(layer.state_dict())  # even with identical weights
    queries, context, _ = inputs(layer, gen)
    with pytest.raises(ValueError, match="this PreparedContext was made by another layer"):
        other(queries, layer.prepare_context(context))


def test_context_mask_with_prepared_context_is_refused(gen):
    layer = build("plain", gen)
    queries, context, _ = inputs(layer, gen)
    prepared = layer.prepare_context(context)  # no mask: still refused, never ignored
    with pytest.raises(ValueError, match="context_mask was given with a PreparedContext"):
        layer(queries, prepared, context_mask=torch.ones(2, 7, dtype=torch.bool))


@pytest.mark.parametrize("name", ["kv_heads=2", "layer_norm"])
def test_index_select_equals_projecting_the_selected_rows(name, gen):
    layer = build(name, gen)
    _, context, values = inputs(layer, gen, b=3)
    mask = context_mask_for(gen, 3, 7)
    prepared = layer.prepare_context(context, values, context_mask=mask)
    index = torch.tensor([2, 0, 2, 1])
    picked = prepared.index_select(index)
    assert picked.layer_id == prepared.layer_id
    assert picked.key.is_contiguous() and picked.value.is_contiguous()
    assert torch.equal(picked.key, prepared.key[index])
    assert torch.equal(picked.value, prepared.value[index])
    assert torch.equal(picked.key_mask, mask[index])
    v_rows = None if values is None else values[index]
    fresh = layer.prepare_context(context[index], v_rows, context_mask=mask[index])
    close(picked.key, fresh.key)
    close(picked.value, fresh.value)
    queries = torch.randn(4, 2, layer.query_dim, generator=gen, dtype=torch.float64)
    close(layer(queries, picked), layer(queries, fresh))


def test_repeat_interleave_for_beams(gen):
    layer = build("kv_heads=1", gen)
    _, context, _ = inputs(layer, gen, b=2)
    mask = context_mask_for(gen, 2, 7)
    prepared = layer.prepare_context(context, context_mask=mask)
    beams = prepared.repeat_interleave(3)
    assert beams.batch_size == 6 and beams.length == 7
    assert beams.key.is_contiguous() and beams.value.is_contiguous()
    index = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.equal(beams.key, prepared.key[index])
    assert torch.equal(beams.value, prepared.value[index])
    assert torch.equal(beams.key_mask, mask[index])
    queries = torch.randn(6, 1, layer.query_dim, generator=gen, dtype=torch.float64)
    expanded = layer(queries, context[index], context_mask=mask[index])
    close(layer(queries, beams), expanded)
    no_mask = layer.prepare_context(context).repeat_interleave(2)
    assert no_mask.key_mask is None and no_mask.batch_size == 4


# --- from_torch ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
@pytest.mark.parametrize("layout", ["packed", "kdim-vdim"])
@pytest.mark.parametrize("padding", [False, True], ids=["no-padding", "padding"])
def test_from_torch_matches_multihead_attention(layout, batch_first, bias, padding, gen):
    torch.manual_seed(int(torch.randint(0, 1 << 30, (1,), generator=gen)))
    kdims = {} if layout == "packed" else {"kdim": 10, "vdim": 6}
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first, **kdims).eval()
    layer = CrossAttention.from_torch(mha).eval()
    assert (layer.context_dim, layer.value_dim) == ((16, 16) if layout == "packed" else (10, 6))
    b, length, s = 3, 5, 8
    queries = torch.randn(b, length, 16, generator=gen)
    keys = torch.randn(b, s, layer.context_dim, generator=gen)
    values = torch.randn(b, s, layer.value_dim, generator=gen)
    key_padding_mask = None
    if padding:
        key_padding_mask = torch.zeros(b, s, dtype=torch.bool)  # True = ignore (torch's rule)
        key_padding_mask[0, 5:] = True
        key_padding_mask[2, 1::2] = True

    def seq_first(t):
        return t if batch_first else t.transpose(0, 1)

    with torch.no_grad():
        want, want_w = mha(
            seq_first(queries),
            seq_first(keys),
            seq_first(values),
            key_padding_mask=key_padding_mask,
            need_weights=True,
            average_attn_weights=True,
        )
        context_mask = None if key_padding_mask is None else ~key_padding_mask
        got, got_w = layer(queries, keys, values, context_mask=context_mask, return_weights="mean")
    torch.testing.assert_close(got, seq_first(want), rtol=0, atol=1e-5)
    torch.testing.assert_close(got_w, want_w, rtol=0, atol=1e-5)


def test_from_torch_keeps_dtype_dropout_and_mode():
    mha = nn.MultiheadAttention(8, 2, dropout=0.25).double()
    layer = CrossAttention.from_torch(mha)
    assert layer.to_q.weight.dtype == torch.float64
    assert layer.dropout == 0.25 and layer.training
    assert layer.to_out.bias is not None
    # an MHA in eval mode gives a layer in eval mode: no dropout, the same output
    mha.eval()
    layer = CrossAttention.from_torch(mha)
    assert not layer.training
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    want, _ = mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))
    torch.testing.assert_close(layer(x, x), want.transpose(0, 1), rtol=1e-12, atol=1e-12)


def test_layer_under_autocast(gen):
    """bfloat16 autocast: inputs and parameters may differ in dtype there; the error stays within
    k times the error of the whole layer cast to bfloat16 (both against float64)."""
    layer = build("kv_heads=2", gen)
    queries, context, _ = inputs(layer, gen)
    mask = context_mask_for(gen, 2, 7)
    exact, _ = manual(layer, queries, context, context_mask=mask)
    layer32 = layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer32(queries.float(), context.float(), context_mask=mask)
    assert out.dtype == torch.bfloat16
    low = copy.deepcopy(layer32).bfloat16()(
        queries.bfloat16(), context.bfloat16(), context_mask=mask
    )
    yardstick = (low.double() - exact).abs().max().item()
    assert (out.double() - exact).abs().max().item() <= TOLERANCE_FACTOR * yardstick


def test_public_projections_are_the_layers_own():
    # project_queries / project_keys / project_values give what forward attends with: the
    # output of plain attention over them, through to_out, is the layer's output.
    torch.manual_seed(0)
    layer = CrossAttention(6, 5, 3, heads=4, dim_head=2, kv_heads=2, qk_norm="rms_norm").eval()
    queries, context, values = torch.randn(2, 7, 6), torch.randn(2, 3, 5), torch.randn(2, 3, 3)
    with torch.no_grad():
        q = layer.project_queries(queries)
        k, v = layer.project_keys(context), layer.project_values(values)
        assert q.shape == (2, 4, 7, 2) and k.shape == v.shape == (2, 2, 3, 2)
        prepared = layer.prepare_context(context, values)
        assert torch.equal(prepared.key, k) and torch.equal(prepared.value, v)
        k2, v2 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # (B, H, S, D)

        def plain(dtype):
            probs = torch.softmax(q.to(dtype) @ k2.to(dtype).transpose(-1, -2) * layer.scale, -1)
            merged = (probs @ v2.to(dtype)).transpose(1, 2).reshape(2, 7, 8)  # (B, L, H*D)
            return nn.functional.linear(
                merged, layer.to_out.weight.to(dtype), layer.to_out.bias.to(dtype)
            )

        exact, yardstick = plain(torch.float64), plain(torch.float32)
        got = layer(queries, context, values)
    err = (yardstick.double() - exact).abs().max().item()
    tol = TOLERANCE_FACTOR * err + rounding_floor(exact, torch.float32)
    assert (got.double() - exact).abs().max().item() <= tol
    assert layer.scale == 1 / math.sqrt(2)
    with pytest.raises(
        ValueError, match=r"queries must have shape \(B, L, query_dim\) with last dim 6"
    ):
        layer.project_queries(torch.randn(2, 7, 5))
    with pytest.raises(
        ValueError, match=r"context must have shape \(B, S, context_dim\) with last dim 5"
    ):
        layer.project_keys(torch.randn(2, 3, 6))
    with pytest.raises(TypeError, match=r"values must be a floating-point tensor"):
        layer.project_values(torch.ones(2, 3, 3, dtype=torch.long))


def test_decoding_step_checks_its_source_once_at_the_decoder_layer(monkeypatch):
    """A decoding step (prepared source, cache) checks tokens and source at the decoder layer's
    boundary; its two CrossAttention calls trust it and check nothing again."""
    import crossattn.layers.attention as attention
    from crossattn import TransformerDecoderLayer

    torch.manual_seed(0)
    layer = TransformerDecoderLayer(8, heads=2, dim_ff=8).eval()
    source = torch.randn(2, 3, 8)
    prepared = layer.prepare_context(source)
    cache = layer(torch.randn(2, 2, 8), prepared, use_cache=True).cache
    seen = []
    real = attention.check_features
    monkeypatch.setattr(
        attention, "check_features", lambda *a, **k: seen.append(a[0]) or real(*a, **k)
    )
    torch.manual_seed(1)
    tokens = torch.randn(2, 1, 8)
    out = layer(tokens, prepared, cache=cache).tokens
    assert seen == []  # neither the self- nor the cross-attention checks its queries again
    assert torch.equal(out, layer(tokens, source, cache=cache).tokens)
    assert seen == ["source"]  # a raw source: checked once, in the decoder layer's words
    # the errors of bad input are as informative as CrossAttention's own
    with pytest.raises(ValueError, match="^tokens have B=1 but the source has B=2; use Prepared"):
        layer(torch.randn(1, 1, 8), prepared)
    with pytest.raises(ValueError, match="^tokens have B=1 but the source has B=2"):
        layer(torch.randn(1, 1, 8), source)
    other = TransformerDecoderLayer(8, heads=2, dim_ff=8)
    with pytest.raises(ValueError, match="this PreparedContext was made by another layer"):
        layer(tokens, other.prepare_context(source))
    with pytest.raises(ValueError, match=r"source_mask must have shape \(B, S\) = \(2, 3\)"):
        layer(tokens, source, source_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"source_mask was given with a PreparedContext.*"
                       r"prepare_context\(source, source_mask=\.\.\.\)"):  # fmt: skip
        layer(tokens, prepared, source_mask=torch.ones(2, 3, dtype=torch.bool))
