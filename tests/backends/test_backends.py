"""Backends: gradients against the float64 reference, dropout, dispatch and `use_backend`.

Every test follows the registry (the `backend` fixture and `crossattn.available_backends()`),
so a newly registered backend is covered without editing this file.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

import crossattn
from crossattn import cross_attention, use_backend
from crossattn.backends import (
    AttentionInputs,
    current_backend,
    get_backend,
    register_backend,
    select_backend,
)
from tests.conftest import (
    BACKENDS,
    TOLERANCE_FACTOR,
    backend_reasons,
    expected,
    float64_floor,
    randn,
    reference,
    rounding_floor,
    tiny_chunked,
)

# (B, H, Hk, L, S, E, Ev)
SHAPES = {
    "mha": (2, 2, 2, 5, 7, 4, 3),
    "gqa": (2, 4, 2, 3, 6, 4, 5),
    "mqa": (1, 4, 1, 4, 9, 3, 3),
    "L=1": (2, 2, 1, 1, 5, 4, 4),
    "S=1": (2, 2, 2, 3, 1, 4, 4),
}


def _qkv(gen, b, h, hk, length, s, e, ev):
    q = randn(b, h, length, e, generator=gen).requires_grad_()
    k = randn(b, hk, s, e, generator=gen).requires_grad_()
    v = randn(b, hk, s, ev, generator=gen).requires_grad_()
    return q, k, v


def _masks(gen, case, b, h, length, s):
    attn_mask = key_mask = None
    if "key" in case:
        key_mask = torch.rand(b, s, generator=gen) < 0.7
        key_mask[:, -1] = True
        key_mask[-1, :] = False  # one batch row without context: its rows are fully masked
    if "bool" in case:
        attn_mask = torch.rand(b, h, length, s, generator=gen) < 0.7
    if "float" in case:
        attn_mask = randn(b, 1, length, s, generator=gen)
        attn_mask[0, 0, 0, 0] = float("-inf")
        attn_mask.requires_grad_()
    return attn_mask, key_mask


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


@pytest.mark.parametrize("case", ["none", "key", "bool", "float", "bool+key", "float+key"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gradients_match_reference_float64(backend, shape, case, gen):
    b, h, hk, length, s, e, ev = SHAPES[shape]
    q, k, v = _qkv(gen, *SHAPES[shape])
    attn_mask, key_mask = _masks(gen, case, b, h, length, s)
    grad_out = randn(b, h, length, ev, generator=gen)
    leaves = [t for t in (q, k, v, attn_mask) if t is not None and t.requires_grad]

    out = cross_attention(q, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)
    got = _grads(out, leaves, grad_out)
    ref = reference(q, k, v, attn_mask=attn_mask, key_mask=key_mask)
    want = _grads(ref, leaves, grad_out)
    names = ["query", "key", "value", "attn_mask"]
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e3 * float64_floor(w), msg=name)


@pytest.mark.parametrize(
    "shape", [(2, 4, 3, 6), (2, 1, 3, 6), (2, 1, 1, 6), (1, 1, 1, 6), (3, 6), (6,), (1, 4, 3, 1)]
)
def test_float_mask_gradient_for_every_broadcast_shape(backend, shape, gen):
    """The gradient of a broadcast float mask is summed back to the mask's own shape."""
    b, h, hk, length, s, e, ev = SHAPES["gqa"]
    q, k, v = _qkv(gen, b, h, hk, length, s, e, ev)
    attn_mask = randn(*shape, generator=gen).requires_grad_()
    grad_out = randn(b, h, length, ev, generator=gen)
    leaves = [q, k, v, attn_mask]
    got = _grads(cross_attention(q, k, v, attn_mask=attn_mask, backend=backend), leaves, grad_out)
    want = _grads(reference(q, k, v, attn_mask=attn_mask), leaves, grad_out)
    assert got[3].shape == attn_mask.shape
    for name, g, w in zip(["query", "key", "value", "attn_mask"], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e3 * float64_floor(w), msg=name)


