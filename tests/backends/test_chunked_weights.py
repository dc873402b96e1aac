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
from crossattn.backends.chunked import (
    FLOAT32_WHOLE_ROWS_MAX_S,
    MIN_ROWS,
    TILE_ELEMENTS,
    WEIGHTS_MIN_ROWS,
    plan,
)
from tests.conftest import assert_matches, expected, randn

SINGLE_BLOCK = 8  # contexts longer than this take key blocks when no weights are asked for
# (B, H, Hk, L, S, E, Ev)
SHAPES = {"mha": (2, 3, 3, 53, 37, 8, 5), "gqa": (2, 4, 2, 19, 29, 4, 6)}


@pytest.fixture
def short_blocks():
    """Key blocks of 8 (every test context is longer) and tiles of 1800 scores: the head mean
    of "mha" takes tiles of every head and 14 rows in bfloat16, tiles of 27 rows of one head in
    float32 and float64 (see WEIGHTS_MIN_ROWS); "gqa" takes tiles of whole batch rows."""
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
    """Long contexts with weights: one key block, tiles of whole rows no larger than a tile.
    For the head mean, tiles of every head of a batch row (one reduction into the map), except
    where a float32 tile of every head would hold fewer than WEIGHTS_MIN_ROWS rows: then tiles
    of that many rows of one head (past FLOAT32_WHOLE_ROWS_MAX_S keys, for either mode)."""
    b, h, length, s, e = dims
    q = torch.empty(b, h, length, e, dtype=dtype)
    k = torch.empty(b, h, s, e, dtype=dtype)
    p = plan(AttentionInputs(q, k, k, None, 0.1, 0.0, weights))
    assert p.k_block == s
    assert p.batch_block * p.row_block * s <= TILE_ELEMENTS
    assert p.row_block >= MIN_ROWS or p.row_block == length
    skinny = dtype == torch.float32 and h * WEIGHTS_MIN_ROWS * s > TILE_ELEMENTS
    if dtype == torch.float32 and (skinny or weights is True):
        assert p.row_block >= min(length, WEIGHTS_MIN_ROWS)
    if weights == "mean":
        assert p.batch_block == (1 if skinny else h)
    if dtype == torch.float32:
        no_weights = plan(AttentionInputs(q, k, k, None, 0.1, 0.0, False))
        assert no_weights.k_block < s  # without weights the online softmax keeps its key blocks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_float_mean_of_every_head_in_one_tile_matches_float64_reference(dtype, gen):
    """Many query rows: the float head mean takes tiles of every head (one reduction)."""
    b, h, length, s, e = 1, 2, 300, 20, 8
    inputs = AttentionInputs(
        *(torch.empty(b, h, n, e) for n in (length, s, s)), None, 0.1, 0.0, "mean"
    )
    p = plan(inputs, 5500, None, SINGLE_BLOCK)
    assert p.batch_block == h and p.row_block < length
    q, k, v = (randn(b, h, n, e, generator=gen) for n in (length, s, s))
    key_mask = torch.rand(b, s, generator=gen) < 0.7
    key_mask[:, 0] = True
    original = get_backend("chunked")
    register_backend(ChunkedBackend(single_block=SINGLE_BLOCK, tile_elements=5500), replace=True)
    try:
        args = [t.to(dtype) for t in (q, k, v)]
        got = cross_attention(*args, key_mask=key_mask, backend="chunked", return_weights="mean")
    finally:
        register_backend(original, replace=True)
    exp = expected(q, k, v, dtype, key_mask=key_mask, return_weights="mean")
    assert_matches(got, exp, f"{dtype} mean of every head")


def test_float32_weights_past_one_tile_of_rows_take_key_blocks():
    """Where not even WEIGHTS_MIN_ROWS rows of one head fit a tile, float32 weights come from
    key blocks and a second pass; with fewer query rows than that, those rows are the bound."""

    def plan_of(length, s):
        q = torch.empty(1, 2, length, 8)
        k = torch.empty(1, 2, s, 8)
        return plan(AttentionInputs(q, k, k, None, 0.1, 0.0, "mean"))

    past = TILE_ELEMENTS // WEIGHTS_MIN_ROWS + 1
    assert past > FLOAT32_WHOLE_ROWS_MAX_S
    assert plan_of(WEIGHTS_MIN_ROWS, past).k_block < past
    assert plan_of(WEIGHTS_MIN_ROWS, past - 1).k_block == past - 1
    assert plan_of(MIN_ROWS, past).k_block == past  # 16 rows: whole rows fit


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
