"""The lse backend: fused-kernel output, weights rebuilt per query block from its log-sum-exp.

Every check is against the float64 reference of `conftest` with derived tolerances: outputs,
weights (per head and head mean), gradients; bool, float and key masks, grouped heads, fully
masked rows, odd shapes, query blocks small enough that a call crosses many of them. The same
tests run on CUDA where a device is present (marked ``gpu``).
"""

from __future__ import annotations

import math

import pytest
import torch

from crossattn import cross_attention
from crossattn.backends import AttentionInputs, get_backend, register_backend
from crossattn.backends.lse import (
    LSEBackend,
    attention_with_lse,
    kernel_runs,
    row_block,
    weights_from_lse,
)
from tests.conftest import assert_matches, expected, float64_floor, randn, reference

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
# (B, H, Hk, L, S, E, Ev)
SHAPES = {
    "mha": (2, 3, 3, 5, 7, 8, 8),
    "gqa": (2, 4, 2, 9, 13, 8, 8),
    "mqa": (1, 6, 1, 4, 17, 8, 8),
    "S=1": (2, 2, 2, 3, 1, 4, 4),
    "L=1": (3, 2, 1, 1, 11, 8, 8),
    "Ev!=E": (2, 4, 2, 5, 6, 8, 3),
}
MASKS = ["none", "key", "bool", "bool-per-head", "float", "float+key"]
DTYPES = {
    "cpu": [torch.float64, torch.float32, torch.bfloat16, torch.float16],
    "cuda": [torch.float32, torch.bfloat16, torch.float16],
}
TINY_TILE = 4 * 40  # bytes: a block of one or two query rows at these shapes


@pytest.fixture(params=[None, TINY_TILE], ids=["one-block", "tiny-blocks"])
def lse_backend(request):
    """The registered lse backend, or one whose weights pass crosses a block per query row."""
    original = get_backend("lse")
    if request.param is not None:
        register_backend(LSEBackend(tile_bytes=request.param), replace=True)
    try:
        yield "lse"
    finally:
        register_backend(original, replace=True)


def _inputs(gen, shape, case, device):
    b, h, hk, length, s, e, ev = SHAPES[shape]
    q = randn(b, h, length, e, generator=gen)
    k = randn(b, hk, s, e, generator=gen)
    v = randn(b, hk, s, ev, generator=gen)
    attn_mask = key_mask = None
    if "key" in case:
        key_mask = torch.rand(b, s, generator=gen) < 0.6
        key_mask[:, 0] = True
        key_mask[-1] = False  # a batch row with no context: every query row fully masked
    if case == "bool":
        attn_mask = torch.rand(b, 1, length, s, generator=gen) < 0.6
        attn_mask[..., 0, :] = False  # a query row that sees no key
    if case == "bool-per-head":
        attn_mask = torch.rand(b, h, length, s, generator=gen) < 0.6
        attn_mask[:, 1, -1] = False  # fully masked in one head only
    if case.startswith("float"):
        attn_mask = randn(1, h, length, s, generator=gen)
        attn_mask[..., 0, :2] = float("-inf")
    move = [t if t is None else t.to(device) for t in (q, k, v, attn_mask, key_mask)]
    return move


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", MASKS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_output_and_weights_match_float64_reference(lse_backend, shape, case, device, gen):
    q, k, v, attn_mask, key_mask = _inputs(gen, shape, case, device)
    for dtype in DTYPES[device]:
        kw = dict(attn_mask=attn_mask, key_mask=key_mask)
        args = [t.to(dtype) for t in (q, k, v)]
        mask = (
            attn_mask.to(dtype) if attn_mask is not None and attn_mask.is_floating_point() else None
        )
        kw_d = dict(kw, attn_mask=mask if mask is not None else attn_mask)
        exp_out = expected(q.cpu(), k.cpu(), v.cpu(), dtype, **_cpu(kw))
        out = cross_attention(*args, **kw_d, backend=lse_backend)
        assert out.dtype == dtype
        assert_matches(out.cpu(), exp_out, f"{dtype} output")
        for mode in (True, "mean"):
            exp = expected(q.cpu(), k.cpu(), v.cpu(), dtype, **_cpu(kw), return_weights=mode)
            exp.weights_tol += lse_slack(*(t.cpu() for t in args[:2]), **_cpu(kw_d))
            got = cross_attention(*args, **kw_d, backend=lse_backend, return_weights=mode)
            assert got[1].dtype == dtype
            assert_matches(tuple(t.cpu() for t in got), exp, f"{dtype} weights={mode}")


def lse_slack(query, key, *, attn_mask=None, key_mask=None):
    """What the log-sum-exp route adds to the error of plain math, derived.

    A weight is ``exp(s - lse)``: the score s and the kernel's lse are each rounded once in
    float32 at their own magnitude, and the exponent carries both errors, so a weight w is off
    by at most w * (|s| + |lse|) * eps(float32) to first order; twice that covers the roundings
    of log2(e) scaling and of the exponential itself.
    """
    q, k = query.double(), key.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask.double()
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    finite = scores[torch.isfinite(scores)]
    if finite.numel() == 0:
        return 0.0
    lse = torch.logsumexp(scores, dim=-1)
    lse_max = lse[torch.isfinite(lse)].abs().max().item()
    return 2 * torch.finfo(torch.float32).eps * (finite.abs().max().item() + lse_max)