def test_float_key_mask_gradient_long_context(backend, gen):
    """Grouped heads, a (B, 1, 1, S) float mask with gradients, S longer than one key block."""
    q, k, v = _qkv(gen, 1, 2, 1, 3, 1100, 4, 4)
    attn_mask = randn(1, 1, 1, 1100, generator=gen).requires_grad_()
    leaves = [q, k, v, attn_mask]
    grad_out = randn(1, 2, 3, 4, generator=gen)
    got = _grads(cross_attention(q, k, v, attn_mask=attn_mask, backend=backend), leaves, grad_out)
    want = _grads(reference(q, k, v, attn_mask=attn_mask), leaves, grad_out)
    for name, g, w in zip(["query", "key", "value", "attn_mask"], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e3 * float64_floor(w), msg=name)


def test_gradients_of_weights_match_reference(gen):
    """Weights that carry gradients: the dispatched call (which must pick a backend that can)."""
    b, h, hk, length, s, e, ev = SHAPES["gqa"]
    q, k, v = _qkv(gen, b, h, hk, length, s, e, ev)
    attn_mask, key_mask = _masks(gen, "float+key", b, h, length, s)
    leaves = [q, k, v, attn_mask]
    for mode in (True, "mean"):
        out, w = cross_attention(
            q, k, v, attn_mask=attn_mask, key_mask=key_mask, return_weights=mode
        )
        ref, ref_w = reference(q, k, v, attn_mask=attn_mask, key_mask=key_mask, return_weights=mode)
        gw = randn(*w.shape, generator=gen)
        got = torch.autograd.grad((out.sum(), w), leaves, (torch.tensor(1.0).double(), gw))
        want = torch.autograd.grad((ref.sum(), ref_w), leaves, (torch.tensor(1.0).double(), gw))
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_low_precision_gradients_within_derived_tolerance(backend, dtype, gen):
    """Low-precision gradients: within k times the error of plain math in that dtype, + floor."""
    b, h, hk, length, s, e, ev = SHAPES["gqa"]
    q, k, v = (t.detach().to(dtype) for t in _qkv(gen, b, h, hk, length, s, e, ev))
    key_mask = torch.ones(b, s, dtype=torch.bool)
    key_mask[0, -2:] = False
    grad_out = randn(b, h, length, ev, generator=gen).to(dtype)

    def grads(fn, dt):
        leaves = [t.to(dt).requires_grad_() for t in (q, k, v)]
        return torch.autograd.grad(fn(*leaves), leaves, grad_out.to(dt))

    exact = grads(lambda *a: reference(*a, key_mask=key_mask), torch.float64)
    low = grads(lambda *a: reference(*a, key_mask=key_mask, dtype=dtype), dtype)
    got = grads(lambda *a: cross_attention(*a, key_mask=key_mask, backend=backend), dtype)
    for name, g, lo, ex in zip(("query", "key", "value"), got, low, exact):
        assert g.dtype == dtype
        tol = TOLERANCE_FACTOR * (lo.double() - ex).abs().max().item() + rounding_floor(ex, dtype)
        err = (g.double() - ex).abs().max().item()
        assert err <= tol, f"{name}: {err:.3e} > {tol:.3e}"


# --- dropout --------------------------------------------------------------------------------


def test_dropout_is_reproducible_under_manual_seed(backend, gen):
    q, k, v = (t.detach() for t in _qkv(gen, *SHAPES["gqa"]))

    def run(seed):
        torch.manual_seed(seed)
        return cross_attention(q, k, v, dropout_p=0.4, backend=backend)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.allclose(first, cross_attention(q, k, v, backend=backend))


def test_dropout_weights_are_the_probabilities_before_dropout(backend, gen):
    q, k, v = (t.detach() for t in _qkv(gen, *SHAPES["gqa"]))
    if backend_reasons(backend, q, k, v, return_weights=True, dropout_p=0.3):
        pytest.skip(f"{backend} returns no weights")
    torch.manual_seed(0)
    _, w = cross_attention(q, k, v, dropout_p=0.3, backend=backend, return_weights=True)
    _, w_ref = reference(q, k, v, return_weights=True)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-14)


