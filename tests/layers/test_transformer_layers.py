"""TransformerEncoderLayer / TransformerDecoderLayer against torch's own layers, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crossattn import PreparedContext
from crossattn.layers import TransformerDecoderLayer, TransformerEncoderLayer

D, HEADS, FF = 24, 4, 40
TOL = 1e-10  # float64 end to end


def _copy_attention(mine, theirs: nn.MultiheadAttention) -> None:
    wq, wk, wv = theirs.in_proj_weight.chunk(3, dim=0)
    bq, bk, bv = theirs.in_proj_bias.chunk(3, dim=0)
    assert mine.to_k.bias is None  # a key bias only shifts every score of a row: left out
    with torch.no_grad():
        bk.normal_()  # theirs keeps one: it must not change their output either
        for lin, w, b in ((mine.to_q, wq, bq), (mine.to_k, wk, None), (mine.to_v, wv, bv)):
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        mine.to_out.weight.copy_(theirs.out_proj.weight)
        mine.to_out.bias.copy_(theirs.out_proj.bias)


def _copy_common(mine, theirs, norms) -> None:
    with torch.no_grad():
        mine.ffn.linear_in.load_state_dict(theirs.linear1.state_dict())
        mine.ffn.linear_out.load_state_dict(theirs.linear2.state_dict())
        for block, norm in norms:
            block.norm.load_state_dict(norm.state_dict())


def _encoder_pair(norm_first: bool):
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(
        D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=torch.float64
    ).eval()
    mine = TransformerEncoderLayer(D, heads=HEADS, dim_ff=FF, norm_first=norm_first).double()
    _copy_attention(mine.self_attn, theirs.self_attn)
    _copy_common(mine, theirs, [(mine.attn_block, theirs.norm1), (mine.ffn_block, theirs.norm2)])
    return mine.eval(), theirs


def _decoder_pair(norm_first: bool):
    torch.manual_seed(1)
    theirs = nn.TransformerDecoderLayer(
        D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=torch.float64
    ).eval()
    mine = TransformerDecoderLayer(D, heads=HEADS, dim_ff=FF, norm_first=norm_first).double()
    _copy_attention(mine.self_attn, theirs.self_attn)
    _copy_attention(mine.cross_attn_target_to_source, theirs.multihead_attn)
    _copy_common(
        mine,
        theirs,
        [
            (mine.self_block, theirs.norm1),
            (mine.cross_block, theirs.norm2),
            (mine.ffn_block, theirs.norm3),
        ],
    )
    return mine.eval(), theirs


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("s", [1, 7])
def test_encoder_layer_matches_torch(norm_first, s):
    mine, theirs = _encoder_pair(norm_first)
    tokens = torch.randn(3, s, D, dtype=torch.float64)
    mask = torch.ones(3, s, dtype=torch.bool)
    mask[1, max(1, s - 3) :] = False
    expected = theirs(tokens, src_key_padding_mask=~mask)
    got = mine(tokens, token_mask=mask)
    assert got.shape == (3, s, D)
    torch.testing.assert_close(got[mask], expected[mask], atol=TOL, rtol=0)


def test_encoder_padding_is_never_read():
    mine, _ = _encoder_pair(True)
    tokens = torch.randn(2, 6, D, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    clean = mine(tokens[:1, :4])
    poisoned = tokens.clone()
    poisoned[0, 4:] = float("nan")
    got = mine(poisoned, token_mask=mask)
    torch.testing.assert_close(got[0, :4], clean[0], atol=TOL, rtol=0)
    assert torch.isfinite(got[1]).all()


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize(("t", "s"), [(5, 9), (6, 1), (1, 4)])
def test_decoder_layer_matches_torch(norm_first, t, s):
    mine, theirs = _decoder_pair(norm_first)
    target = torch.randn(2, t, D, dtype=torch.float64)
    source = torch.randn(2, s, D, dtype=torch.float64)
    source_mask = torch.ones(2, s, dtype=torch.bool)
    source_mask[1, max(1, s - 2) :] = False
    causal = torch.ones(t, t, dtype=torch.bool).triu(1)  # torch: True = masked out
    expected = theirs(target, source, tgt_mask=causal, memory_key_padding_mask=~source_mask)
    out = mine(target, source, source_mask=source_mask, return_weights=True)
    torch.testing.assert_close(out.tokens, expected, atol=TOL, rtol=0)
    assert out.cache is None
    assert out.cross_weights.shape == (2, HEADS, t, s)
    sums = out.cross_weights.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=TOL, rtol=0)
    assert (out.cross_weights[1, ..., max(1, s - 2) :] == 0).all() or s == 1


@pytest.mark.parametrize("norm_first", [True, False])
def test_incremental_cache_equals_full_pass(norm_first):
    mine, _ = _decoder_pair(norm_first)
    t, s = 7, 5
    target = torch.randn(3, t, D, dtype=torch.float64)
    source = torch.randn(3, s, D, dtype=torch.float64)
    source_mask = torch.ones(3, s, dtype=torch.bool)
    source_mask[2, 3:] = False
    full = mine(target, source, source_mask=source_mask, return_weights=True)
    prepared = mine.prepare_context(source, source_mask)
    cache, steps, weights = None, [], []
    # one position, then two at once, then one at a time: all cache paths
    for lo, hi in [(0, 1), (1, 3), *((k, k + 1) for k in range(3, t))]:
        out = mine(target[:, lo:hi], prepared, cache=cache, use_cache=True, return_weights=True)
        cache = out.cache
        steps.append(out.tokens)
        weights.append(out.cross_weights)
        assert cache.length == hi and cache.key.is_contiguous()
    torch.testing.assert_close(torch.cat(steps, 1), full.tokens, atol=TOL, rtol=0)
    torch.testing.assert_close(torch.cat(weights, 2), full.cross_weights, atol=TOL, rtol=0)


def test_prepared_context_equals_raw_source_and_padding_is_never_read():
    mine, _ = _decoder_pair(True)
    target = torch.randn(2, 4, D, dtype=torch.float64)
    source = torch.randn(2, 6, D, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    raw = mine(target, source, source_mask=mask).tokens
    poisoned = source.clone()
    poisoned[0, 3:] = float("nan")
    prepared = mine.prepare_context(poisoned, mask)
    assert isinstance(prepared, PreparedContext)
    got = mine(target, prepared).tokens
    torch.testing.assert_close(got, raw, atol=TOL, rtol=0)


def test_dropout_only_in_training():
    layer = TransformerDecoderLayer(D, heads=HEADS, dim_ff=FF, dropout=0.5)
    target, source = torch.randn(2, 3, D), torch.randn(2, 4, D)
    layer.eval()
    a, b = layer(target, source).tokens, layer(target, source).tokens
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    layer.train()
    assert not torch.allclose(layer(target, source).tokens, a)


def test_context_dim_differs_from_d_model():
    layer = TransformerDecoderLayer(16, 10, heads=2, dim_ff=32)
    out = layer(torch.randn(2, 3, 16), torch.randn(2, 5, 10), return_weights="mean")
    assert out.tokens.shape == (2, 3, 16) and out.cross_weights.shape == (2, 3, 5)


def test_errors():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by heads=4"):
        TransformerEncoderLayer(10, heads=4)
    with pytest.raises(ValueError, match=r"dim_ff must be a positive int, got 0"):
        TransformerDecoderLayer(8, heads=2, dim_ff=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        TransformerDecoderLayer(8, heads=2, dim_ff=8, dropout=1.0)
    layer = TransformerDecoderLayer(8, heads=2, dim_ff=8)
    other = TransformerDecoderLayer(8, heads=2, dim_ff=8)
    source = torch.randn(2, 3, 8)
    with pytest.raises(
        ValueError,
        match=r"tokens must have shape \(B, T, d_model\) with last dim 8, got \(2, 3, 5\)",
    ):
        layer(torch.randn(2, 3, 5), source)
    cache = other(torch.randn(2, 1, 8), source, use_cache=True).cache
    with pytest.raises(ValueError, match="cache was made by another layer"):
        layer(torch.randn(2, 1, 8), source, cache=cache)
    cache = layer(torch.randn(2, 1, 8), source, use_cache=True).cache
    with pytest.raises(ValueError, match=r"cache has B=2 rows but tokens have B=1"):
        layer(torch.randn(1, 1, 8), source[:1], cache=cache)
    prepared = layer.prepare_context(source)
    with pytest.raises(ValueError, match="source_mask was given with a PreparedContext"):
        layer(torch.randn(2, 1, 8), prepared, source_mask=torch.ones(2, 3, dtype=torch.bool))
    enc = TransformerEncoderLayer(8, heads=2, dim_ff=8)
    with pytest.raises(ValueError, match=r"token_mask must have shape \(B, S\) = \(2, 3\)"):
        enc(source, token_mask=torch.ones(2, 4, dtype=torch.bool))
