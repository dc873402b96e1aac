"""`cross_attention` on every backend against the float64 plain-math reference.

Mask cases, mask broadcast shapes, odd shapes, dtypes (derived tolerances), NaN/Inf padding,
fully masked rows, weights, huge logits. The `backend` fixture (conftest) covers every
registered backend, automatic dispatch, and the chunked backend with tiny tiles.
"""

from __future__ import annotations

import pytest
import torch

import crossattn
from crossattn import cross_attention
from tests.conftest import (
    DTYPES,
    TINY_CHUNKED,
    assert_matches,
    assert_within,
    backend_reasons,
    expected,
    randn,
    reference,
    rounded,
)

# (B, H, Hk, L, S, E, Ev): grouped heads, L != S, E != Ev.
SMALL = (2, 4, 2, 5, 11, 8, 6)


def make_qkv(gen, b, h, hk, length, s, e, ev, dtype=torch.float64):
    q = randn(b, h, length, e, generator=gen, dtype=dtype)
    k = randn(b, hk, s, e, generator=gen, dtype=dtype)
    v = randn(b, hk, s, ev, generator=gen, dtype=dtype)
    return q, k, v


def make_key_mask(gen, b, s, keep=0.7):
    """(B, S) bool with at least one valid key per row (row 0 fully valid at the end)."""
    mask = torch.rand(b, s, generator=gen) < keep
    mask[:, 0] = True
    return mask


def make_masks(gen, case, b, h, length, s, dtype=torch.float64, shape=None):
    """attn_mask and key_mask for one mask case; attn_mask of `shape` (default (B, 1, L, S))."""
    shape = (b, 1, length, s) if shape is None else shape
    attn_mask = key_mask = None
    if case in ("bool", "bool+key"):
        attn_mask = torch.rand(shape, generator=gen) < 0.7
    if case in ("float", "float+key"):
        attn_mask = randn(*shape, generator=gen, dtype=dtype)
        attn_mask = attn_mask.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("-inf"))
    if case in ("key", "bool+key", "float+key"):
        key_mask = make_key_mask(gen, b, s)
    return attn_mask, key_mask


MASK_CASES = ["none", "key", "bool", "float", "bool+key", "float+key"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MASK_CASES)
def test_mask_cases_match_reference(backend, case, dtype, gen):
    q, k, v = make_qkv(gen, *SMALL)
    b, h, _, length, s, _, ev = SMALL
    attn_mask, key_mask = make_masks(gen, case, b, h, length, s)
    exp = expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask)
    out = cross_attention(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        attn_mask=rounded(attn_mask, dtype),
        key_mask=key_mask,
        backend=backend,
    )
    assert type(out) is torch.Tensor and out.dtype == dtype
    assert out.shape == (b, h, length, ev)
    assert_matches(out, exp)


# Broadcastable attn_mask shapes for B=2, H=4, L=5, S=11.
MASK_SHAPES = [
    (2, 4, 5, 11),
    (2, 1, 5, 11),
    (1, 1, 5, 11),
    (1, 4, 5, 11),
    (2, 4, 1, 11),
    (2, 1, 1, 11),
    (1, 4, 1, 11),
    (5, 11),
    (1, 11),
    (11,),
    (2, 1, 5, 1),
    (1, 1, 1, 1),
]


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_mask_broadcast_shapes(backend, shape, kind, gen):
    q, k, v = make_qkv(gen, *SMALL)
    attn_mask, _ = make_masks(gen, kind, 2, 4, 5, 11, shape=shape)
    key_mask = make_key_mask(gen, 2, 11)
    exp = expected(q, k, v, torch.float64, attn_mask=attn_mask, key_mask=key_mask)
    out = cross_attention(q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)
    assert_matches(out, exp)


# (B, H, Hk, L, S, E, Ev)
ODD_SHAPES = {
    "L=1": (2, 2, 2, 1, 9, 8, 8),
    "S=1": (2, 2, 2, 7, 1, 8, 8),
    "L=S=1": (3, 2, 1, 1, 1, 4, 5),
    "L=300,S=1025": (1, 2, 1, 300, 1025, 8, 4),
    "L=300,S=1025,Hk=H": (1, 4, 4, 300, 1025, 8, 4),
    "L=17,S=2049": (1, 2, 2, 17, 2049, 8, 8),
    "H=8,Hk=2": (2, 8, 2, 5, 13, 16, 4),
    "H=8,Hk=1": (2, 8, 1, 5, 13, 8, 12),
    "E!=Ev": (2, 3, 3, 6, 10, 12, 20),
}


