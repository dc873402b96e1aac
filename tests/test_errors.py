"""Every error path of `cross_attention` and `CrossAttention`, with its message.

Messages name the argument, the shape (or dtype, device) received and the one expected.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import crossattn
from crossattn import CrossAttention, cross_attention


def qkv(b=2, h=4, hk=2, length=3, s=5, e=8, ev=6, dtype=torch.float32):
    return (
        torch.randn(b, h, length, e, dtype=dtype),
        torch.randn(b, hk, s, e, dtype=dtype),
        torch.randn(b, hk, s, ev, dtype=dtype),
    )


def raises(exc, pattern):
    return pytest.raises(exc, match=re.escape(pattern))


# --- query, key, value --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["query", "key", "value"])
def test_non_tensor_inputs(which):
    args = dict(zip(("query", "key", "value"), qkv()))
    args[which] = args[which].tolist()
    with raises(TypeError, f"{which} must be a torch.Tensor, got list"):
        cross_attention(**args)


@pytest.mark.parametrize(
    "which, expected",
    [("query", "(B, H, L, E)"), ("key", "(B, Hk, S, E)"), ("value", "(B, Hk, S, Ev)")],
)
def test_three_dimensional_inputs(which, expected):
    args = dict(zip(("query", "key", "value"), qkv()))
    args[which] = args[which][0]
    got = "(" + ", ".join(str(d) for d in args[which].shape) + ")"
    with raises(ValueError, f"{which} must be 4-D {expected}, got shape {got}"):
        cross_attention(**args)


def test_integer_inputs():
    q, k, v = qkv()
    with raises(TypeError, "query must be a floating-point tensor, got dtype torch.int64"):
        cross_attention(q.long(), k.long(), v.long())


def test_mixed_dtypes():
    q, k, v = qkv()
    with raises(
        TypeError,
        "query, key and value must share one dtype, got torch.float32, torch.float64, "
        "torch.float32",
    ):
        cross_attention(q, k.double(), v)


def test_mixed_devices():
    q, k, v = qkv()
    with raises(ValueError, "query, key and value must be on one device, got cpu, meta, cpu"):
        cross_attention(q, k.to("meta"), v)


def test_batch_sizes_differ():
    q, k, v = qkv()
    with raises(
        ValueError, "batch sizes differ: query (2, 4, 3, 8), key (1, 2, 5, 8), value (2, 2, 5, 6)"
    ):
        cross_attention(q, k[:1], v)
    with raises(ValueError, "value (1, 2, 5, 6); all three need the same B in dimension 0"):
        cross_attention(q, k, v[:1])


def test_head_dims_differ():
    q, k, v = qkv()
    with raises(
        ValueError,
        "key head dim must equal the query's: query (2, 4, 3, 8) has E=8, key (2, 2, 5, 7) "
        "has 7; expected key (B, Hk, S, 8)",
    ):
        cross_attention(q, k[..., :7], v)


def test_key_value_lengths_differ():
    q, k, v = qkv()
    with raises(
        ValueError,
        "key and value lengths differ: key (2, 2, 5, 8) has S=5, value (2, 2, 4, 6) has 4; "
        "expected value (B, Hk, 5, Ev)",
    ):
        cross_attention(q, k, v[:, :, :4])


def test_key_value_head_counts_differ():
    q, k, v = qkv()
    with raises(
        ValueError,
        "key and value head counts differ: key (2, 2, 5, 8) has Hk=2, value (2, 1, 5, 6) has 1",
    ):
        cross_attention(q, k, v[:, :1])


def test_heads_not_divisible():
    q, k, v = qkv(h=4, hk=3)
    with raises(
        ValueError,
        "query heads H=4 (query (2, 4, 3, 8)) must be a multiple of key/value heads Hk=3 "
        "(key (2, 3, 5, 8))",
    ):
        cross_attention(q, k, v)


def test_empty_context():
    q, k, v = qkv(s=0)
    with raises(ValueError, "key has S=0 (shape (2, 2, 0, 8)): there is nothing to attend to"):
        cross_attention(q, k, v)


def test_no_heads_or_no_features():
    q, k, v = qkv(h=0)
    with raises(ValueError, "query has H=0 heads (shape (2, 0, 3, 8)): give it at least one"):
        cross_attention(q, k, v)
    q, k, v = qkv(e=0)
    with raises(ValueError, "query has head dim E=0 (shape (2, 4, 3, 0)): queries and keys"):
        cross_attention(q, k, v)


def test_values_without_features():
    """Ev = 0 gives an empty output (and the weights) on every backend that runs it; chunked
    declines it, and dispatch goes elsewhere."""
    q, k, v = qkv(ev=0)
    for backend in (None, "reference", "sdpa"):
        out = cross_attention(q, k, v, backend=backend)
        assert out.shape == (2, 4, 3, 0)
    out, w = cross_attention(q, k, v, return_weights=True)
    assert out.shape == (2, 4, 3, 0) and w.shape == (2, 4, 3, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 3))
    with raises(ValueError, "value has Ev=0 features"):
        cross_attention(q, k, v, backend="chunked")


# --- scalar arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1, 0, 1.0, "max", None, "True", torch.tensor(True)], ids=repr)
def test_bad_return_weights(bad):
    q, k, v = qkv()
    with raises(ValueError, f"return_weights must be False, True or 'mean', got {bad!r}"):
        cross_attention(q, k, v, return_weights=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")], ids=repr)
def test_bad_dropout_p(bad):
    q, k, v = qkv()
    with raises(ValueError, f"dropout_p must be in [0, 1), got {bad!r}"):
        cross_attention(q, k, v, dropout_p=bad)


@pytest.mark.parametrize("bad", ["0.1", None, True], ids=repr)
def test_dropout_p_of_the_wrong_type(bad):
    q, k, v = qkv()
    with raises(TypeError, "dropout_p must be a real number in [0, 1), got "):
        cross_attention(q, k, v, dropout_p=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=repr)
def test_bad_scale(bad):
    q, k, v = qkv()
    with raises(ValueError, f"scale must be a finite real number, got {bad!r}"):
        cross_attention(q, k, v, scale=bad)


@pytest.mark.parametrize("bad", ["0.5", True], ids=repr)
def test_scale_of_the_wrong_type(bad):
    q, k, v = qkv()
    with raises(TypeError, "scale must be a finite real number, got "):
        cross_attention(q, k, v, scale=bad)


# --- key_mask -----------------------------------------------------------------------------


def test_key_mask_not_a_tensor():
    q, k, v = qkv()
    with raises(TypeError, "key_mask must be a bool tensor (B, S) or None, got list"):
        cross_attention(q, k, v, key_mask=[[True] * 5] * 2)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32], ids=str)
def test_key_mask_not_bool(dtype):
    q, k, v = qkv()
    with raises(
        TypeError,
        f"key_mask must have dtype torch.bool (True = valid token), got {dtype}; use "
        "key_mask.bool(), or crossattn.lengths_to_key_mask(lengths, S)",
    ):
        cross_attention(q, k, v, key_mask=torch.ones(2, 5, dtype=dtype))


@pytest.mark.parametrize("shape", [(2, 4), (1, 5), (5,), (2, 1, 5), (5, 2)], ids=str)
def test_key_mask_shape(shape):
    q, k, v = qkv()
    got = "(" + ", ".join(str(d) for d in shape) + ")"
    with raises(ValueError, f"key_mask must have shape (B, S) = (2, 5), got {got}"):
        cross_attention(q, k, v, key_mask=torch.ones(shape, dtype=torch.bool))


def test_key_mask_device():
    q, k, v = qkv()
    with raises(ValueError, "key_mask is on meta but query is on cpu"):
        cross_attention(q, k, v, key_mask=torch.ones(2, 5, dtype=torch.bool, device="meta"))


# --- attn_mask ----------------------------------------------------------------------------


def test_attn_mask_not_a_tensor():
    q, k, v = qkv()
    with raises(TypeError, "attn_mask must be a tensor or None, got list"):
        cross_attention(q, k, v, attn_mask=[[True] * 5] * 3)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.int32], ids=str)
def test_attn_mask_integer(dtype):
    q, k, v = qkv()
    with raises(
        TypeError,
        f"attn_mask must be bool (True = may attend) or floating (added to the scores), "
        f"got {dtype}",
    ):
        cross_attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_attn_mask_float_of_another_dtype(dtype):
    q, k, v = qkv()
    with raises(
        TypeError,
        f"a float attn_mask must have the query's dtype torch.float32, got {dtype}; use "
        "attn_mask.to(query.dtype)",
    ):
        cross_attention(q, k, v, attn_mask=torch.zeros(3, 5, dtype=dtype))


def test_attn_mask_device():
    q, k, v = qkv()
    with raises(ValueError, "attn_mask is on meta but query is on cpu"):
        cross_attention(q, k, v, attn_mask=torch.zeros(3, 5, device="meta"))


def test_attn_mask_too_many_dims():
    q, k, v = qkv()
    with raises(
        ValueError,
        "attn_mask must be broadcastable to (B, H, L, S) = (2, 4, 3, 5), got 5-D shape "
        "(1, 2, 4, 3, 5)",
    ):
        cross_attention(q, k, v, attn_mask=torch.ones(1, 2, 4, 3, 5, dtype=torch.bool))


@pytest.mark.parametrize(
    "shape", [(3, 4), (5, 3), (2, 2, 3, 5), (3, 4, 3, 5), (2, 4, 2, 5), (4,), (2, 1, 1, 6)], ids=str
)
@pytest.mark.parametrize("kind", [torch.bool, torch.float32], ids=str)
def test_attn_mask_not_broadcastable(shape, kind):
    q, k, v = qkv()
    got = "(" + ", ".join(str(d) for d in shape) + ")"
    with raises(
        ValueError, f"attn_mask of shape {got} is not broadcastable to (B, H, L, S) = (2, 4, 3, 5)"
    ):
        cross_attention(q, k, v, attn_mask=torch.ones(shape, dtype=kind))


def test_pinned_backend_that_cannot_run_lists_reasons():
    """The same failure through `CrossAttention`: the pinned backend's reasons reach the user."""
    layer = CrossAttention(8, heads=2, dim_head=4)
    q = torch.randn(1, 3, 8, requires_grad=True)
    for name in ("chunked", "sdpa"):
        layer.backend = name
        with pytest.raises(ValueError, match=f"backend='{name}' cannot run this call: .+"):
            layer(q, torch.randn(1, 5, 8), return_weights=True)


