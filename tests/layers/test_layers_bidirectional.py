"""bidirectional_attention and BidirectionalCrossAttention against explicit float64 math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from crossattn import CrossAttention, cross_attention
from crossattn.functional import bidirectional_attention
from crossattn.layers import BidirectionalCrossAttention
from tests.conftest import tol64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(5)


def masked_softmax(scores: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the last axis of the allowed entries; a row with none gives 0."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_ok = allowed.any(dim=-1, keepdim=True)
    return torch.softmax(scores.masked_fill(~row_ok, 0.0), dim=-1) * row_ok


def explicit_shared(a_q, b_k, a_v, b_v, a_mask, b_mask, scale=None):
    """One similarity matrix, a softmax over each axis, written out in float64."""
    b, _, la, e = a_q.shape
    lb = b_k.shape[2]
    am = torch.ones(b, la, dtype=torch.bool) if a_mask is None else a_mask
    bm = torch.ones(b, lb, dtype=torch.bool) if b_mask is None else b_mask
    zero = torch.zeros((), dtype=a_q.dtype)
    a_q, a_v = (torch.where(am[:, None, :, None], t, zero) for t in (a_q, a_v))
    b_k, b_v = (torch.where(bm[:, None, :, None], t, zero) for t in (b_k, b_v))
    scale = 1 / math.sqrt(e) if scale is None else scale
    sim = a_q @ b_k.transpose(-1, -2) * scale  # (B, H, La, Lb)
    allowed = am[:, None, :, None] & bm[:, None, None, :]  # (B, 1, La, Lb)
    w_ab = masked_softmax(sim, allowed)  # over Lb
    w_ba = masked_softmax(sim.transpose(-1, -2), allowed.transpose(-1, -2))  # over La
    return w_ab @ b_v, w_ba @ a_v, w_ab, w_ba


def poisoned(gen, b=3, h=2, la=7, lb=5, e=4, eva=3, evb=6):
    a_q = torch.randn(b, h, la, e, generator=gen, dtype=torch.float64)
    b_k = torch.randn(b, h, lb, e, generator=gen, dtype=torch.float64)
    a_v = torch.randn(b, h, la, eva, generator=gen, dtype=torch.float64)
    b_v = torch.randn(b, h, lb, evb, generator=gen, dtype=torch.float64)
    a_mask = torch.rand(b, la, generator=gen) > 0.3
    b_mask = torch.rand(b, lb, generator=gen) > 0.3
    a_mask[0], b_mask[0] = True, True
    b_mask[2] = False  # B side fully padded in row 2: every output of row 2 is 0
    nan = float("nan")
    a_q = a_q.masked_fill(~a_mask[:, None, :, None], nan)
    a_v = a_v.masked_fill(~a_mask[:, None, :, None], nan)
    b_k = b_k.masked_fill(~b_mask[:, None, :, None], nan)
    b_v = b_v.masked_fill(~b_mask[:, None, :, None], nan)
    return a_q, b_k, a_v, b_v, a_mask, b_mask


@pytest.mark.parametrize("backend", ["reference", "chunked", "sdpa", None])
def test_functional_matches_explicit(gen, backend):
    a_q, b_k, a_v, b_v, a_mask, b_mask = poisoned(gen)
    weights = backend != "sdpa"  # SDPA returns no weights
    got = bidirectional_attention(
        a_q, b_k, a_v, b_v, a_mask=a_mask, b_mask=b_mask, backend=backend, return_weights=weights
    )
    ref = explicit_shared(a_q, b_k, a_v, b_v, a_mask, b_mask)
    assert len(got) == (4 if weights else 2)
    for name, g, r in zip(("a_out", "b_out", "w_ab", "w_ba"), got, ref):
        assert g.shape == r.shape, name
        assert torch.isfinite(g).all(), name
        assert (g - r).abs().max().item() <= tol64(r, 8), name
    assert got[0][2].abs().max() == 0 and got[1][2].abs().max() == 0  # fully padded side
    assert got[0][~a_mask[:, None].expand(-1, 2, -1)].abs().max() == 0  # padded rows: exactly 0


def test_functional_mean_weights_scale_and_odd_shapes(gen):
    a_q, b_k, a_v, b_v = (t.nan_to_num() for t in poisoned(gen, la=1, lb=9, h=3)[:4])
    a_out, b_out, w_ab, w_ba = bidirectional_attention(
        a_q, b_k, a_v, b_v, scale=0.3, return_weights="mean"
    )
    ref = explicit_shared(a_q, b_k, a_v, b_v, None, None, scale=0.3)
    assert w_ab.shape == (3, 1, 9) and w_ba.shape == (3, 9, 1)
    assert (w_ab - ref[2].mean(1)).abs().max().item() <= tol64(ref[2], 9)
    assert (w_ba - ref[3].mean(1)).abs().max().item() <= tol64(ref[3], 9)
    assert torch.allclose(w_ba, torch.ones_like(w_ba))  # one A token: each B token takes it all
    assert (a_out - ref[0]).abs().max().item() <= tol64(ref[0], 9)
    assert (b_out - ref[1]).abs().max().item() <= tol64(ref[1], 9)


def test_functional_gradients_match_explicit(gen):
    a_q, b_k, a_v, b_v, a_mask, b_mask = poisoned(gen)
    clean = [t.nan_to_num().requires_grad_() for t in (a_q, b_k, a_v, b_v)]
    out = bidirectional_attention(*clean, a_mask=a_mask, b_mask=b_mask, backend="reference")
    (out[0].sum() + out[1].square().sum()).backward()
    got = [t.grad.clone() for t in clean]
    for t in clean:
        t.grad = None
    ref = explicit_shared(*clean, a_mask, b_mask)
    (ref[0].sum() + ref[1].square().sum()).backward()
    for g, t in zip(got, clean):
        assert (g - t.grad).abs().max().item() <= tol64(t.grad, 8)


def test_functional_errors(gen):
    a_q, b_k, a_v, b_v, a_mask, b_mask = poisoned(gen)
    with pytest.raises(
        ValueError, match=r"a_q \(B, H, La, E\) and a_v \(B, H, La, Eva\) must agree"
    ):
        bidirectional_attention(a_q, b_k, a_v[:, :, :3], b_v)
    with pytest.raises(
        ValueError, match=r"b_k \(B, H, Lb, E\) and b_v \(B, H, Lb, Evb\) must agree"
    ):
        bidirectional_attention(a_q, b_k, a_v, b_v[:, :, :2])
    with pytest.raises(ValueError, match=r"must agree on B, H and E: got a_q \(3, 2, 7, 4\), b_k \(3, 2, 5, 3\)"):  # fmt: skip
        bidirectional_attention(a_q, b_k[..., :3], a_v, b_v)
    with pytest.raises(
        ValueError, match=r"a_mask must have shape \(B, La\) = \(3, 7\), got \(3, 5\)"
    ):
        bidirectional_attention(a_q, b_k, a_v, b_v, a_mask=b_mask)
    with pytest.raises(TypeError, match=r"b_mask must be a bool tensor \(B, Lb\)"):
        bidirectional_attention(a_q, b_k, a_v, b_v, b_mask=b_mask.float())
    with pytest.raises(ValueError, match=r"a_q must be 4-D \(B, H, L, D\), got shape \(7, 4\)"):
        bidirectional_attention(a_q[0, 0], b_k, a_v, b_v)


def ref_attention(layer: CrossAttention, queries, context, *, context_mask=None, weights=False):
    """The layer's output (B, L, out) in float64 reference math; with weights, also (B, H, L, S)."""
    b, length, _ = queries.shape
    s = context.shape[1]
    h, d = layer.heads, layer.dim_head
    q = layer.to_q(queries).view(b, length, h, d).transpose(1, 2)
    k = layer.to_k(context).view(b, s, h, d).transpose(1, 2)
    v = layer.to_v(context).view(b, s, h, d).transpose(1, 2)
    out, w = cross_attention(
        q, k, v, key_mask=context_mask, backend="reference", return_weights=True
    )
    out = layer.to_out(out.transpose(1, 2).reshape(b, length, h * d))
    return (out, w) if weights else out


