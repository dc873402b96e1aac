"""The chunked backend's whole-row tiles on contexts longer than one key block.

Weights are made from whole rows (every key of a query in one tile), in the same pass as the
output, and so is bfloat16 output at contexts much longer than the queries; checked against the float64 reference with derived tolerances, masks and grouped heads
included, and the tiling checked to stay within one tile of scores.
"""

from __future__ import annotations

import pytest
import torch

from crossattn import cross_attention
from crossattn.backends import AttentionInputs, ChunkedBackend, get_backend, register_backend
from crossattn.backends.chunked import FLOAT32_WHOLE_ROWS_MAX_S, MIN_ROWS, TILE_ELEMENTS, plan
from tests.conftest import assert_matches, expected, randn

SINGLE_BLOCK = 8  # contexts longer than this take key blocks when no weights are asked for
# (B, H, Hk, L, S, E, Ev)
SHAPES = {"mha": (2, 3, 3, 53, 37, 8, 5), "gqa": (2, 4, 2, 19, 29, 4, 6)}


@pytest.fixture
def short_blocks():
    """Key blocks of 8 (every test context is longer) and tiles of 1800 scores: the head mean
    of "mha" takes tiles of every head and 14 rows, "gqa" tiles of whole batch rows."""
    original = get_backend("chunked")
    register_backend(ChunkedBackend(single_block=SINGLE_BLOCK, tile_elements=1800), replace=True)
    try:
        yield "chunked"
    finally:
        register_backend(original, replace=True)


@pytest.mark.parametrize("case", ["none", "key", "bool-per-head", "float+key"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_long_context_weights_match_float64_reference(short_blocks, shape, case, dtype, gen):
    b, h, hk, length, s, e, ev = SHAPES[shape]
    q, k = randn(b, h, length, e, generator=gen), randn(b, hk, s, e, generator=gen)
    v = randn(b, hk, s, ev, generator=gen)
    attn_mask = key_mask = None
    if "key" in case:
        key_mask = torch.rand(b, s, generator=gen) < 0.6
        key_mask[:, 0] = True
        key_mask[-1] = False  # a batch row with no context
    if case == "bool-per-head":
        attn_mask = torch.rand(b, h, length, s, generator=gen) < 0.6
        attn_mask[:, 1, -1] = False
    if case.startswith("float"):
        attn_mask = randn(1, 1, length, s, generator=gen)
    args = [t.to(dtype) for t in (q, k, v)]
    mask = attn_mask.to(dtype) if case.startswith("float") else attn_mask
    for mode in (True, "mean"):
        exp = expected(q, k, v, dtype, attn_mask=attn_mask, key_mask=key_mask, return_weights=mode)
        got = cross_attention(
            *args, attn_mask=mask, key_mask=key_mask, backend=short_blocks, return_weights=mode
        )
        assert got[1].dtype == dtype
        assert_matches(got, exp, f"{dtype} weights={mode}")


@pytest.mark.parametrize("weights", [True, "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dims", [(1, 8, 256, 65536, 64), (1, 8, 8192, 8192, 64)])
def test_weights_take_whole_rows_within_one_tile(dims, dtype, weights):
    """Long contexts with weights: one key block (float32 only up to FLOAT32_WHOLE_ROWS_MAX_S
    keys), tiles of whole rows no larger than a tile; for the head mean, tiles of every head of
    a batch row (one reduction into the map)."""
    b, h, length, s, e = dims
    q = torch.empty(b, h, length, e, dtype=dtype)
    k = torch.empty(b, h, s, e, dtype=dtype)
    p = plan(AttentionInputs(q, k, k, None, 0.1, 0.0, weights))
    if dtype == torch.float32 and s > FLOAT32_WHOLE_ROWS_MAX_S:
        assert p.k_block < s
        return
    assert p.k_block == s
    assert p.batch_block * p.row_block * s <= TILE_ELEMENTS
    assert p.row_block >= MIN_ROWS or p.row_block == length
    if weights == "mean":
        assert p.batch_block == h
    if dtype == torch.float32:
        no_weights = plan(AttentionInputs(q, k, k, None, 0.1, 0.0, False))
        assert no_weights.k_block < s  # without weights the online softmax keeps its key blocks


def test_bfloat16_long_context_few_queries_takes_whole_rows():
    """bfloat16 without gradients at S >= 16 x rows: whole rows; square long contexts, float32
    and calls that need gradients keep the online softmax's key blocks."""
    b_shape, e_shape = (1, 8, 256, 65536, 64), (1, 8, 8192, 8192, 64)

    def plan_of(dims, dtype, grad=False):
        b, h, length, s, e = dims
        q = torch.empty(b, h, length, e, dtype=dtype).requires_grad_(grad)
        k = torch.empty(b, h, s, e, dtype=dtype)
        return plan(AttentionInputs(q, k, k, None, 0.1, 0.0, False))

    whole = plan_of(b_shape, torch.bfloat16)
    assert whole.k_block == 65536
    assert whole.batch_block * whole.row_block * 65536 <= TILE_ELEMENTS
    assert plan_of(b_shape, torch.float32).k_block < 65536
    assert plan_of(b_shape, torch.bfloat16, grad=True).k_block < 65536
    assert plan_of(e_shape, torch.bfloat16).k_block < 8192


@pytest.mark.parametrize("case", ["none", "key", "float+key"])
def test_bfloat16_whole_rows_match_float64_reference(short_blocks, case, gen):
    """The whole-row path without weights, at a context 16 x longer than the rows."""
    b, h, length, s, e = 2, 4, 3, 50, 8
    q = randn(b, h, length, e, generator=gen)
    k, v = randn(b, h, s, e, generator=gen), randn(b, h, s, e, generator=gen)
    key_mask = torch.rand(b, s, generator=gen) < 0.6 if "key" in case else None
    if key_mask is not None:
        key_mask[:, 0] = True
    attn_mask = randn(1, 1, length, s, generator=gen) if case.startswith("float") else None
    args = [t.to(torch.bfloat16) for t in (q, k, v)]
    mask = None if attn_mask is None else attn_mask.to(torch.bfloat16)
    inputs = AttentionInputs(*args, None, 0.1, 0.0, False)
    assert plan(inputs, 1800, None, SINGLE_BLOCK).k_block == s
    exp = expected(q, k, v, torch.bfloat16, attn_mask=attn_mask, key_mask=key_mask)
    got = cross_attention(*args, attn_mask=mask, key_mask=key_mask, backend=short_blocks)
    assert_matches(got, exp, "bfloat16 whole rows")