# --- CrossAttention ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_dim": 0}, "query_dim must be a positive int, got 0"),
        ({"query_dim": 8, "context_dim": -1}, "context_dim must be a positive int, got -1"),
        ({"query_dim": 8, "value_dim": 2.0}, "value_dim must be a positive int, got 2.0"),
        ({"query_dim": 8, "heads": 0}, "heads must be a positive int, got 0"),
        ({"query_dim": 8, "dim_head": None}, "dim_head must be a positive int, got None"),
        ({"query_dim": 8, "kv_heads": 0}, "kv_heads must be a positive int, got 0"),
        ({"query_dim": 8, "heads": 4, "kv_heads": 3}, "heads=4 must be a multiple of kv_heads=3"),
        (
            {"query_dim": 8, "qk_norm": "batch_norm"},
            "qk_norm must be None, 'layer_norm' or 'rms_norm', got 'batch_norm'",
        ),
        ({"query_dim": 8, "dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"query_dim": 8, "dropout": -0.5}, "dropout must be in [0, 1), got -0.5"),
        ({"query_dim": 8, "heads": True}, "heads must be a positive int, got True"),
        ({"query_dim": 8, "out_dim": 0}, "out_dim must be a positive int, got 0"),
        ({"query_dim": 8, "out_dim": -1}, "out_dim must be a positive int, got -1"),
        (
            {"query_dim": 8, "norm_eps": -1},
            "norm_eps must be a positive finite real number, got -1",
        ),
        (
            {"query_dim": 8, "norm_eps": 0.0},
            "norm_eps must be a positive finite real number, got 0.0",
        ),
    ],
)
def test_layer_constructor_errors(kwargs, message):
    with raises(ValueError, message):
        CrossAttention(**kwargs)


