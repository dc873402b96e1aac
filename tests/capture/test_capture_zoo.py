"""AttentionRecorder on every attention layer of `crossattn.__all__`.

Each layer runs on small odd shapes, with padding where it takes a mask, inside an
`AttentionRecorder` that keeps every head. Every call of every `CrossAttention` inside it is
seen by a forward pre-hook of the test; each recorded map must have the shape (B, heads, L, S)
of that call and match the float64 plain-math weights of the call's own queries, keys and masks
(projected here by hand), within the derived float32 tolerance. `HierarchicalCrossAttention`,
which does not call its `CrossAttention`'s forward, is checked against the float64 weights of
each query over the tokens of the blocks it selected.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import crossattn
from crossattn import CrossAttention, PreparedContext
from crossattn.capture import AttentionRecorder
from crossattn.capture._signature import call_arguments
from tests.conftest import assert_within, expected, reference

B = 2


def _randn(*shape: int) -> Tensor:
    return torch.randn(*shape)


def _mask(length: int, valid: int) -> Tensor:
    """(B, length) bool: row 0 all valid, row 1 valid up to `valid`."""
    return crossattn.lengths_to_key_mask(torch.tensor([length, valid]), length)


def _poisoned(t: Tensor, mask: Tensor) -> Tensor:
    """`t` (B, N, ...) with NaN at the padded tokens: they must never reach a map."""
    return t.masked_fill(~mask.view(*mask.shape, *([1] * (t.dim() - 2))), float("nan"))


def _gated(layer):
    locations = torch.zeros(B, 7, dtype=torch.bool)
    locations[:, 1] = True
    locations[0, 4] = True
    media_mask = _mask(6, 4)
    media = _poisoned(_randn(B, 6, 6), media_mask)
    return layer(_randn(B, 7, 8), media, media_locations=locations, tokens_per_media=3,
                 media_mask=media_mask)  # fmt: skip


def _decoder(layer):
    source_mask = _mask(5, 3)
    first = layer(_randn(B, 3, 8), _randn(B, 5, 8), source_mask=source_mask, use_cache=True)
    prepared = layer.prepare_context(_randn(B, 5, 8), source_mask)
    return layer(_randn(B, 1, 8), prepared, cache=first.cache)


def _two_way_transformer(layer):
    return layer(_randn(B, 8, 3, 3), _randn(1, 8, 3, 3), _randn(B, 4, 8), point_mask=_mask(4, 3))


# Every attention layer of crossattn.__all__: (class name, build, run).
CASES: list[tuple[str, Callable[[], nn.Module], Callable[[nn.Module], object]]] = [
    ("CrossAttention", lambda: CrossAttention(8, 6, heads=3, dim_head=4, kv_heads=1),
     lambda m: m(_randn(B, 7, 8), _poisoned(_randn(B, 5, 6), _mask(5, 3)),
                 context_mask=_mask(5, 3))),
    ("BidirectionalCrossAttention",
     lambda: crossattn.BidirectionalCrossAttention(8, 6, heads=2, dim_head=4),
     lambda m: m(_randn(B, 5, 8), _randn(B, 3, 6), a_mask=_mask(5, 4), b_mask=_mask(3, 2))),
    ("GatedCrossAttentionBlock",
     lambda: crossattn.GatedCrossAttentionBlock(8, 6, heads=2, dim_head=4), _gated),
    ("HierarchicalCrossAttention", None, None),  # test_hierarchical_maps
    ("PerceiverEncoder",
     lambda: crossattn.PerceiverEncoder(6, num_latents=3, latent_dim=8, heads=2, dim_head=4,
                                        depth=1, cross_heads=2, cross_dim_head=4,
                                        input_chunk_size=4),
     lambda m: m(_poisoned(_randn(B, 9, 6), _mask(9, 5)), _mask(9, 5))),
    ("PerceiverDecoder", lambda: crossattn.PerceiverDecoder(8, 6, heads=2, dim_head=4),
     lambda m: m(_randn(5, 8), _randn(B, 3, 6), _mask(3, 2))),
    ("PerceiverIO",
     lambda: crossattn.PerceiverIO(6, num_latents=3, latent_dim=8, heads=2, dim_head=4, depth=0,
                                   query_dim=5, num_outputs=4, decoder_dim_head=4),
     lambda m: m(_randn(B, 7, 6), input_mask=_mask(7, 4))),
    ("RetrievalCrossAttention",
     lambda: crossattn.RetrievalCrossAttention(8, 6, chunk_size=3, heads=2, dim_head=4),
     lambda m: m(_randn(B, 7, 8), _randn(B, 3, 2, 2, 6),
                 neighbour_mask=torch.rand(B, 3, 2, 2) > 0.3)),
    ("SelfDocAttention", lambda: crossattn.SelfDocAttention(8, 6, heads=2, dim_head=4),
     lambda m: m(_randn(B, 5, 8), _randn(B, 5, 6), mask=_mask(5, 3))),
    ("TransformerDecoderLayer",
     lambda: crossattn.TransformerDecoderLayer(8, heads=2, dim_ff=16), _decoder),
    ("TransformerEncoderLayer",
     lambda: crossattn.TransformerEncoderLayer(8, heads=2, dim_ff=16),
     lambda m: m(_randn(B, 5, 8), token_mask=_mask(5, 2))),
    ("TwoWayAttentionBlock", lambda: crossattn.TwoWayAttentionBlock(8, 2, 16),
     lambda m: m(_randn(B, 4, 8), _randn(B, 9, 8), _randn(B, 4, 8), _randn(9, 8),
                 query_mask=_mask(4, 3))),
    ("TwoWayTransformer",
     lambda: crossattn.TwoWayTransformer(depth=2, embedding_dim=8, num_heads=2, mlp_dim=16),
     _two_way_transformer),
]  # fmt: skip
NOT_ATTENTION = {"FiLM", "GatedFusion"}  # modulation and gating: nothing attends


def test_cases_cover_every_layer_class():
    modules = {
        name
        for name in crossattn.__all__
        if isinstance(getattr(crossattn, name), type)
        and issubclass(getattr(crossattn, name), nn.Module)
    }
    assert modules == {name for name, _, _ in CASES} | NOT_ATTENTION
    assert not any(
        isinstance(m, CrossAttention)
        for m in (*crossattn.FiLM(4, 3).modules(), *crossattn.GatedFusion(4).modules())
    )


def _layer_attn_mask(attn_mask: Tensor | None) -> Tensor | None:
    """A layer's attn_mask, (L, S) / (B, L, S) / (B, H, L, S), as 4 dims."""
    if attn_mask is None or attn_mask.dim() == 4:
        return attn_mask
    return attn_mask[None, None] if attn_mask.dim() == 2 else attn_mask.unsqueeze(1)


