"""GPU paths: run where CUDA is available (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

import crossattn
from crossattn import CrossAttention, cross_attention
from crossattn.backends import AttentionInputs, select_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(b=2, h=8, hk=2, length=77, s=333, e=64, ev=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, length, e, generator=g)
    k = torch.randn(b, hk, s, e, generator=g)
    v = torch.randn(b, hk, s, ev, generator=g)
    key_mask = torch.rand(b, s, generator=g) > 0.3
    key_mask[1] = False  # a fully padded row
    return q, k, v, key_mask


def _low_precision_error(q, k, v, key_mask, dtype):
    """Error of plain math in `dtype` against float64: the yardstick for every backend."""
    exact = cross_attention(
        q.double(), k.double(), v.double(), key_mask=key_mask, backend="reference"
    )
    qd, kd, vd = (t.to(dtype).cuda() for t in (q, k, v))
    scores = (
        torch.einsum("bkgle,bkse->bkgls", qd.view(2, 2, 4, *qd.shape[2:]), kd)
        * qd.shape[-1] ** -0.5
    )
    scores = scores.masked_fill(~key_mask.cuda()[:, None, None, None, :], float("-inf"))
    p = torch.softmax(scores.float(), -1).nan_to_num(0.0).to(dtype)
    naive = torch.einsum("bkgls,bksv->bkglv", p, vd).reshape(2, 8, *qd.shape[2:3], -1)
    return exact, (naive.double().cpu() - exact).abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", [None, "sdpa", "chunked", "reference"])
def test_backends_match_reference_on_cuda(backend, dtype):
    q, k, v, key_mask = _inputs()
    exact, yardstick = _low_precision_error(q, k, v, key_mask, dtype)
    out = cross_attention(
        *(t.to(dtype).cuda() for t in (q, k, v)), key_mask=key_mask.cuda(), backend=backend
    )
    assert out.device.type == "cuda" and out.dtype == dtype
    err = (out.double().cpu() - exact).abs().max().item()
    assert err <= 3 * yardstick + 1e-5, (backend, dtype, err, yardstick)
    assert torch.all(out[1] == 0)


def test_dispatch_keeps_to_sdpa_on_cuda():
    q, k, v = (t.cuda() for t in _inputs()[:3])
    for dtype in DTYPES:
        inputs = AttentionInputs(q.to(dtype), k.to(dtype), v.to(dtype), None, 0.125, 0.0, False)
        assert select_backend(inputs).name == "sdpa"
        weights = AttentionInputs(q.to(dtype), k.to(dtype), v.to(dtype), None, 0.125, 0.0, "mean")
        assert select_backend(weights).name != "chunked"


def test_weights_and_gradients_on_cuda():
    q, k, v, key_mask = _inputs(dtype=torch.float64)
    qc, kc, vc = (t.double().cuda().requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    out, w = cross_attention(qc, kc, vc, key_mask=key_mask.cuda(), return_weights="mean")
    ref, wr = cross_attention(
        qr, kr, vr, key_mask=key_mask, return_weights="mean", backend="reference"
    )
    torch.testing.assert_close(w.cpu(), wr, rtol=1e-10, atol=1e-12)
    (out * out).sum().backward()
    (ref * ref).sum().backward()
    for a, b in ((qc, qr), (kc, kr), (vc, vr)):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-9, atol=1e-11)
    for name in ("sdpa", "chunked"):
        qn, kn, vn = (t.double().cuda().requires_grad_() for t in (q, k, v))
        o = cross_attention(qn, kn, vn, key_mask=key_mask.cuda(), backend=name)
        (o * o).sum().backward()
        for a, b in ((qn, qr), (kn, kr), (vn, vr)):
            torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-9, atol=1e-11)


def test_layer_on_cuda_prepared_context_is_exact():
    torch.manual_seed(0)
    layer = CrossAttention(64, 96, heads=4, dim_head=16, kv_heads=2).cuda().eval()
    queries = torch.randn(3, 10, 64, device="cuda")
    context = torch.randn(3, 17, 96, device="cuda")
    mask = torch.rand(3, 17, device="cuda") > 0.2
    with torch.no_grad():
        direct = layer(queries, context, context_mask=mask)
        prepared = layer(queries, layer.prepare_context(context, context_mask=mask))
    assert torch.equal(direct, prepared)
    assert "sdpa" in crossattn.available_backends()