@pytest.mark.parametrize("bad", ["0.1", None, True], ids=repr)
def test_layer_constructor_types(bad):
    shown = "True (bool)" if bad is True else repr(bad)
    with raises(TypeError, f"dropout must be a real number in [0, 1), got {shown}"):
        CrossAttention(8, dropout=bad)
    with raises(TypeError, f"norm_eps must be a positive finite real number, got {shown}"):
        CrossAttention(8, norm_eps=bad)
    with raises(TypeError, "backend must be a backend name or None, got 3"):
        CrossAttention(8, backend=3)


def test_layer_backend_name_is_resolved_at_call_time():
    layer = CrossAttention(8, heads=2, dim_head=4, backend="flash")  # may be registered later
    with raises(ValueError, "backend='flash' is not an available backend; available: "):
        layer(torch.randn(1, 3, 8), torch.randn(1, 5, 8))


def test_layer_sizes_may_be_numpy_ints():
    layer = CrossAttention(
        np.int64(8), heads=np.int64(2), dim_head=np.int64(4), out_dim=np.int64(6)
    )
    assert (layer.heads, layer.out_dim) == (2, 6) and type(layer.heads) is int
    assert layer(torch.randn(1, 3, 8), torch.randn(1, 5, 8)).shape == (1, 3, 6)


