"""Input checks shared by the composite layers: dtypes against the parameters, feature sizes,
empty sequences, constructor arguments, and the documented empty / zero-weight behaviours."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from crossattn.layers import (
    BidirectionalCrossAttention,
    FiLM,
    GatedCrossAttentionBlock,
    GatedFusion,
    HierarchicalCrossAttention,
    PerceiverDecoder,
    PerceiverEncoder,
    PerceiverIO,
    RetrievalCrossAttention,
    SelfDocAttention,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    TwoWayAttentionBlock,
    TwoWayTransformer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

B, L, D, C = 2, 5, 8, 6  # batch, length, feature size, context feature size
SMALL = {"heads": 2, "dim_head": 4}


def randn(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + len(shape)))


# Each case: a layer built in float32, and its inputs as a dict of argument name -> tensor
# (positional, in order) plus fixed keyword arguments.
Case = tuple[Callable[[], nn.Module], dict[str, Tensor], dict]

CASES: dict[str, Case] = {
    "FiLM": (lambda: FiLM(D, C), {"features": randn(B, L, D), "condition": randn(B, 3, C)}, {}),
    "GatedFusion": (
        lambda: GatedFusion(D),
        {"features": randn(B, L, D), "attended": randn(B, L, D)},
        {},
    ),
    "GatedCrossAttentionBlock": (
        lambda: GatedCrossAttentionBlock(D, C, **SMALL),
        {"text": randn(B, L, D), "media": randn(B, 4, C)},
        {},
    ),
    "PerceiverEncoder": (
        lambda: PerceiverEncoder(D, num_latents=3, latent_dim=D, depth=1, **SMALL),
        {"inputs": randn(B, L, D)},
        {},
    ),
    "PerceiverDecoder": (
        lambda: PerceiverDecoder(D, C, **SMALL),
        {"queries": randn(B, 3, D), "latents": randn(B, 4, C)},
        {},
    ),
    "PerceiverIO": (
        lambda: PerceiverIO(D, num_latents=3, latent_dim=D, depth=1, query_dim=C, **SMALL),
        {"inputs": randn(B, L, D), "queries": randn(B, 3, C)},
        {},
    ),
    "Bidirectional-two": (
        lambda: BidirectionalCrossAttention(D, C, **SMALL),
        {"a": randn(B, L, D), "b": randn(B, 3, C)},
        {},
    ),
    "Bidirectional-shared": (
        lambda: BidirectionalCrossAttention(D, C, mode="shared", **SMALL),
        {"a": randn(B, L, D), "b": randn(B, 3, C)},
        {},
    ),
    "Hierarchical": (
        lambda: HierarchicalCrossAttention(D, C, block_size=2, top_k=1, **SMALL),
        {"queries": randn(B, L, D), "context": randn(B, 7, C)},
        {},
    ),
    "SelfDoc": (
        lambda: SelfDocAttention(D, C, **SMALL),
        {"a": randn(B, L, D), "b": randn(B, L, C)},
        {},
    ),
    "Retrieval": (
        lambda: RetrievalCrossAttention(D, C, chunk_size=2, **SMALL),
        {"tokens": randn(B, L, D), "neighbours": randn(B, 3, 2, 2, C)},
        {},
    ),
    "TwoWayTransformer": (
        lambda: TwoWayTransformer(1, D, 2, 16),
        {
            "image_embedding": randn(B, D, 2, 3),
            "image_pe": randn(1, D, 2, 3),
            "point_embedding": randn(B, 3, D),
        },
        {},
    ),
    "TwoWayAttentionBlock": (
        lambda: TwoWayAttentionBlock(D, 2, 16),
        {
            "queries": randn(B, 3, D),
            "keys": randn(B, 6, D),
            "query_pe": randn(B, 3, D),
            "key_pe": randn(B, 6, D),
        },
        {},
    ),
    "TransformerEncoderLayer": (
        lambda: TransformerEncoderLayer(D, heads=2, dim_ff=16),
        {"tokens": randn(B, L, D)},
        {},
    ),
    "TransformerDecoderLayer": (
        lambda: TransformerDecoderLayer(D, C, heads=2, dim_ff=16),
        {"tokens": randn(B, L, D), "source": randn(B, 3, C)},
        {},
    ),
}

DTYPE_CASES = [(name, arg) for name, (_, inputs, _) in CASES.items() for arg in inputs]


def first_tensor(res) -> Tensor:
    return res if isinstance(res, Tensor) else res[0]


@pytest.mark.parametrize(("case", "arg"), DTYPE_CASES, ids=[f"{c}-{a}" for c, a in DTYPE_CASES])
def test_float64_input_to_float32_layer_is_a_typeerror_naming_it(case, arg):
    make, inputs, kwargs = CASES[case]
    layer = make()
    args = [t.double() if name == arg else t for name, t in inputs.items()]
    msg = (
        rf"^{arg} (has|have) dtype torch\.float64 but the layer's parameters are torch\.float32; "
        rf"cast the input \({arg}\.to\(torch\.float32\)\) or the layer \(layer\.to\(torch\.float64\)\)$"
    )
    with pytest.raises(TypeError, match=msg):
        layer(*args, **kwargs)
    # the fix the message names works: the layer cast to float64 takes float64 inputs
    out = first_tensor(layer.double()(*[t.double() for t in inputs.values()], **kwargs))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("case", list(CASES))
def test_float32_inputs_run(case):
    make, inputs, kwargs = CASES[case]
    out = first_tensor(make()(*inputs.values(), **kwargs))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_autocast_inputs_are_not_refused():
    """Under autocast the parameters' dtype is not the compute dtype: no dtype check, as in
    CrossAttention."""
    fusion = GatedFusion(D)
    x = randn(B, L, D).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(x, x)
    assert out.shape == (B, L, D) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("layer", "args", "msg"),
    [
        (
            TransformerEncoderLayer(D, heads=2, dim_ff=16),
            (randn(B, L, 7),),
            r"tokens must have shape \(B, S, d_model\) with last dim 8, got \(2, 5, 7\)",
        ),
        (
            TransformerDecoderLayer(D, C, heads=2, dim_ff=16),
            (randn(B, L, D), randn(B, 3, 5)),
            r"source must have shape \(B, S, context_dim\) or a PreparedContext from "
            r"prepare_context with last dim 6, got \(2, 3, 5\)",
        ),
        (
            TwoWayAttentionBlock(D, 2, 16),
            (randn(B, 3, D), randn(B, 6, 7), randn(B, 3, D), randn(B, 6, D)),
            r"keys must have shape \(B, HW, C\) with last dim 8, got \(2, 6, 7\)",
        ),
        (
            FiLM(D, C),
            (randn(B, L, D), randn(B, 3, C).long()),
            r"condition must be a floating-point tensor, got dtype torch.int64",
        ),
        (
            RetrievalCrossAttention(D, C, chunk_size=2, **SMALL),
            (randn(B, L, D), randn(B, 3, 2, 2, C).long()),
            r"neighbours must be a floating-point tensor, got dtype torch.int64",
        ),
    ],
    ids=["encoder-tokens", "decoder-source", "block-keys", "film-int", "retrieval-int"],
)
def test_feature_dims_and_kinds(layer, args, msg):
    err = TypeError if "floating-point" in msg else ValueError
    with pytest.raises(err, match=msg):
        layer(*args)


# --------------------------------------------------------------------------- empty sequences

EMPTY_CASES = [
    (
        "Hierarchical-context",
        lambda: HierarchicalCrossAttention(D, C, block_size=2, top_k=1, **SMALL)(
            randn(B, L, D), randn(B, 0, C)
        ),
        r"context has S=0 tokens \(shape \(2, 0, 6\)\): there is nothing to attend to; pass at "
        r"least one context token per row \(keep padding tokens and mark them False in "
        r"context_mask\)",
    ),
    (
        "Bidirectional-a",
        lambda: BidirectionalCrossAttention(D, C, **SMALL)(randn(B, 0, D), randn(B, 3, C)),
        r"a has La=0 tokens \(shape \(2, 0, 8\)\): there is nothing to attend to; b attends to "
        r"a, so a needs at least one token per row \(keep padding tokens and mark them False "
        r"in a_mask\)",
    ),
    (
        "Bidirectional-shared-b",
        lambda: BidirectionalCrossAttention(D, C, mode="shared", **SMALL)(
            randn(B, L, D), randn(B, 0, C)
        ),
        r"b has Lb=0 tokens \(shape \(2, 0, 6\)\).*in b_mask\)",
    ),
    (
        "Gated-T=0",
        lambda: GatedCrossAttentionBlock(D, C, **SMALL)(randn(B, L, D), randn(B, 0, 3, C)),
        r"media have T=0 items of n=3 tokens \(shape \(2, 0, 3, 6\)\): there is nothing to "
        r"attend to; .*dummy item with media_mask False",
    ),
    (
        "Gated-M=0",
        lambda: GatedCrossAttentionBlock(D, C, **SMALL)(randn(B, L, D), randn(B, 0, C)),
        r"media have M=0 tokens \(shape \(2, 0, 6\)\)",
    ),
    (
        "Retrieval-K=0",
        lambda: RetrievalCrossAttention(D, C, chunk_size=2, **SMALL)(
            randn(B, L, D), randn(B, 3, 0, 2, C)
        ),
        r"neighbours have K=0 neighbours of R=2 tokens per chunk \(shape \(2, 3, 0, 2, 6\)\).*"
        r"dummy neighbour masked False in neighbour_mask",
    ),
    (
        "Retrieval-R=0",
        lambda: RetrievalCrossAttention(D, C, chunk_size=2, **SMALL)(
            randn(B, L, D), randn(B, 3, 2, 0, C)
        ),
        r"neighbours have K=2 neighbours of R=0 tokens per chunk",
    ),
    (
        "TwoWay-N=0",
        lambda: TwoWayTransformer(1, D, 2, 16)(
            randn(B, D, 2, 3), randn(1, D, 2, 3), randn(B, 0, D)
        ),
        r"point_embedding has N=0 tokens \(shape \(2, 0, 8\)\): there is nothing to attend to; "
        r"the image attends to the prompt tokens",
    ),
    (
        "TwoWay-HW=0",
        lambda: TwoWayTransformer(1, D, 2, 16)(
            randn(B, D, 0, 3), randn(1, D, 0, 3), randn(B, 3, D)
        ),
        r"image_embedding has H\*W = 0\*3 = 0 positions \(shape \(2, 8, 0, 3\)\)",
    ),
    (
        "TwoWayBlock-N=0",
        lambda: TwoWayAttentionBlock(D, 2, 16)(
            randn(B, 0, D), randn(B, 6, D), randn(B, 0, D), randn(B, 6, D)
        ),
        r"queries have N=0 tokens \(shape \(2, 0, 8\)\).*mark padding False in query_mask",
    ),
    (
        "Perceiver-S=0",
        lambda: PerceiverEncoder(D, num_latents=3, latent_dim=D, depth=1, **SMALL)(randn(B, 0, D)),
        r"inputs have S=0 tokens \(shape \(2, 0, 8\)\): there is nothing to attend to; pass at "
        r"least one input token per row",
    ),
    (
        "PerceiverDecoder-N=0",
        lambda: PerceiverDecoder(D, C, **SMALL)(randn(B, 3, D), randn(B, 0, C)),
        r"latents have N=0 latents \(shape \(2, 0, 6\)\)",
    ),
    (
        "Decoder-S=0",
        lambda: TransformerDecoderLayer(D, heads=2, dim_ff=16)(randn(B, L, D), randn(B, 0, D)),
        r"source has S=0 tokens \(shape \(2, 0, 8\)\).*mark them False in source_mask",
    ),
]


@pytest.mark.parametrize(
    ("call", "msg"), [c[1:] for c in EMPTY_CASES], ids=[c[0] for c in EMPTY_CASES]
)
def test_empty_context_names_the_argument(call, msg):
    with pytest.raises(ValueError, match=msg) as info:
        call()
    assert "key has S=0" not in str(info.value)


def test_empty_prepared_source_names_the_argument():
    layer = TransformerDecoderLayer(D, heads=2, dim_ff=16)
    prepared = layer.prepare_context(randn(B, 0, D))
    with pytest.raises(
        ValueError,
        match=r"source has S=0 tokens \(a PreparedContext: keys \(B, heads, S, dim_head\)\) \(shape \(2, 2, 0, 4\)\)",
    ):
        layer(randn(B, L, D), prepared)
    hier = HierarchicalCrossAttention(D, C, block_size=2, top_k=1, **SMALL)
    with pytest.raises(
        ValueError,
        match=r"context has S=0 tokens \(a PreparedContext: keys \(B, heads, S, dim_head\)\) \(shape \(2, 2, 0, 4\)\)",
    ):
        hier(randn(B, L, D), hier.attn.prepare_context(randn(B, 0, C)))


@pytest.mark.parametrize("weights", [True, "mean"])
def test_selfdoc_empty_inputs_give_empty_outputs(weights):
    layer = SelfDocAttention(D, C, **SMALL)
    a, b = randn(B, 0, D), randn(B, 0, C)
    assert layer(a, b).shape == (B, 0, D)
    out, w = layer(a, b, mask=torch.ones(B, 0, dtype=torch.bool), return_weights=weights)
    assert out.shape == (B, 0, D) and out.dtype == torch.float32
    assert w.shape == ((B, 0, 0) if weights == "mean" else (B, 2, 0, 0))


def test_encoder_with_no_tokens_returns_empty():
    layer = TransformerEncoderLayer(D, heads=2, dim_ff=16)
    out = layer(randn(B, 0, D), token_mask=torch.ones(B, 0, dtype=torch.bool))
    assert out.shape == (B, 0, D) and out.dtype == torch.float32


def test_decoder_with_no_new_positions_returns_empty_and_keeps_the_cache():
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(D, C, heads=2, dim_ff=16).eval()
    source, first = randn(B, 3, C), randn(B, 1, D)
    empty = layer(randn(B, 0, D), source, use_cache=True, return_weights=True)
    assert empty.tokens.shape == (B, 0, D)
    assert empty.cross_weights.shape == (B, 2, 0, 3)
    assert empty.cache.length == 0
    # the empty cache continues like no cache at all
    step = layer(first, source, cache=empty.cache, use_cache=True)
    fresh = layer(first, source, use_cache=True)
    assert torch.equal(step.tokens, fresh.tokens) and step.cache.length == 1
    # T = 0 after a real step: empty output, the cache passed back unchanged in content
    again = layer(randn(B, 0, D), source, cache=fresh.cache, use_cache=True)
    assert again.tokens.shape == (B, 0, D)
    assert torch.equal(again.cache.key, fresh.cache.key)


def test_other_empty_queries_give_empty_outputs():
    hier = HierarchicalCrossAttention(D, C, block_size=2, top_k=1, **SMALL)
    assert hier(randn(B, 0, D), randn(B, 7, C)).shape == (B, 0, D)
    gated = GatedCrossAttentionBlock(D, C, **SMALL)
    assert gated(randn(B, 0, D), randn(B, 4, C)).shape == (B, 0, D)
    dec = PerceiverDecoder(D, C, **SMALL)
    assert dec(randn(B, 0, D), randn(B, 4, C)).shape == (B, 0, D)


def test_gated_dummy_media_item_is_the_documented_way_to_have_no_media():
    """The fix named by the empty-media error: a masked dummy item gives an update of 0."""
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(D, C, **SMALL)
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
        block.ff_gate.fill_(0.5)
    text = randn(B, L, D)
    out = block(
        text, torch.full((B, 1, 2, C), float("nan")), media_mask=torch.zeros(B, 2, dtype=bool)
    )
    expected = text + torch.tanh(torch.tensor(0.5)) * block.ff(block.norm_ff(text))
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)


def test_retrieval_dummy_neighbour_gives_zero():
    layer = RetrievalCrossAttention(D, C, chunk_size=2, causal_offset=False, **SMALL)
    out = layer(
        randn(B, L, D),
        randn(B, 3, 1, 1, C),
        neighbour_mask=torch.zeros(B, 3, 1, 1, dtype=torch.bool),
    )
    assert torch.equal(out, torch.zeros(B, L, D))


# --------------------------------------------------------------------------- FiLM, S = 0


def test_film_empty_condition_pools_like_an_all_false_mask():
    film = FiLM(D, C).double()
    with torch.no_grad():
        film.to_gamma_beta.weight.normal_(generator=torch.Generator().manual_seed(1))
        film.to_gamma_beta.bias.normal_(generator=torch.Generator().manual_seed(2))
    features = randn(B, L, D).double()
    empty = torch.zeros(B, 0, C, dtype=torch.float64)
    bias_g, bias_b = film.to_gamma_beta.bias.detach().chunk(2)
    expected = features * (1 + bias_g) + bias_b  # the documented zero pooling
    assert torch.equal(film.pool(empty), torch.zeros(B, C, dtype=torch.float64))
    for mask in (None, torch.ones(B, 0, dtype=torch.bool)):
        out = film(features, empty, mask)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, expected, rtol=0, atol=1e-14)
    all_false = film(features, randn(B, 3, C).double(), torch.zeros(B, 3, dtype=torch.bool))
    assert torch.allclose(film(features, empty), all_false, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- constructors

CTOR_CASES = [
    ("TwoWay-depth-bool", lambda: TwoWayTransformer(True, D, 2, 16), "depth must be a non-negative int, got True"),
    ("TwoWay-depth-float", lambda: TwoWayTransformer(2.0, D, 2, 16), "depth must be a non-negative int, got 2.0"),
    ("Encoder-d_model-bool", lambda: TransformerEncoderLayer(True, heads=1), "d_model must be a positive int, got True"),
    ("Encoder-heads-bool", lambda: TransformerEncoderLayer(D, heads=True), "heads must be a positive int, got True"),
    ("Decoder-heads-bool", lambda: TransformerDecoderLayer(D, heads=True), "heads must be a positive int, got True"),
    ("Decoder-context_dim-bool", lambda: TransformerDecoderLayer(D, True), "context_dim must be a positive int, got True"),
    ("Decoder-context_dim-0", lambda: TransformerDecoderLayer(D, 0), "context_dim must be a positive int, got 0"),
    ("Gated-ff_mult-bool", lambda: GatedCrossAttentionBlock(D, C, ff_mult=True), "ff_mult must be a positive int, got True"),
    ("Gated-ff_mult-0", lambda: GatedCrossAttentionBlock(D, C, ff_mult=0), "ff_mult must be a positive int, got 0"),
    ("Gated-heads-bool", lambda: GatedCrossAttentionBlock(D, C, heads=True), "heads must be a positive int, got True"),
    ("Retrieval-heads-bool", lambda: RetrievalCrossAttention(D, C, chunk_size=2, heads=True), "heads must be a positive int, got True"),
    ("Retrieval-dim_head-neg", lambda: RetrievalCrossAttention(D, C, chunk_size=2, dim_head=-1), "dim_head must be a positive int, got -1"),
    ("Perceiver-ff_mult-bool", lambda: PerceiverEncoder(D, num_latents=3, latent_dim=D, depth=1, ff_mult=True, **SMALL), "ff_mult must be a positive int, got True"),
    ("Perceiver-ff_mult-0", lambda: PerceiverEncoder(D, num_latents=3, latent_dim=D, depth=1, ff_mult=0, **SMALL), "ff_mult must be a positive int, got 0"),
    ("Perceiver-depth-bool", lambda: PerceiverEncoder(D, num_latents=3, latent_dim=D, depth=True, **SMALL), "depth must be a non-negative int, got True"),
    ("PerceiverDecoder-ff_mult-bool", lambda: PerceiverDecoder(D, C, ff_mult=True), "ff_mult must be a positive int, got True"),
    ("PerceiverIO-num_outputs-0", lambda: PerceiverIO(D, num_latents=3, latent_dim=D, depth=1, query_dim=C, num_outputs=0, **SMALL), "num_outputs must be a positive int, got 0"),
    ("SelfDoc-heads-bool", lambda: SelfDocAttention(D, C, heads=True), "heads must be a positive int, got True"),
    ("Bidirectional-out_dim-bool", lambda: BidirectionalCrossAttention(D, C, out_dim=True), "out_dim must be a positive int, got True"),
    ("Hierarchical-top_k-bool", lambda: HierarchicalCrossAttention(D, top_k=True), "top_k must be a positive int, got True"),
    ("TwoWayBlock-num_heads-bool", lambda: TwoWayAttentionBlock(D, True), "num_heads must be a positive int, got True"),
    ("FiLM-condition_dim-neg", lambda: FiLM(D, -2), "condition_dim must be a positive int, got -2"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "msg"), [c[1:] for c in CTOR_CASES], ids=[c[0] for c in CTOR_CASES]
)
def test_constructor_refuses_bools_zero_and_negatives(make, msg):
    # a bool is shown with its type ("got True (bool)") by crossattn._checks
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}( \\(bool\\))?$"):
        make()


def test_two_way_depth_zero_is_allowed():
    assert len(TwoWayTransformer(0, D, 2, 16).layers) == 0


# --------------------------------------------------------------------------- SelfDoc weights


@pytest.mark.parametrize("weights", [True, "mean"])
def test_selfdoc_padded_rows_have_zero_weights_like_bidirectional(weights):
    torch.manual_seed(0)
    layer = SelfDocAttention(D, C, **SMALL)
    mask = torch.tensor([[True, True, True, True, True], [True, False, True, False, False]])
    a, b = randn(B, L, D), randn(B, L, C)
    a = a.masked_fill(~mask[..., None], float("nan"))
    out, w = layer(a, b, mask=mask, return_weights=weights)
    w4 = w if weights is True else w[:, None]  # (B, heads or 1, L, L)
    row_sums = w4.sum(-1)  # (B, heads, L)
    expected = mask[:, None, :].to(w.dtype).expand_as(row_sums)  # valid rows 1, padded rows 0
    assert torch.allclose(row_sums, expected, rtol=0, atol=1e-6)
    assert torch.equal(w4.transpose(1, 2)[~mask], torch.zeros_like(w4.transpose(1, 2)[~mask]))
    assert torch.equal(w4.transpose(1, 3)[~mask], torch.zeros_like(w4.transpose(1, 3)[~mask]))
    assert torch.equal(out[~mask], torch.zeros(int((~mask).sum()), D))
    # the same convention as BidirectionalCrossAttention
    bi = BidirectionalCrossAttention(D, C, **SMALL)
    _, _, wa, _ = bi(randn(B, L, D), b, a_mask=mask, return_weights=weights)
    wa4 = wa if weights is True else wa[:, None]
    assert torch.equal(wa4.sum(-1) == 0, w4.sum(-1) == 0)


# --------------------------------------------------------------------------- TwoWay, decoder


def test_two_way_block_positional_encoding_lengths():
    block = TwoWayAttentionBlock(D, 2, 16)
    q, k = randn(B, 3, D), randn(B, 6, D)
    with pytest.raises(
        ValueError,
        match=r"query_pe must hold one positional encoding per token of queries: shape "
        r"\(B, N, C\) = \(2, 3, 8\) or \(1, 3, 8\) for all rows, got \(2, 2, 8\)",
    ):
        block(q, k, randn(B, 2, D), randn(B, 6, D))
    with pytest.raises(
        ValueError,
        match=r"key_pe must hold one positional encoding per token of keys: shape "
        r"\(B, HW, C\) = \(2, 6, 8\) or \(1, 6, 8\) for all rows, got \(2, 5, 8\)",
    ):
        block(q, k, randn(B, 3, D), randn(B, 5, D))
    with pytest.raises(ValueError, match=r"keys have B=1 but queries have B=2"):
        block(q, k[:1], randn(B, 3, D), randn(B, 6, D))
    with pytest.raises(ValueError, match=r"query_mask must have shape \(B, N\) = \(2, 3\)"):
        block(q, k, randn(B, 3, D), randn(B, 6, D), query_mask=torch.ones(B, 4, dtype=bool))
    # a positional encoding shared by the batch (batch size 1) still broadcasts
    shared = block(q, k, randn(1, 3, D), randn(1, 6, D))
    assert shared[0].shape == (B, 3, D) and shared[1].shape == (B, 6, D)


@pytest.mark.parametrize("cache", [torch.randn(2, 2, 5, 4), {"key": None}, (1, 2)])
def test_decoder_cache_of_the_wrong_type(cache):
    layer = TransformerDecoderLayer(D, heads=2, dim_ff=16)
    with pytest.raises(
        TypeError,
        match=r"cache must be the PreparedContext this layer returned as DecoderLayerOutput\."
        rf"cache \(call it with use_cache=True\), or None for the first step; got "
        rf"{type(cache).__name__}$",
    ):
        layer(randn(B, 1, D), randn(B, 3, D), cache=cache)


def test_decoder_source_mask_is_named():
    layer = TransformerDecoderLayer(D, heads=2, dim_ff=16)
    with pytest.raises(ValueError, match=r"source_mask must have shape \(B, S\) = \(2, 3\)"):
        layer(randn(B, 1, D), randn(B, 3, D), source_mask=torch.ones(B, 4, dtype=bool))


# --------------------------------------------------------------------------- docstrings


@pytest.mark.parametrize(
    "cls",
    [
        FiLM,
        GatedFusion,
        HierarchicalCrossAttention,
        PerceiverDecoder,
        PerceiverIO,
        SelfDocAttention,
    ],
)
def test_forward_has_a_docstring_with_shapes(cls):
    doc = cls.forward.__doc__ or ""
    assert "Args:" in doc and "Returns:" in doc
    assert re.search(r"\(B, \w+, \w+\)", doc)
