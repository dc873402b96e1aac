"""Property tests (hypothesis): random shapes, masks and backends against the float64 reference."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossattn import cross_attention
from tests.conftest import assert_matches, backend_case, backend_cases, backend_reasons, expected

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@st.composite
def problems(draw):
    """A random call: shapes, masks of random broadcast shapes, a backend (None = dispatch)."""
    b = draw(st.integers(1, 3))
    hk = draw(st.integers(1, 3))
    h = hk * draw(st.integers(1, 3))
    length = draw(st.integers(1, 9))
    s = draw(st.integers(1, 12))
    e = draw(st.integers(1, 8))
    ev = draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(b, h, length, e, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hk, s, e, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hk, s, ev, generator=gen, dtype=torch.float64)
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    attn_mask = None
    if kind != "none":
        full = (b, h, length, s)
        shape = tuple(d if draw(st.booleans()) else 1 for d in full)
        shape = shape[draw(st.integers(0, 2)) :]  # leading dimensions may be dropped
        if kind == "bool":
            attn_mask = torch.rand(shape, generator=gen) < draw(st.floats(0.0, 1.0))
        else:
            attn_mask = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
            blocked = torch.rand(shape, generator=gen) < draw(st.floats(0.0, 0.6))
            attn_mask = attn_mask.masked_fill(blocked, float("-inf"))
    key_mask = None
    if draw(st.booleans()):
        key_mask = torch.rand(b, s, generator=gen) < draw(st.floats(0.0, 1.0))
    backend = draw(st.sampled_from(backend_cases()))
    return dict(q=q, k=k, v=v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@SETTINGS
@given(problems(), st.sampled_from(DTYPES))
def test_matches_reference(p, dtype):
    """Within the tolerance derived for `dtype` (see conftest.expected)."""
    attn_mask = p["attn_mask"]
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dtype)
    kw = dict(attn_mask=attn_mask, key_mask=p["key_mask"])
    q, k, v = (p[name].to(dtype) for name in "qkv")
    with backend_case(p["backend"]) as backend:
        out = cross_attention(q, k, v, backend=backend, **kw)
    assert out.dtype == dtype
    assert_matches(out, expected(q, k, v, dtype, **kw))


@SETTINGS
@given(problems(), st.sampled_from([True, "mean"]))
def test_weights_match_reference_and_rows_sum_to_one_or_zero(p, mode):
    q, k, v = p["q"], p["k"], p["v"]
    kw = dict(attn_mask=p["attn_mask"], key_mask=p["key_mask"], return_weights=mode)
    with backend_case(p["backend"]) as backend:
        if backend_reasons(backend, q, k, v, return_weights=mode):
            backend = None  # this backend gives no weights; dispatch must find one that does
        res = cross_attention(q, k, v, backend=backend, **kw)
    assert_matches(res, expected(q, k, v, torch.float64, **kw))
    weights = res[1] if mode is True else res[1][:, None]
    assert (weights >= 0).all()
    sums = weights.sum(-1)
    # every row sums to 1 or (no allowed key) 0; a head mean to a multiple of 1 / H
    h = q.shape[1]
    steps = sums * (1 if mode is True else h)
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-12)


@SETTINGS
@given(problems(), st.integers(1, 5))
def test_padding_with_poisoned_keys_changes_nothing(p, extra):
    """Appending `extra` padded (masked off, NaN) keys to every row leaves the output exact."""
    with backend_case(p["backend"]) as backend:
        q, k, v = p["q"], p["k"], p["v"]
        b, hk, s, _ = k.shape
        attn_mask = p["attn_mask"]
        key_mask = p["key_mask"]
        if key_mask is None:
            key_mask = torch.ones(b, s, dtype=torch.bool)
        out = cross_attention(q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)

        nan_k = torch.full((b, hk, extra, k.shape[-1]), float("nan"), dtype=k.dtype)
        nan_v = torch.full((b, hk, extra, v.shape[-1]), float("nan"), dtype=v.dtype)
        padded_mask = torch.cat([key_mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
        if attn_mask is not None:
            full = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
            if full.shape[-1] == 1:
                full = full.expand(*full.shape[:-1], s)
            fill = torch.zeros(*full.shape[:-1], extra, dtype=full.dtype)
            attn_mask = torch.cat([full, fill], dim=-1)
        out_padded = cross_attention(
            q,
            torch.cat([k, nan_k], dim=2),
            torch.cat([v, nan_v], dim=2),
            attn_mask=attn_mask,
            key_mask=padded_mask,
            backend=backend,
        )
        assert torch.isfinite(out_padded).all()
        torch.testing.assert_close(out_padded, out, rtol=1e-12, atol=1e-13)


@SETTINGS
@given(problems())
def test_permuting_the_keys_changes_nothing(p):
    with backend_case(p["backend"]) as backend:
        q, k, v = p["q"], p["k"], p["v"]
        s = k.shape[2]
        perm = torch.randperm(s, generator=torch.Generator().manual_seed(s))
        attn_mask, key_mask = p["attn_mask"], p["key_mask"]
        out = cross_attention(q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)
        perm_attn = None
        if attn_mask is not None:
            perm_attn = attn_mask if attn_mask.shape[-1] == 1 else attn_mask[..., perm]
        out_perm = cross_attention(
            q,
            k[:, :, perm],
            v[:, :, perm],
            attn_mask=perm_attn,
            key_mask=None if key_mask is None else key_mask[:, perm],
            backend=backend,
        )
        torch.testing.assert_close(out_perm, out, rtol=1e-12, atol=1e-13)