def layer_and_inputs(**kw):
    layer = CrossAttention(8, 6, heads=2, dim_head=4, **kw)
    return layer, torch.randn(2, 3, 8), torch.randn(2, 5, 6)


@pytest.mark.parametrize("bad", [[0.0] * 8, None], ids=["list", "None"])
def test_layer_queries_not_a_tensor(bad):
    layer, _, context = layer_and_inputs()
    with raises(TypeError, "queries must be a torch.Tensor (B, L, query_dim), got"):
        layer(bad, context)


@pytest.mark.parametrize("shape", [(3, 8), (2, 3, 7), (1, 2, 3, 8)], ids=str)
def test_layer_queries_shape(shape):
    layer, _, context = layer_and_inputs()
    with raises(
        ValueError, f"queries must have shape (B, L, query_dim) with last dim 8, got {shape}"
    ):
        layer(torch.randn(shape), context)


@pytest.mark.parametrize("shape", [(5, 6), (2, 5, 8)], ids=str)
def test_layer_context_shape(shape):
    layer, queries, _ = layer_and_inputs()
    with raises(
        ValueError, f"context must have shape (B, S, context_dim) with last dim 6, got {shape}"
    ):
        layer(queries, torch.randn(shape))


def test_layer_context_not_a_tensor():
    layer, queries, _ = layer_and_inputs()
    with raises(TypeError, "context must be a torch.Tensor (B, S, context_dim), got list"):
        layer(queries, [[0.0] * 6])


def test_layer_values_errors():
    layer = CrossAttention(8, 6, 4, heads=2, dim_head=4)
    queries, context = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    with raises(
        ValueError,
        "values=None takes the values from the context, but this layer has value_dim=4 != "
        "context_dim=6; pass values (B, S, 4)",
    ):
        layer(queries, context)
    with raises(
        ValueError, "values must have shape (B, S, value_dim) with last dim 4, got (2, 5, 6)"
    ):
        layer(queries, context, torch.randn(2, 5, 6))
    with raises(
        ValueError,
        "values (B, S) must match the context's: context (2, 5, 6), values (2, 4, 4)",
    ):
        layer(queries, context, torch.randn(2, 4, 4))


def test_layer_batch_mismatch():
    layer, queries, context = layer_and_inputs()
    with raises(
        ValueError,
        "queries have B=2 but the context has B=1; use PreparedContext.index_select to pick "
        "context rows",
    ):
        layer(queries, context[:1])


@pytest.mark.parametrize("bad", [torch.ones(2, 5), torch.ones(2, 5, dtype=torch.long)], ids=str)
def test_layer_context_mask_dtype(bad):
    layer, queries, context = layer_and_inputs()
    with raises(TypeError, "context_mask must be a bool tensor (B, S), True = valid token; got"):
        layer(queries, context, context_mask=bad)


def test_layer_context_mask_shape():
    layer, queries, context = layer_and_inputs()
    with raises(ValueError, "context_mask must have shape (B, S) = (2, 5), got (2, 4)"):
        layer(queries, context, context_mask=torch.ones(2, 4, dtype=torch.bool))
    with raises(ValueError, "context_mask is on meta but the context is on cpu"):
        layer(queries, context, context_mask=torch.ones(2, 5, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            (5,),
            "attn_mask must be (L, S), (B, L, S) or (B, heads, L, S) = (2, 2, 3, 5), got "
            "shape (5,)",
        ),
        ((3, 4), "attn_mask of 2 dims must have shape (3, 5), got (3, 4)"),
        ((1, 3, 5), "attn_mask of 3 dims must have shape (2, 3, 5), got (1, 3, 5)"),
        ((2, 1, 3, 5), "attn_mask of 4 dims must have shape (2, 2, 3, 5), got (2, 1, 3, 5)"),
        ((1, 2, 2, 3, 5), "attn_mask must be (L, S), (B, L, S) or (B, heads, L, S)"),
    ],
)
def test_layer_attn_mask_shape(shape, message):
    layer, queries, context = layer_and_inputs()
    with raises(ValueError, message):
        layer(queries, context, attn_mask=torch.ones(shape, dtype=torch.bool))


