"""`CrossAttention` with a context mask: padding zeroed once, in `prepare_context`.

A `PreparedContext` holds keys and values that are 0 wherever its mask is False, so the layer
does not have the op zero them again at every call (a decoding step would pay about as much
again as the attention itself); the results are those of the op with ``key_mask``, bitwise.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crossattn import CrossAttention, cross_attention
from tests.conftest import randn


def _layer_and_inputs(gen, kv_heads=2):
    torch.manual_seed(0)
    layer = CrossAttention(16, 12, heads=4, dim_head=8, kv_heads=kv_heads).double().eval()
    queries = randn(3, 5, 16, generator=gen)
    context = randn(3, 7, 12, generator=gen)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2] = False  # a row without context: its output is the output bias alone
    return layer, queries, context, mask


def test_prepared_padding_is_zero_and_nan_padding_does_not_leak(gen):
    layer, queries, context, mask = _layer_and_inputs(gen)
    poisoned = context.masked_fill(~mask[:, :, None], float("nan"))
    prepared = layer.prepare_context(poisoned, context_mask=mask)
    assert prepared.padding_zeroed
    pad = ~mask[:, None, :, None].expand_as(prepared.key)
    assert torch.all(prepared.key[pad] == 0) and torch.all(prepared.value[pad] == 0)
    clean = layer(queries, context, context_mask=mask)
    assert torch.equal(layer(queries, prepared), clean)
    assert torch.equal(layer(queries, poisoned, context_mask=mask), clean)


@pytest.mark.parametrize("attn_mask", ["none", "bool", "float"])
def test_layer_matches_the_op_with_a_key_mask_bitwise(gen, attn_mask):
    """Folding the key mask into the attention mask changes nothing, weights included."""
    layer, queries, context, mask = _layer_and_inputs(gen)
    extra = None
    if attn_mask == "bool":
        extra = torch.rand(5, 7, generator=gen) < 0.8
    elif attn_mask == "float":
        extra = randn(5, 7, generator=gen)
        extra[1, :] = float("-inf")
    prepared = layer.prepare_context(context, context_mask=mask)
    out, weights = layer(queries, prepared, attn_mask=extra, return_weights=True)
    q = layer.to_q(queries).view(3, 5, 4, 8).transpose(1, 2)  # (B, H, L, D)
    want, want_w = cross_attention(
        q,
        prepared.key,
        prepared.value,
        attn_mask=None if extra is None else extra[None, None],
        key_mask=mask,
        return_weights=True,
    )
    want = layer.to_out(want.transpose(1, 2).reshape(3, 5, 32))
    assert torch.equal(out, want) and torch.equal(weights, want_w)


def test_a_context_not_marked_zeroed_is_zeroed_by_the_op(gen):
    """A PreparedContext whose padding holds other values (``padding_zeroed=False``) still
    gets the op's key mask, so its padding never reaches the output."""
    layer, queries, context, mask = _layer_and_inputs(gen)
    prepared = layer.prepare_context(context, context_mask=mask)
    pad = ~mask[:, None, :, None]
    dirty = dataclasses.replace(
        prepared,
        key=prepared.key.masked_fill(pad, float("nan")),
        value=prepared.value.masked_fill(pad, float("inf")),
        padding_zeroed=False,
    )
    assert torch.equal(layer(queries, dirty), layer(queries, prepared))