def _expected_map(layer: CrossAttention, call: dict) -> tuple[Tensor, float]:
    """The float64 weights (B, H, L, S) of one call of `layer`, and their float32 tolerance."""
    queries, context = call["queries"], call["context"]
    b, length, _ = queries.shape
    q = layer.to_q(queries).view(b, length, layer.heads, layer.dim_head).transpose(1, 2)
    q = layer.q_norm(q)  # (B, H, L, D)
    if isinstance(context, PreparedContext):
        k, key_mask = context.key, context.key_mask
    else:
        s = context.shape[1]
        k = layer.to_k(context).view(b, s, layer.kv_heads, layer.dim_head).transpose(1, 2)
        k, key_mask = layer.k_norm(k), call["context_mask"]  # (B, Hk, S, D)
    if key_mask is not None:
        k = k.masked_fill(~key_mask[:, None, :, None], 0.0)  # NaN padding is never attended
    exp = expected(q, k, k, torch.float32, attn_mask=_layer_attn_mask(call["attn_mask"]),
                   key_mask=key_mask, return_weights=True)  # fmt: skip
    return exp.weights, exp.weights_tol


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not None], ids=lambda c: c[0])
def test_every_attention_call_is_recorded_and_matches_float64(case):
    _, build, run = case
    torch.manual_seed(0)
    model = build().eval()
    calls: dict[str, list[tuple[CrossAttention, dict]]] = {}
    names = {}
    for name, module in model.named_modules():
        if isinstance(module, CrossAttention):
            names[id(module)] = name or type(module).__name__

    def see(module, args, kwargs):
        calls.setdefault(names[id(module)], []).append(
            (module, call_arguments(module, args, kwargs))
        )

    handles = [m.register_forward_pre_hook(see, with_kwargs=True) for m in model.modules()
               if isinstance(m, CrossAttention)]  # fmt: skip
    try:
        with torch.no_grad(), AttentionRecorder(model, heads="all", layers=lambda n: True) as rec:
            run(model)
    finally:
        for handle in handles:
            handle.remove()
    assert calls, "the layer made no CrossAttention call"
    assert set(rec.maps) == set(calls)  # every call of every attention, nothing else
    with torch.no_grad():
        for name, seen in calls.items():
            assert len(rec.maps[name]) == len(seen), name
            for recorded, (layer, call) in zip(rec.maps[name], seen):
                want, tol = _expected_map(layer, call)
                assert recorded.dim() == 4 and recorded.shape[1] == layer.heads, name
                assert_within(recorded, want, tol, f"{name} map")


