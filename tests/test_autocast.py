"""Autocast: float masks of any float dtype, and one output dtype for every backend and mode.

Under ``torch.autocast`` the op computes in the autocast dtype (float64 inputs excepted), as
SDPA and ``nn.Linear`` do: its output and weights have that dtype whatever the backend and
whatever ``return_weights`` asks. A float ``attn_mask`` of any float dtype is converted to it.
Outside autocast the output has the query's dtype. The `backend` fixture (conftest) covers
every registered backend, automatic dispatch and the chunked backend with tiny tiles.
"""

from __future__ import annotations

import pytest
import torch

from crossattn import CrossAttention, cross_attention
from tests.conftest import DTYPES, assert_matches, backend_reasons, expected, randn

AUTOCAST = torch.bfloat16
FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
MODES = [False, True, "mean"]

# (B, H, Hk, L, S, E, Ev): grouped heads, L != S, E != Ev.
SHAPE = (2, 4, 2, 5, 7, 8, 6)


def _inputs(gen, dtype=torch.float32):
    b, h, hk, length, s, e, ev = SHAPE
    q = randn(b, h, length, e, generator=gen).to(dtype)
    k = randn(b, hk, s, e, generator=gen).to(dtype)
    v = randn(b, hk, s, ev, generator=gen).to(dtype)
    mask = randn(b, 1, length, s, generator=gen)
    mask[0, 0, 1, :3] = float("-inf")
    mask[1, 0, 2, :] = float("-inf")  # a fully masked row
    return q, k, v, mask


def _skip_without_weights(backend, q, k, v, mode):
    if mode and backend_reasons(backend, q, k, v, return_weights=mode):
        pytest.skip(f"{backend} returns no weights (its refusal is tested in test_backends)")


@pytest.mark.parametrize("mask_dtype", FLOATS, ids=str)
def test_op_takes_a_float_mask_of_any_dtype_under_autocast(backend, mask_dtype, gen):
    """The mask is converted to the compute dtype: the same result as converting it first."""
    q, k, v, mask = _inputs(gen)
    mask = mask.to(mask_dtype)
    with torch.autocast("cpu", dtype=AUTOCAST):
        out = cross_attention(q, k, v, attn_mask=mask, backend=backend)
    low = (t.to(AUTOCAST) for t in (q, k, v))
    want = cross_attention(*low, attn_mask=mask.to(AUTOCAST), backend=backend)
    assert out.dtype == AUTOCAST
    assert torch.equal(out, want)


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_op_output_dtype_is_the_autocast_dtype_on_every_backend(backend, mode, gen):
    """float32 inputs under bfloat16 autocast: bfloat16 out and weights, bfloat16 accuracy."""
    q, k, v, mask = _inputs(gen)
    _skip_without_weights(backend, q.to(AUTOCAST), k.to(AUTOCAST), v.to(AUTOCAST), mode)
    with torch.autocast("cpu", dtype=AUTOCAST):
        res = cross_attention(q, k, v, attn_mask=mask, backend=backend, return_weights=mode)
    for t in res if mode else (res,):
        assert t.dtype == AUTOCAST
    exp = expected(q, k, v, AUTOCAST, attn_mask=mask, return_weights=mode)
    assert_matches(res, exp)


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_output_dtype_is_the_query_dtype_outside_autocast(backend, dtype, mode, gen):
    q, k, v, mask = _inputs(gen, dtype)
    _skip_without_weights(backend, q, k, v, mode)
    res = cross_attention(q, k, v, attn_mask=mask.to(dtype), backend=backend, return_weights=mode)
    for t in res if mode else (res,):
        assert t.dtype == dtype


def test_op_keeps_float64_under_autocast(backend, gen):
    """Autocast leaves float64 alone (as it does for SDPA and nn.Linear)."""
    q, k, v, mask = _inputs(gen, torch.float64)
    with torch.autocast("cpu", dtype=AUTOCAST):
        out = cross_attention(q, k, v, attn_mask=mask.float(), backend=backend)
    assert out.dtype == torch.float64
    assert_matches(out, expected(q, k, v, torch.float64, attn_mask=mask.float().double()))