@pytest.mark.parametrize("case", ["bool+key", "float+key", "LS"])
@pytest.mark.parametrize("name", list(ODD_SHAPES))
def test_odd_shapes(request, backend, name, case, gen):
    b, h, hk, length, s, e, ev = ODD_SHAPES[name]
    if TINY_CHUNKED in request.node.name and length * s > 10_000:
        pytest.skip("tiny tiles on a long sequence: thousands of Python-level tiles")
    q, k, v = make_qkv(gen, b, h, hk, length, s, e, ev)
    if case == "LS":  # one (L, S) bool mask for every batch row and head, with a key mask
        attn_mask = torch.rand(length, s, generator=gen) < 0.7
        key_mask = make_key_mask(gen, b, s)
    else:
        shape = (b, h, length, s) if h != hk else None  # per-head masks with grouped heads
        attn_mask, key_mask = make_masks(gen, case, b, h, length, s, shape=shape)
    dtype = torch.float32
    exp = expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask)
    out = cross_attention(
        q.float(),
        k.float(),
        v.float(),
        attn_mask=rounded(attn_mask, dtype),
        key_mask=key_mask,
        backend=backend,
    )
    assert out.shape == (b, h, length, ev)
    assert_matches(out, exp)


def test_library_reference_is_the_plain_math(gen):
    """The `reference` backend agrees with the independent float64 math to rounding."""
    if "reference" not in crossattn.available_backends():
        pytest.skip("no reference backend registered")
    q, k, v = make_qkv(gen, *SMALL)
    attn_mask, key_mask = make_masks(gen, "float+key", 2, 4, 5, 11, shape=(2, 4, 5, 11))
    out, w = cross_attention(
        q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend="reference", return_weights=True
    )
    ref, ref_w = reference(q, k, v, attn_mask=attn_mask, key_mask=key_mask, return_weights=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=1e-15)


def test_scale_argument(backend, gen):
    q, k, v = make_qkv(gen, *SMALL)
    key_mask = make_key_mask(gen, 2, 11)
    exp = expected(q, k, v, torch.float64, key_mask=key_mask, scale=0.37)
    out = cross_attention(q, k, v, key_mask=key_mask, scale=0.37, backend=backend)
    assert_matches(out, exp)


# --- padding poisoned with NaN / Inf ------------------------------------------------------------


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_poisoned_padding_does_not_leak(backend, poison, dtype, gen):
    b, h, hk, length, s, e, ev = SMALL
    q, k, v = make_qkv(gen, *SMALL)
    key_mask = make_key_mask(gen, b, s, keep=0.6)
    key_mask[1, -3:] = False  # trailing padding, as in a padded batch
    pad = ~key_mask[:, None, :, None]  # (B, 1, S, 1)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    k_bad, v_bad = k.masked_fill(pad, poison), v.masked_fill(pad, poison)
    clean = cross_attention(q, k, v, key_mask=key_mask, backend=backend)
    dirty = cross_attention(q, k_bad, v_bad, key_mask=key_mask, backend=backend)
    assert torch.isfinite(dirty).all()
    assert torch.equal(dirty, clean)
    assert_matches(dirty, expected(q, k, v, dtype, key_mask=key_mask))


@pytest.mark.parametrize("mode", [True, "mean"])
def test_poisoned_padding_weights(backend, mode, gen):
    q, k, v = make_qkv(gen, *SMALL)
    key_mask = make_key_mask(gen, 2, 11, keep=0.5)
    if backend_reasons(backend, q, k, v, return_weights=mode):
        pytest.skip(f"{backend} returns no weights (its refusal is tested in test_backends)")
    pad = ~key_mask[:, None, :, None]
    k_bad, v_bad = k.masked_fill(pad, float("nan")), v.masked_fill(pad, float("inf"))
    res = cross_attention(q, k_bad, v_bad, key_mask=key_mask, backend=backend, return_weights=mode)
    assert_matches(res, expected(q, k, v, torch.float64, key_mask=key_mask, return_weights=mode))
    weights = res[1] if mode is True else res[1][:, None]
    assert torch.all(weights.masked_select(~key_mask[:, None, None, :]) == 0)