def test_dropout_preserves_the_mean(backend):
    """With uniform weights (q = 0) and v = 1, each output is sum_j m_j / ((1 - p) S), m_j ~
    Bernoulli(1 - p): mean 1, variance p / ((1 - p) S). The average of N rows lies within 6
    standard deviations, sqrt(p / ((1 - p) S N)), of 1 (a false alarm about once in 1e9 runs).
    """
    b, h, length, s, p = 2, 4, 64, 64, 0.3
    q = torch.zeros(b, h, length, 8)
    k = torch.randn(b, h, s, 8)
    v = torch.ones(b, h, s, 1)
    torch.manual_seed(0)
    out = cross_attention(q, k, v, dropout_p=p, backend=backend)
    n = b * h * length
    bound = 6 * math.sqrt(p / ((1 - p) * s * n))
    assert abs(out.mean().item() - 1.0) <= bound
    # and the dropout really drops: per-row values vary with the variance above (within 2x)
    var = out.var().item()
    assert 0.5 * p / ((1 - p) * s) <= var <= 2 * p / ((1 - p) * s)


@pytest.mark.parametrize("tiny", [False, True], ids=["default-blocks", "tiny-blocks"])
def test_chunked_dropout_gradcheck(tiny, gen):
    if "chunked" not in BACKENDS:
        pytest.skip("no chunked backend registered")
    original = get_backend("chunked")
    if tiny:
        register_backend(tiny_chunked(), replace=True)
    try:
        q, k, v = _qkv(gen, 1, 2, 1, 3, 5, 2, 2)  # grouped heads, few elements to perturb
        key_mask = torch.tensor([[True, True, False, True, False]])
        attn_mask = randn(1, 1, 3, 5, generator=gen).requires_grad_()

        def fn(q, k, v, attn_mask):
            torch.manual_seed(7)  # the same dropout pattern on every evaluation
            return cross_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                key_mask=key_mask,
                dropout_p=0.25,
                backend="chunked",
            )

        assert torch.autograd.gradcheck(fn, (q, k, v, attn_mask), eps=1e-6, atol=1e-7)
    finally:
        register_backend(original, replace=True)


def test_sdpa_dropout_on_the_cpu_gradcheck(gen):
    """The sdpa backend's own dropout math on the CPU (grouped heads folded, a float and a key
    mask): gradients by finite differences under one fixed draw."""
    q, k, v = _qkv(gen, 1, 4, 2, 3, 5, 2, 2)
    key_mask = torch.tensor([[True, True, False, True, False]])
    attn_mask = randn(1, 1, 3, 5, generator=gen).requires_grad_()

    def fn(q, k, v, attn_mask):
        torch.manual_seed(7)
        return cross_attention(
            q, k, v, attn_mask=attn_mask, key_mask=key_mask, dropout_p=0.25, backend="sdpa"
        )

    dropped = fn(q, k, v, attn_mask)
    assert not torch.allclose(dropped, cross_attention(q, k, v, attn_mask=attn_mask,
                                                       key_mask=key_mask, backend="sdpa"))  # fmt: skip
    assert torch.autograd.gradcheck(fn, (q, k, v, attn_mask), eps=1e-6, atol=1e-7)


# --- dispatch -------------------------------------------------------------------------------


def _inputs(gen, dtype=torch.float32, return_weights=False, requires_grad=False, s=6):
    q = torch.randn(2, 4, 3, 8, generator=gen, dtype=dtype).requires_grad_(requires_grad)
    k = torch.randn(2, 2, s, 8, generator=gen, dtype=dtype)
    v = torch.randn(2, 2, s, 8, generator=gen, dtype=dtype)
    return AttentionInputs(q, k, v, None, 0.35, 0.0, return_weights)