def test_op_under_autocast_takes_mixed_input_dtypes(backend, gen):
    """Under autocast q, k and v may come in different float dtypes (a bfloat16 projection and
    a float32 cached context), as with SDPA: all are cast to the autocast dtype."""
    q, k, v, _ = _inputs(gen)
    with torch.autocast("cpu", dtype=AUTOCAST):
        out = cross_attention(q.to(AUTOCAST), k, v.half(), backend=backend)
    want = cross_attention(q.to(AUTOCAST), k.to(AUTOCAST), v.half().to(AUTOCAST), backend=backend)
    assert torch.equal(out, want)


def test_op_outside_autocast_still_wants_the_query_dtype_for_a_float_mask(gen):
    q, k, v, mask = _inputs(gen)
    with pytest.raises(TypeError, match="a float attn_mask must have the query's dtype"):
        cross_attention(q, k, v, attn_mask=mask)


LAYER_BACKENDS = [None, "reference", "sdpa", "chunked"]


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layer_backend", LAYER_BACKENDS, ids=str)
def test_layer_takes_a_float32_mask_under_autocast(layer_backend, mask_dtype, gen):
    """The issue's call: CrossAttention(16, 12, heads=4, dim_head=8) with a float32 additive
    mask under bfloat16 autocast, as nn.MultiheadAttention accepts it."""
    torch.manual_seed(0)
    layer = CrossAttention(16, 12, heads=4, dim_head=8, backend=layer_backend).eval()
    x, c = randn(2, 5, 16, generator=gen).float(), randn(2, 7, 12, generator=gen).float()
    m = randn(5, 7, generator=gen).to(mask_dtype)
    m[1, :4] = float("-inf")
    with torch.no_grad(), torch.autocast("cpu", dtype=AUTOCAST):
        out = layer(x, c, attn_mask=m)
        want = layer(x, c, attn_mask=m.to(AUTOCAST))
        if layer_backend != "sdpa":
            _, weights = layer(x, c, attn_mask=m, return_weights=True)
            assert weights.dtype == AUTOCAST
    assert out.dtype == AUTOCAST
    assert torch.equal(out, want)


@pytest.mark.interop
def test_diffusers_processor_takes_a_float32_mask_under_autocast():
    """CrossAttnProcessor with diffusers' additive float32 mask under bfloat16 autocast: within
    k times the error of diffusers' own AttnProcessor2_0 under autocast (both against
    float64)."""
    pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from crossattn.integrations.diffusers import CrossAttnProcessor
    from tests.conftest import TOLERANCE_FACTOR

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=4, dim_head=8).eval()
    hidden, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    mask = torch.zeros(2, 1, 7)
    mask[1, :, 4:] = -10000.0
    with torch.no_grad():
        exact = attn.double()(hidden.double(), context.double(), attention_mask=mask.double())
        attn.float()
        attn.set_processor(AttnProcessor2_0())
        with torch.autocast("cpu", dtype=AUTOCAST):
            theirs = attn(hidden, context, attention_mask=mask)
        attn.set_processor(CrossAttnProcessor())
        with torch.autocast("cpu", dtype=AUTOCAST):
            ours = attn(hidden, context, attention_mask=mask)
    assert ours.dtype == theirs.dtype
    yardstick = (theirs.double() - exact).abs().max().item()
    eps = torch.finfo(AUTOCAST).eps * exact.abs().max().item()
    assert (ours.double() - exact).abs().max().item() <= TOLERANCE_FACTOR * yardstick + eps


@pytest.mark.interop
def test_diffusers_processor_upcast_attention_stays_float32_under_autocast():
    """upcast_attention under bfloat16 autocast computes the attention in float32, as for a
    bfloat16 module outside autocast (the op would otherwise cast it back to bfloat16)."""
    pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import Attention

    from crossattn.integrations.diffusers import CrossAttnProcessor

    torch.manual_seed(0)
    attn = Attention(
        query_dim=16, cross_attention_dim=12, heads=4, dim_head=8, upcast_attention=True
    ).eval()
    attn.set_processor(CrossAttnProcessor(backend="sdpa"))
    hidden, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=AUTOCAST):
            under_autocast = attn(hidden, context)
        bf16 = attn.to(AUTOCAST)(hidden.to(AUTOCAST), context.to(AUTOCAST))
    assert under_autocast.dtype == AUTOCAST
    assert torch.equal(under_autocast, bf16)