def layer_inputs(gen):
    a = torch.randn(3, 7, 10, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    a_mask = torch.rand(3, 7, generator=gen) > 0.3
    b_mask = torch.rand(3, 5, generator=gen) > 0.3
    a_mask[0], b_mask[0], b_mask[1, 0] = True, True, True
    a_mask[2] = False
    a = a.masked_fill(~a_mask[..., None], float("nan"))
    b = b.masked_fill(~b_mask[..., None], float("nan"))
    return a, b, a_mask, b_mask


@pytest.mark.parametrize("out_dim", [None, 8])
def test_layer_two_matches_explicit(gen, out_dim):
    torch.manual_seed(0)
    layer = BidirectionalCrossAttention(10, 6, heads=2, dim_head=4, out_dim=out_dim).double()
    a, b, a_mask, b_mask = layer_inputs(gen)
    a_out, b_out, w_ab, w_ba = layer(a, b, a_mask=a_mask, b_mask=b_mask, return_weights=True)
    ca, cb = a.nan_to_num(), b.nan_to_num()
    ref_a, ref_w_ab = ref_attention(layer.attn_a_to_b, ca, cb, context_mask=b_mask, weights=True)
    ref_b, ref_w_ba = ref_attention(layer.attn_b_to_a, cb, ca, context_mask=a_mask, weights=True)
    ref_a = ref_a * a_mask[..., None]
    ref_b = ref_b * b_mask[..., None]
    assert a_out.shape == (3, 7, out_dim or 10) and b_out.shape == (3, 5, out_dim or 6)
    assert (a_out - ref_a).abs().max().item() <= tol64(ref_a, 10)
    assert (b_out - ref_b).abs().max().item() <= tol64(ref_b, 10)
    assert w_ab.shape == (3, 2, 7, 5) and w_ba.shape == (3, 2, 5, 7)
    assert w_ab.transpose(1, 2)[~a_mask].abs().max() == 0  # padded A rows: weights exactly 0
    assert w_ba.transpose(1, 2)[~b_mask].abs().max() == 0  # padded B rows likewise
    ref_w_ab = ref_w_ab * a_mask[:, None, :, None]
    ref_w_ba = ref_w_ba * b_mask[:, None, :, None]
    assert (w_ab - ref_w_ab).abs().max().item() <= tol64(ref_w_ab, 10)
    assert (w_ba - ref_w_ba).abs().max().item() <= tol64(ref_w_ba, 10)


def test_layer_shared_matches_explicit(gen):
    torch.manual_seed(1)
    layer = BidirectionalCrossAttention(10, 6, heads=2, dim_head=4, mode="shared").double()
    a, b, a_mask, b_mask = layer_inputs(gen)
    a_out, b_out, w_ab, w_ba = layer(a, b, a_mask=a_mask, b_mask=b_mask, return_weights=True)
    ca, cb = a.nan_to_num(), b.nan_to_num()

    def heads(t, linear):
        return linear(t).view(t.shape[0], t.shape[1], 2, 4).transpose(1, 2)

    ref = explicit_shared(
        heads(ca, layer.to_qk_a), heads(cb, layer.to_qk_b), heads(ca, layer.to_v_a),
        heads(cb, layer.to_v_b), a_mask, b_mask,
    )  # fmt: skip
    ref_a = layer.to_out_a(ref[0].transpose(1, 2).reshape(3, 7, 8)) * a_mask[..., None]
    ref_b = layer.to_out_b(ref[1].transpose(1, 2).reshape(3, 5, 8)) * b_mask[..., None]
    assert (a_out - ref_a).abs().max().item() <= tol64(ref_a, 10)
    assert (b_out - ref_b).abs().max().item() <= tol64(ref_b, 10)
    assert (w_ab - ref[2]).abs().max().item() <= tol64(ref[2], 10)
    assert (w_ba - ref[3]).abs().max().item() <= tol64(ref[3], 10)
    assert torch.equal(a_out[2], torch.zeros_like(a_out[2]))  # all of A padded in row 2


@pytest.mark.parametrize("mode", ["two", "shared"])
def test_layer_gradients_and_float32(gen, mode):
    torch.manual_seed(2)
    layer = BidirectionalCrossAttention(10, 6, heads=2, dim_head=4, mode=mode)
    a, b, a_mask, b_mask = layer_inputs(gen)
    a32, b32 = a.float(), b.float()
    a_out, b_out = layer(a32, b32, a_mask=a_mask, b_mask=b_mask)
    (a_out.sum() + b_out.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    ref = layer.double()(a, b, a_mask=a_mask, b_mask=b_mask)
    assert (a_out.double() - ref[0]).abs().max().item() < 1e-5
    assert (b_out.double() - ref[1]).abs().max().item() < 1e-5


def test_layer_errors(gen):
    layer = BidirectionalCrossAttention(10, 6, heads=2, dim_head=4)
    a, b = torch.zeros(2, 3, 10), torch.zeros(2, 4, 6)
    with pytest.raises(ValueError, match="mode must be one of 'two', 'shared'; got 'one'"):
        BidirectionalCrossAttention(10, 6, mode="one")
    with pytest.raises(ValueError, match=r"a and b must have one batch size: a \(2, 3, 10\), b \(1, 4, 6\)"):  # fmt: skip
        layer(a, b[:1])
    with pytest.raises(ValueError, match=r"b must have shape \(B, Lb, dim_b\) with last dim 6"):
        layer(a, torch.zeros(2, 4, 5))
    with pytest.raises(
        ValueError, match=r"b_mask must have shape \(B, Lb\) = \(2, 4\), got \(2, 3\)"
    ):
        layer(a, b, b_mask=torch.ones(2, 3, dtype=torch.bool))