CALLS = {
    "float32": {},
    "float64": {"dtype": torch.float64},
    "bfloat16": {"dtype": torch.bfloat16},
    "bfloat16-long": {"dtype": torch.bfloat16, "s": 1500},
    "weights": {"return_weights": True},
    "mean": {"return_weights": "mean"},
    "weights+grad": {"return_weights": True, "requires_grad": True},
    "grad": {"requires_grad": True},
}


@pytest.mark.parametrize("call", list(CALLS))
def test_dispatch_picks_a_supporting_backend(call, gen):
    inputs = _inputs(gen, **CALLS[call])
    chosen = select_backend(inputs)
    assert chosen.name in crossattn.available_backends()
    assert chosen.not_supported_reasons(inputs) == []


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("name", BACKENDS)
def test_pinned_backend_runs_or_lists_its_reasons(name, call, gen):
    inputs = _inputs(gen, **CALLS[call])
    reasons = get_backend(name).not_supported_reasons(inputs)
    kw = dict(return_weights=inputs.return_weights, backend=name)
    if not reasons:
        res = cross_attention(inputs.query, inputs.key, inputs.value, **kw)
        out = res[0] if inputs.return_weights else res
        assert out.shape == (2, 4, 3, 8)
        return
    with pytest.raises(ValueError, match=f"backend='{name}' cannot run this call") as err:
        cross_attention(inputs.query, inputs.key, inputs.value, **kw)
    for reason in reasons:
        assert reason in str(err.value)


def test_sdpa_pinned_with_weights_names_the_reason(gen):
    if "sdpa" not in BACKENDS:
        pytest.skip("no sdpa backend registered")
    inputs = _inputs(gen)
    with pytest.raises(ValueError, match=r"backend='sdpa' cannot run this call: .*weights"):
        cross_attention(inputs.query, inputs.key, inputs.value, backend="sdpa", return_weights=True)


def test_weights_with_gradients_dispatch_to_a_backend_that_gives_them(gen):
    inputs = _inputs(gen, requires_grad=True)
    _, w = cross_attention(inputs.query, inputs.key, inputs.value, return_weights=True)
    assert w.requires_grad and w.grad_fn is not None


def test_unknown_backend_lists_the_available_ones(gen):
    inputs = _inputs(gen)
    with pytest.raises(ValueError, match="backend='nope' is not an available backend") as err:
        cross_attention(inputs.query, inputs.key, inputs.value, backend="nope")
    for name in crossattn.available_backends():
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match="backend='nope' is not an available backend"):
        with use_backend("nope"):
            pass
    with pytest.raises(TypeError, match="backend must be a str or None, got int"):
        cross_attention(inputs.query, inputs.key, inputs.value, backend=3)