def test_poisoned_padding_gradients_are_finite(backend, gen):
    q, k, v = make_qkv(gen, *SMALL)
    key_mask = make_key_mask(gen, 2, 11, keep=0.5)
    pad = ~key_mask[:, None, :, None]
    k = k.masked_fill(pad, float("nan")).requires_grad_()
    v = v.masked_fill(pad, float("nan")).requires_grad_()
    q.requires_grad_()
    out = cross_attention(q, k, v, key_mask=key_mask, backend=backend)
    out.square().sum().backward()
    for name, t in (("query", q), ("key", k), ("value", v)):
        assert torch.isfinite(t.grad).all(), f"{name} grad has NaN/Inf"
    assert torch.all(k.grad.masked_select(pad.expand_as(k)) == 0)
    assert torch.all(v.grad.masked_select(pad.expand_as(v)) == 0)


# --- fully masked rows ---------------------------------------------------------------------------


def _fully_masked(how, gen, b, h, length, s):
    """attn_mask, key_mask and the (B, H, L) bool of rows that have no allowed key."""
    attn_mask = key_mask = None
    empty = torch.zeros(b, h, length, dtype=torch.bool)
    if how == "key_mask":
        key_mask = make_key_mask(gen, b, s)
        key_mask[1] = False  # batch row 1 has no valid context at all
        empty[1] = True
    elif how == "bool":
        attn_mask = torch.rand(b, 1, length, s, generator=gen) < 0.7
        attn_mask[:, :, 0] = True
        attn_mask[0, 0, 2] = False  # query 2 of batch row 0, every head
        attn_mask[1, 0, 4] = False
        empty[0, :, 2] = empty[1, :, 4] = True
    elif how == "float_per_head":
        attn_mask = randn(b, h, length, s, generator=gen)
        attn_mask[0, 1, 3] = float("-inf")  # only head 1
        attn_mask[1, 3, :] = float("-inf")  # all queries of head 3, batch row 1
        empty[0, 1, 3] = True
        empty[1, 3] = True
    elif how == "bool_and_key":  # neither mask alone empties the row; together they do
        key_mask = torch.ones(b, s, dtype=torch.bool)
        key_mask[0, 5:] = False
        attn_mask = torch.ones(b, h, length, s, dtype=torch.bool)
        attn_mask[0, 2, 1, :5] = False
        empty[0, 2, 1] = True
    return attn_mask, key_mask, empty


FULLY_MASKED = ["key_mask", "bool", "float_per_head", "bool_and_key"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("how", FULLY_MASKED)
def test_fully_masked_rows_give_zero(backend, how, dtype, gen):
    b, h, hk, length, s, e, ev = SMALL
    q, k, v = make_qkv(gen, *SMALL)
    attn_mask, key_mask, empty = _fully_masked(how, gen, b, h, length, s)
    args = [t.to(dtype) for t in (q, k, v)]
    out = cross_attention(
        *args, attn_mask=rounded(attn_mask, dtype), key_mask=key_mask, backend=backend
    )
    assert torch.isfinite(out).all()
    assert torch.all(out[empty] == 0)
    assert_matches(out, expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask))