def _cpu(kw):
    return {name: None if t is None else t.cpu() for name, t in kw.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", MASKS)
@pytest.mark.parametrize("shape", ["gqa", "mqa", "L=1"])
def test_kernel_log_sum_exp_is_exact(shape, case, device, gen):
    """The fused kernel's lse (B, H, L) against logsumexp of the float64 scores."""
    q, k, v, attn_mask, key_mask = _inputs(gen, shape, case, device)
    if key_mask is not None:
        key_mask[-1, 0] = True  # the backend never sees a fully masked row
    dtype = torch.float32  # the CUDA kernel has no float64
    q, k, v = (t.to(dtype) for t in (q, k, v))
    mask = None
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(dtype)
        if mask.dtype == torch.bool:
            mask = mask | ~mask.any(dim=-1, keepdim=True)
    if key_mask is not None:
        km = key_mask[:, None, None, :]
        mask = (
            km
            if mask is None
            else (mask & km if mask.dtype == torch.bool else mask.masked_fill(~km, -math.inf))
        )
    inputs = AttentionInputs(q, k, v, mask, 0.3, 0.0, False)
    assert kernel_runs(inputs)
    _, lse = attention_with_lse(inputs)
    g = q.shape[1] // k.shape[1]
    scores = q.double() @ k.double().repeat_interleave(g, dim=1).transpose(-1, -2) * 0.3
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, -math.inf)
            if mask.dtype == torch.bool
            else scores + mask.double()
        )
    want = torch.logsumexp(scores, dim=-1)
    assert lse.shape == want.shape
    seen = torch.isfinite(want)  # rows with a key (the functional layer opens up the others)
    tol = 4 * torch.finfo(dtype).eps * (1 + scores[torch.isfinite(scores)].abs().max().item())
    torch.testing.assert_close(lse.double()[seen], want[seen], rtol=0, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["none", "key", "bool-per-head", "float+key"])
@pytest.mark.parametrize("shape", ["mha", "gqa", "Ev!=E"])
def test_gradients_match_float64_reference(shape, case, device, gen):
    """Gradients of query, key and value through the output (the fused kernel's backward)."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    q, k, v, attn_mask, key_mask = _inputs(gen, shape, case, device)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dtype)
    grad_out = randn(*q.shape[:3], v.shape[-1], generator=gen).to(device, dtype)
    out = cross_attention(q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend="lse")
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    ref = reference(q, k, v, attn_mask=attn_mask, key_mask=key_mask)
    want = torch.autograd.grad(ref, (q, k, v), grad_out.double())
    for name, g_, w in zip(("query", "key", "value"), got, want):
        assert g_.dtype == dtype
        atol = 1e3 * float64_floor(w) if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(g_.double(), w, rtol=1e-6, atol=atol, msg=name)


def test_weights_with_dropout_are_the_probabilities_before_dropout(gen):
    """Dropout runs through public SDPA; the weights pass then finds the lse in its block."""
    q, k, v, attn_mask, key_mask = _inputs(gen, "gqa", "bool-per-head", "cpu")
    torch.manual_seed(0)
    out, w = cross_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=0.3, backend="lse", return_weights=True
    )
    _, want = reference(q, k, v, attn_mask=attn_mask, return_weights=True)
    torch.testing.assert_close(w, want, rtol=0, atol=1e3 * float64_floor(want))
    assert not torch.allclose(out, cross_attention(q, k, v, attn_mask=attn_mask, backend="lse"))


def test_weights_are_the_same_with_and_without_the_kernel_lse(gen):
    """The two ways of finding each row's log-sum-exp agree (float64: to rounding)."""
    q, k, v, attn_mask, key_mask = _inputs(gen, "gqa", "float", "cpu")
    inputs = AttentionInputs(q, k, v, attn_mask, 0.4, 0.0, True)
    _, lse = attention_with_lse(inputs)
    for tile in (TINY_TILE, 1 << 20):
        with_lse = weights_from_lse(inputs, lse, tile)
        without = weights_from_lse(inputs, None, tile)
        torch.testing.assert_close(with_lse, without, rtol=0, atol=1e3 * float64_floor(without))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_query_block_fits_the_tile(dtype, gen):
    """Every buffer of one block of scores fits `tile_bytes`, and blocks are even."""
    b, h, length, s = 1, 8, 1000, 4096
    q = torch.empty(b, h, length, 64, dtype=dtype)
    k = v = torch.empty(b, 2, s, 64, dtype=dtype)
    inputs = AttentionInputs(q, k, v, None, 0.1, 0.0, "mean")
    tile = 8 << 20
    rows = row_block(inputs, tile)
    per_score = 4 + (2 if dtype == torch.bfloat16 else 0)
    assert rows * h * s * per_score <= tile
    assert 0 < rows < length
    blocks = math.ceil(length / rows)
    assert blocks * rows - length < blocks  # even blocks: no small last one


def test_weights_carrying_gradients_name_the_reason(gen):
    q, k, v, _, _ = _inputs(gen, "mha", "none", "cpu")
    q.requires_grad_()
    with pytest.raises(ValueError, match="'lse' cannot run this call: its weights carry no"):
        cross_attention(q, k, v, backend="lse", return_weights=True)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_traces_whole_under_torch_compile(device, gen):
    """The backend (kernel, grouped heads, a key mask, the weights pass) is one graph: no graph
    break, hence no host read, and the same results as eager."""
    q, k, v, _, key_mask = _inputs(gen, "gqa", "key", device)
    q, k, v = (t.float() for t in (q, k, v))
    key_mask[-1, 0] = True  # the functional layer's job, done here: every row has a key
    mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
    backend = LSEBackend(tile_bytes=TINY_TILE)

    def run(q, k, v, mask):
        return backend.forward(AttentionInputs(q, k, v, mask, 0.3, 0.0, "mean"))

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    for got, want in zip(compiled(q, k, v, mask), run(q, k, v, mask)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