def test_layer_attn_mask_type_and_dtype():
    layer, queries, context = layer_and_inputs()
    with raises(TypeError, "attn_mask must be a tensor or None, got list"):
        layer(queries, context, attn_mask=[[True] * 5] * 3)
    with raises(TypeError, "a float attn_mask must have the query's dtype torch.float32"):
        layer(queries, context, attn_mask=torch.zeros(3, 5, dtype=torch.float64))
    with raises(TypeError, "attn_mask must be bool (True = may attend) or floating"):
        layer(queries, context, attn_mask=torch.ones(3, 5, dtype=torch.long))


def test_layer_bad_return_weights():
    layer, queries, context = layer_and_inputs()
    with raises(ValueError, "return_weights must be False, True or 'mean', got 'all'"):
        layer(queries, context, return_weights="all")


def test_layer_mixed_dtypes_and_devices():
    layer, queries, context = layer_and_inputs()
    with raises(
        TypeError,
        "queries have dtype torch.float64 but the layer's parameters are torch.float32",
    ):
        layer(queries.double(), context)
    with raises(
        TypeError,
        "context has dtype torch.float64 but the layer's parameters are torch.float32",
    ):
        layer(queries, context.double())
    with raises(ValueError, "queries are on meta but the layer's parameters are on cpu"):
        layer(queries.to("meta"), context)
    with raises(ValueError, "context is on meta but the layer's parameters are on cpu"):
        layer(queries, context.to("meta"))


def test_prepared_context_errors():
    layer, queries, context = layer_and_inputs()
    other = CrossAttention(8, 6, heads=2, dim_head=4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    prepared = layer.prepare_context(context, context_mask=mask)
    with raises(
        ValueError,
        "this PreparedContext was made by another layer; call prepare_context on the layer "
        "that uses it",
    ):
        other(queries, prepared)
    with raises(
        ValueError,
        "context_mask was given with a PreparedContext, which carries its own mask; pass it "
        "to prepare_context(context, context_mask=...) instead",
    ):
        layer(queries, prepared, context_mask=mask)
    with raises(ValueError, "values were given with a PreparedContext, which holds them"):
        layer(queries, prepared, context)
    with raises(ValueError, "index must be 1-D (N,), got shape (2, 1)"):
        prepared.index_select(torch.zeros(2, 1, dtype=torch.long))
    with raises(ValueError, f"index holds rows 0..{prepared.batch_size}, but this context has"):
        prepared.index_select(torch.tensor([0, prepared.batch_size]))
    with raises(ValueError, "index holds rows -1..0, but this context has"):
        prepared.index_select(torch.tensor([0, -1]))
    with raises(
        TypeError,
        "index must hold integer row numbers, got dtype torch.bool; for a bool row mask pass "
        "mask.nonzero().squeeze(1)",
    ):
        prepared.index_select(torch.tensor([True, False]))
    with raises(TypeError, "index must hold integer row numbers, got dtype torch.float32"):
        prepared.index_select(torch.tensor([0.0, 1.0]))
    assert prepared.index_select([1, 0]).batch_size == 2  # a list of row numbers is fine
    for bad in (-1, 1.5, True):
        with raises(ValueError, f"repeats must be a non-negative int, got {bad!r}"):
            prepared.repeat_interleave(bad)
    with raises(ValueError, "queries have B=2 but the context has B=3"):
        layer(queries, prepared.index_select(torch.tensor([0, 1, 1])))


def test_from_torch_errors():
    with raises(TypeError, "from_torch expects torch.nn.MultiheadAttention, got Linear"):
        CrossAttention.from_torch(nn.Linear(4, 4))
    with raises(
        ValueError, "from_torch: add_bias_kv and add_zero_attn have no CrossAttention equivalent"
    ):
        CrossAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with raises(
        ValueError, "from_torch: add_bias_kv and add_zero_attn have no CrossAttention equivalent"
    ):
        CrossAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))


# --- registry -------------------------------------------------------------------------------