@pytest.mark.parametrize("mode", [True, "mean"])
@pytest.mark.parametrize("how", FULLY_MASKED)
def test_fully_masked_rows_weights(backend, how, mode, gen):
    b, h, hk, length, s, e, ev = SMALL
    q, k, v = make_qkv(gen, *SMALL)
    if backend_reasons(backend, q, k, v, return_weights=mode):
        pytest.skip(f"{backend} returns no weights (its refusal is tested in test_backends)")
    attn_mask, key_mask, empty = _fully_masked(how, gen, b, h, length, s)
    res = cross_attention(
        q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend, return_weights=mode
    )
    out, weights = res
    assert torch.isfinite(weights).all()
    if mode is True:
        assert torch.all(weights[empty] == 0)
        sums = weights.sum(-1)  # (B, H, L)
        torch.testing.assert_close(sums, (~empty).double(), rtol=0, atol=1e-12)
    else:
        all_heads_empty = empty.all(dim=1)  # (B, L)
        assert torch.all(weights[all_heads_empty] == 0)
        # The head mean of rows that sum to 1 or 0: the fraction of heads with an allowed key.
        torch.testing.assert_close(weights.sum(-1), (~empty).double().mean(1), rtol=0, atol=1e-12)
    assert_matches(
        res,
        expected(
            q, k, v, torch.float64, attn_mask=attn_mask, key_mask=key_mask, return_weights=mode
        ),
    )


@pytest.mark.parametrize("how", FULLY_MASKED)
def test_fully_masked_rows_gradients_are_finite(backend, how, gen):
    b, h, hk, length, s, e, ev = SMALL
    q, k, v = (t.requires_grad_() for t in make_qkv(gen, *SMALL))
    attn_mask, key_mask, empty = _fully_masked(how, gen, b, h, length, s)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask.requires_grad_()
    out = cross_attention(q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)
    grads = torch.autograd.grad(
        out.square().sum(), [t for t in (q, k, v, attn_mask) if t is not None and t.requires_grad]
    )
    for g in grads:
        assert torch.isfinite(g).all()
    assert torch.all(grads[0][empty] == 0)  # the query of an empty row does not matter


# --- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", [True, "mean"])
@pytest.mark.parametrize("case", ["none", "bool+key", "float+key"])
def test_weights_match_reference_and_sum_to_one(backend, case, mode, dtype, gen):
    b, h, hk, length, s, e, ev = SMALL
    q, k, v = make_qkv(gen, *SMALL)
    if backend_reasons(backend, q, k, v, return_weights=mode):
        pytest.skip(f"{backend} returns no weights (its refusal is tested in test_backends)")
    attn_mask, key_mask = make_masks(gen, case, b, h, length, s, shape=(b, h, length, s))
    if attn_mask is not None:
        attn_mask[..., 0] = True if attn_mask.dtype == torch.bool else 0.0  # no empty rows
    res = cross_attention(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        attn_mask=rounded(attn_mask, dtype),
        key_mask=key_mask,
        backend=backend,
        return_weights=mode,
    )
    assert isinstance(res, tuple) and len(res) == 2
    out, weights = res
    assert weights.shape == ((b, h, length, s) if mode is True else (b, length, s))
    assert weights.dtype == dtype
    exp = expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask, return_weights=mode)
    assert_matches(res, exp)
    ones = torch.ones(weights.shape[:-1], dtype=torch.float64)
    assert_within(weights.double().sum(-1), ones, s * exp.weights_tol + 1e-12, "row sums")
    # the weights and the output come from the same computation
    out_plain = cross_attention(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        attn_mask=rounded(attn_mask, dtype),
        key_mask=key_mask,
        backend=backend,
    )
    assert_within(out_plain, exp.out, exp.out_tol, "output without weights")


# --- huge logits -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["none", "float+key"])
def test_huge_logits_stay_finite(backend, case, dtype, gen):
    b, h, hk, length, s, e, ev = SMALL
    q, k, v = make_qkv(gen, *SMALL)
    q, k = q * 1e3, k * 1e3  # scores of order 1e6
    attn_mask, key_mask = make_masks(gen, case, b, h, length, s)
    if attn_mask is not None:
        attn_mask[..., 0] = 0.0
    exp = expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask)
    out = cross_attention(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        attn_mask=rounded(attn_mask, dtype),
        key_mask=key_mask,
        backend=backend,
    )
    assert torch.isfinite(out).all()
    assert_matches(out, exp)


def test_returns_plain_tensor_or_tuple(backend, gen):
    q, k, v = make_qkv(gen, *SMALL)
    out = cross_attention(q, k, v, backend=backend)
    assert type(out) is torch.Tensor
    if not backend_reasons(backend, q, k, v, return_weights=True):
        res = cross_attention(q, k, v, backend=backend, return_weights=True)
        assert type(res) is tuple and len(res) == 2
        assert all(type(t) is torch.Tensor for t in res)