class _Spy:
    """Counts calls of each backend's `forward` (installed with monkeypatch, restored after)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in crossattn.available_backends():
            backend = get_backend(name)
            monkeypatch.setattr(backend, "forward", self._wrap(name, backend.forward))

    def _wrap(self, name, forward):
        def spy(inputs):
            self.calls.append(name)
            return forward(inputs)

        return spy

    def last(self):
        return self.calls[-1]


@pytest.mark.parametrize("name", BACKENDS)
def test_use_backend_sets_the_default_and_restores_it(name, gen, monkeypatch):
    spy = _Spy(monkeypatch)
    inputs = _inputs(gen)
    q, k, v = inputs.query, inputs.key, inputs.value
    assert current_backend() is None
    cross_attention(q, k, v)
    dispatched = spy.last()
    with use_backend(name):
        assert current_backend() == name
        cross_attention(q, k, v)
        assert spy.last() == name
        with use_backend(None):  # automatic dispatch again, inside
            assert current_backend() is None
            cross_attention(q, k, v)
            assert spy.last() == dispatched
        assert current_backend() == name
        other = next((n for n in BACKENDS if n != name), name)
        cross_attention(q, k, v, backend=other)  # an explicit backend= wins over the default
        assert spy.last() == other
    assert current_backend() is None
    with pytest.raises(RuntimeError, match="boom"):
        with use_backend(name):
            raise RuntimeError("boom")
    assert current_backend() is None  # restored on an exception too


def test_use_backend_is_per_thread(gen, monkeypatch):
    if len(BACKENDS) < 2:
        pytest.skip("needs two backends")
    spy = _Spy(monkeypatch)
    inputs = _inputs(gen)
    q, k, v = inputs.query, inputs.key, inputs.value
    cross_attention(q, k, v)
    dispatched = spy.last()
    pinned = next(n for n in BACKENDS if n != dispatched)
    inside = threading.Event()
    checked = threading.Event()
    seen: dict[str, object] = {}

    def worker():
        with use_backend(pinned):
            seen["worker_default"] = current_backend()
            seen["worker_out"] = cross_attention(q, k, v)
            inside.set()
            checked.wait(timeout=30)
        seen["worker_after"] = current_backend()

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(timeout=30)
    # The worker holds use_backend(pinned) open; this thread still dispatches automatically.
    assert current_backend() is None
    n = len(spy.calls)
    cross_attention(q, k, v)
    assert spy.calls[n:] == [dispatched]
    checked.set()
    thread.join(timeout=30)
    assert seen["worker_default"] == pinned
    assert seen["worker_after"] is None
    assert pinned in spy.calls


# --- NaN queries ---------------------------------------------------------------------------------

# (B, H, Hk, L, S, E, Ev): head dims of 8, where SDPA's CPU kernel once gave 0 for a NaN query.
NAN_SHAPES = {
    "mha": (2, 4, 4, 5, 7, 8, 8),
    "gqa": (2, 4, 2, 5, 7, 8, 8),
    "L=1": (2, 4, 4, 1, 7, 8, 8),
}


@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "masked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", list(NAN_SHAPES))
def test_nan_query_gives_nan_out_where_the_row_can_attend(
    backend, shape, dtype, masked, poison, gen
):
    """A query row holding NaN (or Inf) gives NaN output on every backend, as plain math does;
    a fully masked row gives 0 even then; every other row stays finite and exact."""
    b, h, hk, length, s, e, ev = NAN_SHAPES[shape]
    q, k, v = (t.detach().to(dtype) for t in _qkv(gen, b, h, hk, length, s, e, ev))
    bad = torch.zeros(b, h, length, dtype=torch.bool)
    bad[0, 1, length - 1] = bad[1, 0, 0] = bad[1, 3, 0] = True
    q_bad = q.masked_fill(bad[..., None] & (torch.arange(e) == 2), poison)
    attn_mask = key_mask = None
    empty = torch.zeros(b, h, length, dtype=torch.bool)
    if masked:
        key_mask = torch.ones(b, s, dtype=torch.bool)
        key_mask[0, 4:] = False
        attn_mask = torch.ones(b, h, length, s, dtype=torch.bool)
        attn_mask[1, 3, 0] = False  # a poisoned row that may attend to nothing
        empty[1, 3, 0] = True
    out = cross_attention(q_bad, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend)
    nan_rows = bad & ~empty
    assert out[nan_rows].isnan().all(), "a NaN/Inf query row that can attend must give NaN"
    assert torch.all(out[empty] == 0), "a fully masked row gives 0, even for a NaN query"
    clean = ~bad & ~empty
    exp = expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask)
    torch.testing.assert_close(out[clean].double(), exp.out[clean], rtol=0, atol=exp.out_tol)
    if backend_reasons(backend, q, k, v, return_weights=True):
        return
    out_w, weights = cross_attention(
        q_bad, k, v, attn_mask=attn_mask, key_mask=key_mask, backend=backend, return_weights=True
    )
    assert out_w[nan_rows].isnan().all() and weights[nan_rows].isnan().all()
    assert torch.all(weights[empty] == 0)


# --- a user's backend in automatic dispatch --------------------------------------------------


class _UserBackend(crossattn.backends.ReferenceBackend):
    """A user backend: the reference math, counted, ranked by `rank_value`, and refusing what
    `refuse` says."""

    def __init__(self, name, rank_value, refuse=None):
        self.name, self.rank_value, self.refuse, self.calls = name, rank_value, refuse, 0

    def rank(self, inputs):
        return self.rank_value

    def not_supported_reasons(self, inputs):
        reasons = super().not_supported_reasons(inputs)
        if self.refuse is not None and self.refuse(inputs):
            reasons.append("this user backend refuses the call")
        return reasons

    def forward(self, inputs):
        self.calls += 1
        return super().forward(inputs)


@pytest.fixture
def user_backend():
    """Register `_UserBackend` backends for one test, and remove them afterwards."""
    made = []

    def make(*args, **kw):
        made.append(register_backend(_UserBackend(*args, **kw)))
        return made[-1]

    yield make
    for backend in made:
        crossattn.unregister_backend(backend.name)


@pytest.mark.parametrize("call", ["float32", "bfloat16", "weights", "mean", "weights+grad"])
def test_dispatch_chooses_a_user_backend_that_ranks_first(call, gen, user_backend):
    inputs = _inputs(gen, **CALLS[call])
    mine = user_backend("mine", rank_value=1)
    assert select_backend(inputs) is mine
    assert crossattn.backends.preference(inputs)[0] == "mine"
    kw = {"return_weights": inputs.return_weights}
    got = cross_attention(inputs.query, inputs.key, inputs.value, **kw)
    want = cross_attention(inputs.query, inputs.key, inputs.value, backend="reference", **kw)
    assert mine.calls == 1
    if not inputs.return_weights:
        got, want = [got], [want]
    for a, b in zip(got, want):  # the user backend is the reference math, run once
        assert torch.equal(a, b)


def test_dispatch_skips_a_user_backend_that_refuses_the_call(gen, user_backend):
    inputs = _inputs(gen, return_weights=True)
    builtin = select_backend(inputs)
    mine = user_backend("mine", rank_value=1, refuse=lambda inputs: inputs.return_weights)
    assert select_backend(inputs) is builtin
    assert select_backend(_inputs(gen)) is mine  # no weights: it runs
    cross_attention(inputs.query, inputs.key, inputs.value, return_weights=True)
    assert mine.calls == 0


def test_a_user_backend_ranks_after_the_built_in_ones_by_default(gen, user_backend):
    inputs = _inputs(gen)
    builtin = select_backend(inputs)
    user_backend("mine", rank_value=crossattn.backends.Backend().rank(inputs))
    assert select_backend(inputs) is builtin
    assert crossattn.backends.preference(inputs)[-1] == "mine"
    # ... and runs what no built-in backend runs
    never = user_backend("never", rank_value=None)
    assert "never" not in crossattn.backends.preference(inputs)
    with use_backend("never"):
        assert select_backend(inputs) is never


def test_refusal_names_the_shapes_dtypes_device_and_every_backend(gen, monkeypatch):
    from crossattn.backends import registry

    inputs = _inputs(gen, return_weights=True)
    refusing = {name: _UserBackend(name, 5, refuse=lambda inputs: True) for name in BACKENDS}
    refusing["mine"] = _UserBackend("mine", 1, refuse=lambda inputs: True)
    monkeypatch.setattr(registry, "_REGISTRY", refusing)
    with pytest.raises(ValueError) as err:
        select_backend(inputs)
    message = str(err.value)
    assert message.startswith("no backend can run this call:\n")
    for name in refusing:
        assert f"\n  {name}: this user backend refuses the call\n" in message
    q, k, v = inputs.query, inputs.key, inputs.value
    assert message.endswith(
        f"\n  the call: query {tuple(q.shape)} float32, key {tuple(k.shape)} float32, "
        f"value {tuple(v.shape)} float32, on cpu; return_weights=True, dropout_p=0"
    )
