"""The int8 backend and `Int8Tensor`: against the float64 reference on the dequantised inputs,
the refusal of float inputs, dispatch never choosing it, and the quantised tensor's operations."""

from __future__ import annotations

import pytest
import torch

import crossattn
from crossattn.backends import (
    AttentionInputs,
    Int8Backend,
    Int8Tensor,
    get_backend,
    quantize_rows,
    select_backend,
)
from crossattn.backends.int8 import INT8_MAX
from tests.conftest import assert_matches, assert_within, expected, randn


def dequantized64(t: Int8Tensor) -> torch.Tensor:
    """The exact value an Int8Tensor stands for, in float64."""
    return t.values.double() * t.scales.double()


def _qkv(gen, b, h, hk, length, s, e, dtype):
    q = randn(b, h, length, e, generator=gen).to(dtype)
    k = quantize_rows(randn(b, hk, s, e, generator=gen).to(dtype))
    v = quantize_rows(randn(b, hk, s, e, generator=gen).to(dtype))
    return q, k, v


# ------------------------------------------------------------------------------ quantize_rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_quantize_rows_is_within_half_a_step_of_the_input(gen, dtype):
    x = randn(3, 2, 5, 7, generator=gen).to(dtype) * 10
    x[0, 0, 0] = 0.0  # a row of zeros
    q = quantize_rows(x)
    assert isinstance(q, Int8Tensor) and q.dtype == dtype and q.shape == x.shape
    assert q.values.dtype == torch.int8 and q.scales.shape == (3, 2, 5, 1)
    assert int(q.values.abs().max()) == INT8_MAX  # every non-zero row uses the full range
    err = (dequantized64(q) - x.double()).abs()
    step = q.scales.double()
    assert bool((err <= step / 2 * (1 + 1e-6)).all())
    assert bool((q.values[0, 0, 0] == 0).all())
    # memory: int8 values plus one float32 per row
    assert q.nbytes_stored == x.numel() + 4 * 3 * 2 * 5


def test_quantize_rows_refuses_non_float_and_empty_rows():
    with pytest.raises(TypeError, match="floating-point"):
        quantize_rows(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty last dimension"):
        quantize_rows(torch.ones(2, 0))


def test_int8_tensor_operations_stay_quantised_and_match_the_dequantised(gen):
    q = quantize_rows(randn(4, 2, 6, 8, generator=gen).float())
    full = q.dequantize()
    rows = torch.tensor([3, 0, 0])
    picked = q.index_select(0, rows)
    assert isinstance(picked, Int8Tensor)
    assert torch.equal(picked.dequantize(), full.index_select(0, rows))
    pad = torch.zeros(4, 1, 6, 1, dtype=torch.bool)
    pad[1, :, 4:] = True
    filled = q.masked_fill(pad, 0.0)
    assert isinstance(filled, Int8Tensor)
    assert torch.equal(filled.dequantize(), full.masked_fill(pad, 0.0))
    for same in (q.clone(), q.detach()):
        assert isinstance(same, Int8Tensor) and torch.equal(same.dequantize(), full)
    as_bf16 = q.to(torch.bfloat16)
    assert isinstance(as_bf16, Int8Tensor) and as_bf16.dtype == torch.bfloat16
    # anything else runs on the dequantised tensor and gives a plain one
    other = q * 2 + 1
    assert type(other) is torch.Tensor and torch.equal(other, full * 2 + 1)
    assert "Int8Tensor(shape=(4, 2, 6, 8)" in repr(q)


# ----------------------------------------------------------------- against the float64 reference
SHAPES = {  # (B, H, Hk, L, S, E)
    "L!=S": (2, 4, 4, 3, 5, 8),
    "S=1": (2, 2, 2, 4, 1, 8),
    "decode L=1": (3, 4, 4, 1, 9, 16),
    "GQA H=4 Hk=2": (2, 4, 2, 3, 7, 8),
    "odd": (1, 3, 1, 5, 11, 5),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "key", "bool", "float"])