def test_register_backend_errors():
    from crossattn.backends import Backend, get_backend, register_backend

    class Nameless(Backend):
        pass

    with raises(ValueError, "register_backend: the backend has no `name`"):
        register_backend(Nameless())
    name = crossattn.available_backends()[0]
    with raises(
        ValueError,
        f"register_backend: a backend named {name!r} is already registered; pass replace=True "
        "to override it",
    ):
        register_backend(get_backend(name))


def test_unregister_backend():
    from crossattn.backends import ReferenceBackend

    class Copy(ReferenceBackend):
        name = "reference-copy"

    before = crossattn.available_backends()
    backend = crossattn.register_backend(Copy())
    assert crossattn.available_backends() == [*before, "reference-copy"]
    assert crossattn.unregister_backend("reference-copy") is backend
    assert crossattn.available_backends() == before
    with raises(ValueError, "unregister_backend: no backend named 'reference-copy' is registered"):
        crossattn.unregister_backend("reference-copy")


def test_when_no_backend_fits_every_reason_is_listed(monkeypatch):
    """Dispatch over backends that all refuse the call lists each of them with its reasons,
    and the call's shapes, dtypes and device."""
    from crossattn.backends import registry

    if "sdpa" not in crossattn.available_backends():
        pytest.skip("needs the sdpa backend")
    monkeypatch.setattr(registry, "_REGISTRY", {"sdpa": registry.get_backend("sdpa")})
    q, k, v = qkv()
    with pytest.raises(ValueError) as err:
        cross_attention(q, k, v, return_weights=True)
    message = str(err.value)
    assert message.startswith("no backend can run this call:\n  sdpa: SDPA returns no attention")
    shapes = [str(tuple(t.shape)) for t in (q, k, v)]
    assert message.endswith(
        f"\n  the call: query {shapes[0]} float32, key {shapes[1]} float32, value {shapes[2]} "
        "float32, on cpu; return_weights=True, dropout_p=0"
    )


# --- mask helpers ---------------------------------------------------------------------------


def test_mask_helpers_check_their_arguments():
    lengths = torch.tensor([3, 1])
    assert crossattn.lengths_to_key_mask(lengths, 4).tolist() == [
        [True, True, True, False],
        [True, False, False, False],
    ]
    with raises(ValueError, "lengths must be >= 0, got [3, -1]"):
        crossattn.lengths_to_key_mask(torch.tensor([3, -1]), 4)
    with raises(TypeError, "lengths must be an integer tensor (B,), got torch.float32"):
        crossattn.lengths_to_key_mask(torch.tensor([3.0, 1.0]), 4)
    with raises(ValueError, "lengths must be <= max_len = 2, got a length of 3: [3, 1]"):
        crossattn.lengths_to_key_mask(lengths, 2)
    with raises(ValueError, "max_len must be a non-negative int, got -1"):
        crossattn.lengths_to_key_mask(lengths, -1)
    with raises(TypeError, "max_len must be a non-negative int, got 4.0"):
        crossattn.lengths_to_key_mask(lengths, 4.0)
    # NumPy ints and 0-d integer tensors are sizes too
    want = crossattn.lengths_to_key_mask(lengths, 4)
    assert torch.equal(crossattn.lengths_to_key_mask(lengths, np.int64(4)), want)
    assert torch.equal(crossattn.lengths_to_key_mask(lengths, torch.tensor(4)), want)
    assert crossattn.causal_mask(2, 3).tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(
        crossattn.causal_mask(np.int64(2), torch.tensor(3)), crossattn.causal_mask(2, 3)
    )
    with raises(ValueError, "q_len must be a non-negative int, got -1"):
        crossattn.causal_mask(-1)
    with raises(TypeError, "kv_len must be a non-negative int, got 2.5"):
        crossattn.causal_mask(2, 2.5)
    with raises(TypeError, "q_len must be a non-negative int, got True"):
        crossattn.causal_mask(True)


def test_layer_empty_context_names_the_argument():
    layer, queries, context = layer_and_inputs()
    with raises(ValueError, "context has S=0 tokens (shape (2, 0, 6)): there is nothing to attend"):
        layer(queries, context[:, :0])
    # an empty PreparedContext is allowed (an empty cache); attending to it is not
    empty = layer.prepare_context(context[:, :0])
    with raises(ValueError, "context has S=0 tokens (a PreparedContext: keys (B, heads, S, dim_head)) (shape (2, 2, 0, 4))"):  # fmt: skip
        layer(queries, empty)