# --- layouts and empty inputs --------------------------------------------------------------


def test_non_contiguous_and_expanded_inputs(backend, gen):
    """Transposed views (B, L, H, E) -> (B, H, L, E), expanded keys and expanded masks."""
    b, h, hk, length, s, e, ev = SMALL
    q = randn(b, length, h, e, generator=gen).transpose(1, 2)  # (B, H, L, E), a view
    k = randn(1, hk, s, e, generator=gen).expand(b, -1, -1, -1)  # stride 0 over B
    v = randn(b, ev, s, hk, generator=gen).permute(0, 3, 2, 1)  # (B, Hk, S, Ev), a view
    attn_mask = (torch.rand(s, length, generator=gen) < 0.7).T  # (L, S), transposed
    float_mask = randn(1, 1, s, length, generator=gen).transpose(-1, -2).expand(b, h, -1, -1)
    key_mask = torch.ones(s, b, dtype=torch.bool).T
    for mask in (attn_mask, float_mask):
        out = cross_attention(q, k, v, attn_mask=mask, key_mask=key_mask, backend=backend)
        assert_matches(out, expected(q, k, v, torch.float64, attn_mask=mask, key_mask=key_mask))


@pytest.mark.parametrize("empty", ["B=0", "L=0"])
def test_empty_batch_or_queries(backend, empty, gen):
    b, length = (0, 5) if empty == "B=0" else (2, 0)
    q = randn(b, 4, length, 8, generator=gen).requires_grad_()
    k = randn(b, 2, 11, 8, generator=gen).requires_grad_()
    v = randn(b, 2, 11, 6, generator=gen).requires_grad_()
    key_mask = torch.ones(b, 11, dtype=torch.bool)
    out = cross_attention(q, k, v, key_mask=key_mask, backend=backend)
    assert out.shape == (b, 4, length, 6)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
    assert torch.all(k.grad == 0) and torch.all(v.grad == 0)
    if not backend_reasons(backend, q, k, v, return_weights=True):
        with torch.no_grad():
            _, w = cross_attention(q, k, v, backend=backend, return_weights=True)
            _, m = cross_attention(q, k, v, backend=backend, return_weights="mean")
        assert w.shape == (b, 4, length, 11) and m.shape == (b, length, 11)


# --- mask helpers -----------------------------------------------------------------------


def test_lengths_to_key_mask():
    mask = crossattn.lengths_to_key_mask(torch.tensor([3, 0, 5]))
    want = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, want)
    assert crossattn.lengths_to_key_mask(torch.tensor([2]), 4).tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match=r"lengths must be 1-D \(B,\), got shape \(2, 1\)"):
        crossattn.lengths_to_key_mask(torch.tensor([[1], [2]]))


def test_from_key_padding_mask():
    padding = torch.tensor(
        [[False, True], [True, True]]
    )  # torch.nn.MultiheadAttention: True = ignore
    assert torch.equal(crossattn.from_key_padding_mask(padding), ~padding)
    additive = torch.tensor([[0.0, float("-inf")], [float("-inf"), -1e4]])
    assert crossattn.from_key_padding_mask(additive).tolist() == [[True, False], [False, True]]


def test_causal_mask():
    assert torch.equal(crossattn.causal_mask(3), torch.ones(3, 3, dtype=torch.bool).tril())
    # L < S: the queries are the last L positions of the keys
    assert crossattn.causal_mask(2, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_mask_helper_errors():
    with pytest.raises(TypeError, match="lengths must be a tensor \\(B,\\), got list"):
        crossattn.lengths_to_key_mask([1, 2])
    assert crossattn.lengths_to_key_mask(torch.tensor([], dtype=torch.long)).shape == (0, 0)
    with pytest.raises(TypeError, match="key_padding_mask must be a tensor \\(B, S\\), got list"):
        crossattn.from_key_padding_mask([[True]])
    with pytest.raises(
        TypeError,
        match="key_padding_mask must be bool \\(True = ignore\\) or additive float "
        "\\(-inf = ignore\\), "
        "got torch.int64",
    ):
        crossattn.from_key_padding_mask(torch.tensor([[0, 1]]))