@pytest.mark.parametrize("weights", [False, True, "mean"])
def test_int8_backend_matches_the_reference_on_dequantised_inputs(
    gen, shape, dtype, mask_kind, weights
):
    b, h, hk, length, s, e = shape
    q, k, v = _qkv(gen, b, h, hk, length, s, e, dtype)
    kw: dict = {}
    if mask_kind == "key":
        km = torch.ones(b, s, dtype=torch.bool)
        km[0, s // 2 + 1 :] = False
        kw["key_mask"] = km
    elif mask_kind == "bool":
        kw["attn_mask"] = torch.rand(length, s, generator=gen) > 0.3
        kw["attn_mask"][:, 0] = True
    elif mask_kind == "float":
        kw["attn_mask"] = randn(b, 1, length, s, generator=gen).to(dtype)
    got = crossattn.cross_attention(q, k, v, backend="int8", return_weights=weights, **kw)
    exp = expected(q, dequantized64(k), dequantized64(v), dtype, return_weights=weights, **kw)
    assert_matches(got, exp, f"int8 backend {dtype}")
    out = got[0] if weights else got
    assert out.dtype == dtype


def test_padded_keys_holding_nan_never_reach_the_output(gen):
    b, h, s, e = 2, 2, 6, 8
    q = randn(b, h, 3, e, generator=gen).float()
    k, v = randn(b, h, s, e, generator=gen).float(), randn(b, h, s, e, generator=gen).float()
    km = torch.ones(b, s, dtype=torch.bool)
    km[1, 4:] = False
    exp = expected(q, dequantized64(quantize_rows(k)), dequantized64(quantize_rows(v)),
                   torch.float32, key_mask=km)  # fmt: skip
    k[1, :, 4:] = float("nan")  # poison the padding: its rows get NaN scales
    v[1, :, 4:] = float("inf")
    got = crossattn.cross_attention(q, quantize_rows(k), quantize_rows(v), key_mask=km,
                                    backend="int8")  # fmt: skip
    # rows 0 and the valid tokens of row 1 are quantised exactly as in the clean copy
    assert_within(got, exp.out, exp.out_tol, "int8 backend with NaN padding")


def test_empty_batch_and_no_queries(gen):
    for b, length in ((0, 3), (2, 0)):
        q, k, v = _qkv(gen, b, 2, 2, length, 4, 8, torch.float32)
        out, w = crossattn.cross_attention(q, k, v, backend="int8", return_weights=True)
        assert out.shape == (b, 2, length, 8) and w.shape == (b, 2, length, 4)


# --------------------------------------------------------------------- refusal and dispatch
def test_pinned_int8_refuses_float_inputs_with_a_value_error(gen):
    q = randn(2, 2, 3, 8, generator=gen).float()
    k = randn(2, 2, 5, 8, generator=gen).float()
    with pytest.raises(ValueError, match=r"backend='int8' cannot run this call: key and value are "
                       r"plain torch.float32 tensors.*quantize_rows"):  # fmt: skip
        crossattn.cross_attention(q, k, k, backend="int8")
    with pytest.raises(ValueError, match="value is a plain torch.float32 tensor"):
        crossattn.cross_attention(q, quantize_rows(k), k, backend="int8")
    with pytest.raises(ValueError, match="value is a plain"), crossattn.use_backend("int8"):
        crossattn.cross_attention(q, quantize_rows(k), k)


def test_int8_refuses_dropout_and_gradients(gen):
    q, k, v = _qkv(gen, 2, 2, 2, 3, 5, 8, torch.float32)
    with pytest.raises(ValueError, match="no dropout"):
        crossattn.cross_attention(q, k, v, backend="int8", dropout_p=0.1)
    with pytest.raises(ValueError, match="no gradients"):
        crossattn.cross_attention(q.requires_grad_(), k, v, backend="int8")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
@pytest.mark.parametrize("weights", [False, True, "mean"])
@pytest.mark.parametrize("s", [1, 77, 2048])
def test_dispatch_never_chooses_int8_for_float_inputs(gen, dtype, weights, s):
    q = randn(1, 2, 3, 8, generator=gen).to(dtype)
    k = randn(1, 2, s, 8, generator=gen).to(dtype)
    inputs = AttentionInputs(q, k, k, None, 0.35, 0.0, weights)
    assert select_backend(inputs).name != "int8"
    assert Int8Backend().not_supported_reasons(inputs)


def test_int8_is_registered_and_declares_its_inputs():
    assert "int8" in crossattn.available_backends()
    backend = get_backend("int8")
    assert isinstance(backend, Int8Backend) and backend.quantized_inputs