@pytest.mark.parametrize("heads", ["all", "mean"])
@pytest.mark.parametrize("length, s", [(5, 10), (1, 7), (7, 3)], ids=str)
def test_hierarchical_maps(heads, length, s):
    torch.manual_seed(0)
    layer = crossattn.HierarchicalCrossAttention(
        8, 6, heads=2, dim_head=4, block_size=3, top_k=2, query_block_size=2
    ).eval()
    queries, mask = _randn(B, length, 8), _mask(s, max(1, s - 4))
    context = _poisoned(_randn(B, s, 6), mask)
    with torch.no_grad():
        with AttentionRecorder(layer, heads=heads) as rec:
            out, selection = layer(queries, context, context_mask=mask, return_selection=True)
        attn = layer.attn
        q = attn.to_q(queries).view(B, length, 2, 4).transpose(1, 2)  # (B, H, L, D)
        clean = context.masked_fill(~mask[..., None], 0.0)
        k = attn.to_k(clean).view(B, s, 2, 4).transpose(1, 2)  # (B, H, S, D)
        v = attn.to_v(clean).view(B, s, 2, 4).transpose(1, 2)
        # Query i (of query block i // 2) may see key j when block j // 3 is among its selected.
        block_of_key = torch.arange(s) // 3  # (S,)
        chosen = selection[:, :, torch.arange(length) // 2]  # (B, H, L, k)
        seen = (chosen[..., None] == block_of_key).any(dim=-2)  # (B, H, L, S)
        exp = expected(q, k, v, torch.float32, attn_mask=seen, key_mask=mask, return_weights=True)
        # The map is the one the layer computed with: its output is this attention's output.
        # Tolerance: 4x the error of the same plain math in float32, against float64.
        merged = [
            nn.functional.linear(
                reference(q, k, v, attn_mask=seen, key_mask=mask, dtype=dtype)
                .transpose(1, 2).reshape(B, length, 8), attn.to_out.weight.to(dtype),
                attn.to_out.bias.to(dtype),
            )
            for dtype in (torch.float64, torch.float32)
        ]  # fmt: skip
    err = (merged[1].double() - merged[0]).abs().max().item() if length else 0.0
    assert_within(out, merged[0], 4 * err + 1e-7 * merged[0].abs().max().item(), "output")
    (recorded,) = rec.maps["attn"]
    want = exp.weights.mean(dim=1) if heads == "mean" else exp.weights
    assert_within(recorded, want, exp.weights_tol, "hierarchical map")
    assert recorded.shape == ((B, length, s) if heads == "mean" else (B, 2, length, s))


@pytest.mark.parametrize("model_given", [True, False])
def test_bidirectional_shared_maps(model_given):
    # "shared" mode has no CrossAttention: it hands both maps of its one similarity matrix over,
    # under the names the two attentions of mode "two" have.
    torch.manual_seed(0)
    layer = crossattn.BidirectionalCrossAttention(8, 6, heads=2, dim_head=4, mode="shared").eval()
    a_mask, b_mask = _mask(5, 4), _mask(3, 2)
    a, b = _poisoned(_randn(B, 5, 8), a_mask), _poisoned(_randn(B, 3, 6), b_mask)
    with torch.no_grad():
        with AttentionRecorder(layer if model_given else None, heads="all") as rec:
            layer(a, b, a_mask=a_mask, b_mask=b_mask)
        a0, b0 = a.masked_fill(~a_mask[..., None], 0.0), b.masked_fill(~b_mask[..., None], 0.0)
        qk_a = layer.to_qk_a(a0).view(B, 5, 2, 4).transpose(1, 2)  # (B, H, La, D)
        qk_b = layer.to_qk_b(b0).view(B, 3, 2, 4).transpose(1, 2)  # (B, H, Lb, D)
    prefix = "BidirectionalCrossAttention" if model_given else "BidirectionalCrossAttention_0"
    for part, q, k, rows, keys in (
        ("attn_a_to_b", qk_a, qk_b, a_mask, b_mask),
        ("attn_b_to_a", qk_b, qk_a, b_mask, a_mask),
    ):
        exp = expected(q, k, k, torch.float32, attn_mask=rows[:, None, :, None], key_mask=keys,
                       return_weights=True)  # fmt: skip
        (recorded,) = rec.maps[f"{prefix}.{part}"]
        assert_within(recorded, exp.weights, exp.weights_tol, part)
    with AttentionRecorder(layer, layers=["BidirectionalCrossAttention.attn_a_to_b"]) as rec:
        layer(a, b, a_mask=a_mask, b_mask=b_mask)
    assert rec.layer_names == ["BidirectionalCrossAttention.attn_a_to_b"]
    assert rec.maps[rec.layer_names[0]][0].shape == (B, 5, 3)
