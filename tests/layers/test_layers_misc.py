"""SelfDocAttention, FiLM, RetrievalCrossAttention and HierarchicalCrossAttention against
explicit float64 computations through the reference op."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from crossattn import CrossAttention, cross_attention
from crossattn.layers import (
    FiLM,
    HierarchicalCrossAttention,
    RetrievalCrossAttention,
    SelfDocAttention,
)
from tests.conftest import tol64

NAN = float("nan")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


def heads(layer: CrossAttention, linear: torch.nn.Linear, t: Tensor) -> Tensor:
    """(B, N, in) -> (B, heads, N, dim_head) through `linear`."""
    return linear(t).view(t.shape[0], t.shape[1], layer.heads, layer.dim_head).transpose(1, 2)


def merge(layer: CrossAttention, out: Tensor) -> Tensor:
    """(B, heads, N, dim_head) -> (B, N, out_dim) through the output projection."""
    b, _, n, _ = out.shape
    return layer.to_out(out.transpose(1, 2).reshape(b, n, layer.heads * layer.dim_head))


# --------------------------------------------------------------------------- SelfDoc


def test_selfdoc_matches_explicit(gen):
    torch.manual_seed(0)
    layer = SelfDocAttention(8, 5, heads=2, dim_head=3).double()
    a = torch.randn(3, 6, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=gen) > 0.3
    mask[0], mask[2] = True, False
    a_p = a.masked_fill(~mask[..., None], NAN)
    b_p = b.masked_fill(~mask[..., None], NAN)
    out, weights = layer(a_p, b_p, mask=mask, return_weights=True)
    attn = layer.attn
    ca, cb = a.masked_fill(~mask[..., None], 0), b.masked_fill(~mask[..., None], 0)
    q, k, v = heads(attn, attn.to_q, ca), heads(attn, attn.to_k, cb), heads(attn, attn.to_v, ca)
    ref_out, ref_w = cross_attention(
        q, k, v, key_mask=mask, backend="reference", return_weights=True
    )
    ref = merge(attn, ref_out) * mask[..., None]
    ref_w = ref_w * mask[:, None, :, None]  # a padded query's row of weights is exactly 0
    assert out.shape == (3, 6, 8) and weights.shape == (3, 2, 6, 6)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= tol64(ref, 8)
    assert (weights - ref_w).abs().max().item() <= tol64(ref_w, 8)
    padded_rows = weights.transpose(1, 2)[~mask]  # (padded tokens, heads, L)
    assert padded_rows.numel() > 0 and torch.equal(padded_rows, torch.zeros_like(padded_rows))
    # keys come from b: changing b changes the weights, values come from a only
    assert not torch.allclose(layer(a, b.flip(1)), layer(a, b))
    # unmasked call through the default backend
    q, k, v = heads(attn, attn.to_q, a), heads(attn, attn.to_k, b), heads(attn, attn.to_v, a)
    ref = merge(attn, cross_attention(q, k, v, backend="reference"))
    assert (layer(a, b) - ref).abs().max().item() <= tol64(ref, 8)


def test_selfdoc_gradients_and_errors(gen):
    layer = SelfDocAttention(8, 5, heads=2, dim_head=3)
    a, b = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 4, 5, requires_grad=True)
    layer(a, b).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    with pytest.raises(
        ValueError, match=r"same batch and length.*got a \(2, 4, 8\).*b \(2, 3, 5\)"
    ):
        layer(a, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"expected b \(2, 4, 5\)"):
        layer(a, torch.zeros(1, 4, 5))
    with pytest.raises(
        ValueError, match=r"b must have shape \(B, L, context_dim\) with last dim 5"
    ):
        layer(a, torch.zeros(2, 4, 6))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, L\) = \(2, 4\), got \(2, 3\)"):
        layer(a, b, mask=torch.ones(2, 3, dtype=torch.bool))


# --------------------------------------------------------------------------- FiLM


def test_film_is_identity_at_initialisation(gen):
    film = FiLM(6, 4).double()
    features = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    condition = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert torch.equal(film(features, condition[:, 0]), features)
    assert torch.equal(film(features, condition.masked_fill(~mask[..., None], NAN), mask), features)


def test_film_matches_explicit(gen):
    film = FiLM(6, 4).double()
    with torch.no_grad():
        film.to_gamma_beta.weight.normal_(generator=gen)
        film.to_gamma_beta.bias.normal_(generator=gen)
    features = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    condition = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 7, generator=gen) > 0.4
    mask[0, 0], mask[2] = True, False
    poisoned = condition.masked_fill(~mask[..., None], NAN)
    out = film(features, poisoned, mask)
    w, bias = film.to_gamma_beta.weight, film.to_gamma_beta.bias
    for row in range(3):
        valid = [condition[row, j] for j in range(7) if mask[row, j]]
        pooled = torch.stack(valid).mean(0) if valid else torch.zeros(4, dtype=torch.float64)
        gamma = 1 + (w[:6] @ pooled + bias[:6])
        beta = w[6:] @ pooled + bias[6:]
        ref = features[row] * gamma + beta
        assert (out[row] - ref).abs().max().item() <= tol64(ref, 7), row
    ref_unmasked = film(features, condition.mean(1))
    assert torch.allclose(film(features, condition), ref_unmasked, rtol=0, atol=1e-14)
    film(features, poisoned, mask).sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_film_errors():
    film = FiLM(6, 4)
    features = torch.zeros(2, 5, 6)
    with pytest.raises(
        ValueError, match=r"condition_mask \(B, M\) applies to a sequence condition"
    ):
        film(features, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"condition must have shape \(B, condition_dim\) or \(B, M, condition_dim\) with condition_dim=4, got \(2, 3\)"):  # fmt: skip
        film(features, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"condition has B=3 but features have B=2"):
        film(features, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"features must have shape \(B, L, dim\) with last dim 6"):
        film(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"condition_mask must have shape \(B, M\) = \(2, 3\)"):
        film(features, torch.zeros(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))


# --------------------------------------------------------------------------- Retrieval


def retrieval_loop(layer: RetrievalCrossAttention, tokens, neighbours, mask):
    """Per token: find its chunk by the RETRO rule, attend to that chunk's neighbours alone."""
    b, length, dim = tokens.shape
    m = layer.chunk_size
    _, _, k, r, cd = neighbours.shape
    attn = layer.attn_chunks_to_neighbours
    out = torch.zeros(b, length, dim, dtype=tokens.dtype)
    for row in range(b):
        for p in range(length):
            c = (p + 1) // m - 1 if layer.causal_offset else p // m
            if c < 0:
                continue
            ctx = neighbours[row, c].reshape(1, k * r, cd)
            km = None if mask is None else mask[row, c].reshape(1, k * r)
            if km is not None:
                if not km.any():
                    continue
                ctx = ctx.masked_fill(~km[..., None], 0.0)
            q = heads(attn, attn.to_q, tokens[row, p].view(1, 1, dim))
            kk, vv = heads(attn, attn.to_k, ctx), heads(attn, attn.to_v, ctx)
            out[row, p] = merge(attn, cross_attention(q, kk, vv, key_mask=km, backend="reference"))[
                0, 0
            ]
    return out


@pytest.mark.parametrize("causal_offset", [True, False])
@pytest.mark.parametrize("length", [11, 12, 3, 1])
def test_retrieval_matches_per_chunk_loop(gen, causal_offset, length):
    torch.manual_seed(1)
    m = 4
    layer = RetrievalCrossAttention(
        6, 5, chunk_size=m, heads=2, dim_head=3, causal_offset=causal_offset
    ).double()
    chunks = -(-length // m)
    tokens = torch.randn(2, length, 6, generator=gen, dtype=torch.float64)
    neighbours = torch.randn(2, chunks, 3, 2, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, chunks, 3, 2, generator=gen) > 0.3
    mask[1, 0] = False  # no valid neighbour for chunk 0 of row 1
    poisoned = neighbours.masked_fill(~mask[..., None], NAN)
    out = layer(tokens, poisoned, neighbour_mask=mask)
    ref = retrieval_loop(layer, tokens, neighbours, mask)
    assert out.shape == (2, length, 6) and torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= tol64(ref, 6)
    if causal_offset:
        assert torch.equal(out[:, : m - 1], torch.zeros_like(out[:, : m - 1]))
    out_nomask = layer(tokens, neighbours)
    ref_nomask = retrieval_loop(layer, tokens, neighbours, None)
    assert (out_nomask - ref_nomask).abs().max().item() <= tol64(ref_nomask, 6)


def test_retrieval_weights_gradients_and_float32(gen):
    torch.manual_seed(2)
    layer = RetrievalCrossAttention(6, 5, chunk_size=3, heads=2, dim_head=3)
    tokens = torch.randn(2, 8, 6, generator=gen, requires_grad=True)
    neighbours = torch.randn(2, 3, 2, 4, 5, generator=gen, requires_grad=True)
    out, weights = layer(tokens, neighbours, return_weights="mean")
    assert weights.shape == (2, 2, 3, 8)  # 2 attending chunks (after the shift of 2), 3 x 8
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 3))
    out.square().sum().backward()
    assert tokens.grad[:, 2:].abs().sum() > 0 and tokens.grad[:, :2].abs().max() == 0
    assert neighbours.grad[:, :2].abs().sum() > 0
    assert neighbours.grad[:, 2].abs().max() == 0  # the last chunk's neighbours: no token after
    layer64 = layer.double()
    ref = retrieval_loop(layer64, tokens.double(), neighbours.double(), None)
    assert (out.double() - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("length", [8, 2])  # 2: no token reaches a chunk (causal offset 2)
def test_retrieval_per_head_weights(gen, length):
    torch.manual_seed(3)
    layer = RetrievalCrossAttention(6, 5, chunk_size=3, heads=2, dim_head=3).double()
    chunks = -(-length // 3)
    tokens = torch.randn(2, length, 6, generator=gen, dtype=torch.float64)
    neighbours = torch.randn(2, chunks, 2, 4, 5, generator=gen, dtype=torch.float64)
    out, weights = layer(tokens, neighbours, return_weights=True)  # (B, C', heads, m, K * R)
    out_mean, mean = layer(tokens, neighbours, return_weights="mean")  # (B, C', m, K * R)
    attending = -(-(length - 2) // 3) if length > 2 else 0
    assert weights.shape == (2, attending, 2, 3, 8)
    assert mean.shape == (2, attending, 3, 8)
    assert torch.equal(out, out_mean)
    if attending:
        assert (weights.mean(2) - mean).abs().max().item() <= 1e-12
        assert torch.allclose(weights.sum(-1), torch.ones(2, attending, 2, 3, dtype=torch.float64))
        # Chunk 0 of row 0, head 1: the softmax of its queries against its neighbours' keys.
        attn = layer.attn_chunks_to_neighbours
        q = heads(attn, attn.to_q, tokens[:1, 2:5])  # tokens 2..4 attend to chunk 0
        kv = heads(attn, attn.to_k, neighbours[:1, 0].reshape(1, 8, 5))
        _, want = cross_attention(q, kv, kv, backend="reference", return_weights=True)
        assert (weights[0, 0, 1] - want[0, 1]).abs().max().item() <= 1e-12


def test_retrieval_errors():
    layer = RetrievalCrossAttention(6, 5, chunk_size=4, heads=2, dim_head=3)
    tokens = torch.zeros(2, 9, 6)
    with pytest.raises(ValueError, match=r"neighbours must have shape \(B, C, K, R, context_dim\) = \(2, 3, K, R, 5\).*got \(2, 2, 3, 2, 5\)"):  # fmt: skip
        layer(tokens, torch.zeros(2, 2, 3, 2, 5))
    with pytest.raises(ValueError, match=r"neighbour_mask must have shape \(B, C, K, R\) = \(2, 3, 3, 2\)"):  # fmt: skip
        layer(
            tokens, torch.zeros(2, 3, 3, 2, 5), neighbour_mask=torch.ones(2, 3, 3, dtype=torch.bool)
        )
    with pytest.raises(TypeError, match="neighbour_mask must be a bool tensor"):
        layer(tokens, torch.zeros(2, 3, 3, 2, 5), neighbour_mask=torch.ones(2, 3, 3, 2))
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        RetrievalCrossAttention(6, 5, chunk_size=0)


# --------------------------------------------------------------------------- Hierarchical


def hierarchical_inputs(gen, b=2, length=10, s=29, dim=8, cdim=6):
    queries = torch.randn(b, length, dim, generator=gen, dtype=torch.float64)
    context = torch.randn(b, s, cdim, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, s, generator=gen) > 0.25
    mask[1, 5:10] = False  # block 1 (size 5) of row 1 fully padded
    return queries, context.masked_fill(~mask[..., None], NAN), mask


def explicit_selection(layer, queries, context, mask):
    """Block means, softmax over valid blocks, sum per query block, top-k: written out."""
    attn = layer.attn
    b, length, _ = queries.shape
    s, bs, qbs = context.shape[1], layer.block_size, layer.query_block_size
    nb, nq = -(-s // bs), -(-length // qbs)
    k = heads(attn, attn.to_k, context.masked_fill(~mask[..., None], 0))  # (B, H, S, D)
    q = heads(attn, attn.to_q, queries)
    h, d = attn.heads, attn.dim_head
    pooled = torch.zeros(b, h, nb, d, dtype=torch.float64)
    valid = torch.zeros(b, nb, dtype=torch.bool)
    for row in range(b):
        for j in range(nb):
            idx = [i for i in range(j * bs, min((j + 1) * bs, s)) if mask[row, i]]
            if idx:
                pooled[row, :, j] = k[row, :, idx].mean(dim=1)
                valid[row, j] = True
    scores = q @ pooled.transpose(-1, -2) / d**0.5  # (B, H, L, nb)
    probs = torch.softmax(scores.masked_fill(~valid[:, None, None], float("-inf")), dim=-1)
    selection = torch.zeros(b, h, nq, min(layer.top_k, nb), dtype=torch.long)
    for i in range(nq):
        total = probs[:, :, i * qbs : (i + 1) * qbs].sum(dim=2)  # (B, H, nb)
        selection[:, :, i] = total.topk(selection.shape[-1], dim=-1).indices.sort(-1).values
    return selection


def test_hierarchical_matches_explicit_selection_and_masked_reference(gen):
    torch.manual_seed(3)
    layer = HierarchicalCrossAttention(
        8, 6, heads=2, dim_head=4, block_size=5, top_k=2, query_block_size=3
    ).double()
    queries, context, mask = hierarchical_inputs(gen)
    out, selection = layer(queries, context, context_mask=mask, return_selection=True)
    assert selection.shape == (2, 2, 4, 2)
    assert torch.equal(selection, explicit_selection(layer, queries, context, mask))
    # the fine stage = the reference op on the whole context, masked to the selected blocks
    attn = layer.attn
    clean = context.masked_fill(~mask[..., None], 0)
    q, k, v = (heads(attn, lin, t) for lin, t in ((attn.to_q, queries), (attn.to_k, clean), (attn.to_v, clean)))  # fmt: skip
    allowed = torch.zeros(2, 2, 10, 29, dtype=torch.bool)
    for row in range(2):
        for hh in range(2):
            for i in range(10):
                for j in selection[row, hh, i // 3].tolist():
                    allowed[row, hh, i, j * 5 : (j + 1) * 5] = True
    ref = merge(
        attn, cross_attention(q, k, v, attn_mask=allowed, key_mask=mask, backend="reference")
    )
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= tol64(ref, 29)


@pytest.mark.parametrize(
    "query_block_size,backend", [(1, None), (4, "sdpa"), (4, "chunked"), (64, "reference")]
)
def test_hierarchical_all_blocks_equals_full_attention(gen, query_block_size, backend):
    torch.manual_seed(4)
    layer = HierarchicalCrossAttention(
        8,
        6,
        heads=2,
        dim_head=4,
        block_size=5,
        top_k=6,
        query_block_size=query_block_size,
        backend=backend,
    ).double()  # ceil(29 / 5) = 6 blocks: all selected
    queries, context, mask = hierarchical_inputs(gen)
    out = layer(queries, context, context_mask=mask)
    full = layer.attn(queries, context.masked_fill(~mask[..., None], 0), context_mask=mask)
    assert (out - full).abs().max().item() <= tol64(full, 29)
    out1 = layer(queries[:, :1], context[:, :1], context_mask=mask[:, :1])  # S = 1, L = 1
    full1 = layer.attn(queries[:, :1], context[:, :1].nan_to_num(), context_mask=mask[:, :1])
    assert (out1 - full1).abs().max().item() <= tol64(full1, 1)


def test_hierarchical_gradients_and_errors(gen):
    torch.manual_seed(5)
    layer = HierarchicalCrossAttention(
        8, 6, heads=2, dim_head=4, block_size=4, top_k=2, query_block_size=3
    ).double()
    queries = torch.randn(2, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    context = torch.randn(2, 21, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    out, selection = layer(queries, context, return_selection=True)  # selection: (B, H, nq, k)
    probe = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * probe).sum().backward()
    got = [queries.grad, context.grad] + [p.grad for p in layer.parameters()]
    # The selection is discrete (no gradient); through the selected blocks the gradients are
    # those of the reference op masked to them.
    allowed = torch.zeros(2, 2, 7, 21, dtype=torch.bool)
    for row, hh, i in itertools.product(range(2), range(2), range(7)):
        for j in selection[row, hh, i // 3].tolist():
            allowed[row, hh, i, j * 4 : (j + 1) * 4] = True
    q2, c2 = queries.detach().requires_grad_(), context.detach().requires_grad_()
    layer.zero_grad()
    attn = layer.attn
    q, k, v = heads(attn, attn.to_q, q2), heads(attn, attn.to_k, c2), heads(attn, attn.to_v, c2)
    ref = merge(attn, cross_attention(q, k, v, attn_mask=allowed, backend="reference"))
    (ref * probe).sum().backward()
    want = [q2.grad, c2.grad] + [p.grad for p in layer.parameters()]
    for g, w in zip(got, want, strict=True):
        assert g is not None and g.abs().sum() > 0
        assert (g - w).abs().max().item() <= tol64(w, 21)
    queries, context = queries.float().detach(), context.float().detach()
    layer.float()
    with pytest.raises(ValueError, match=r"queries have B=2 but the context has B=1"):
        layer(queries, context[:1])
    with pytest.raises(ValueError, match=r"context must have shape \(B, S, context_dim\) with last dim 6"):  # fmt: skip
        layer(queries, torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match=r"context_mask must have shape \(B, S\) = \(2, 21\)"):
        layer(queries, context, context_mask=torch.ones(2, 20, dtype=torch.bool))
    with pytest.raises(ValueError, match="top_k must be a positive int, got 0"):
        HierarchicalCrossAttention(8, top_k=0)
    other = HierarchicalCrossAttention(8, 6, heads=2, dim_head=4)
    with pytest.raises(ValueError, match="this PreparedContext was made by another layer"):
        layer(queries, other.attn.prepare_context(context))


def test_hierarchical_large_coarse_path_selects_the_same_blocks(gen, monkeypatch):
    import crossattn.layers.hierarchical as hierarchical

    layer = HierarchicalCrossAttention(
        8, 6, heads=2, dim_head=4, block_size=5, top_k=2, query_block_size=3
    ).double()
    queries, context, mask = hierarchical_inputs(gen)
    out, selection = layer(queries, context, context_mask=mask, return_selection=True)
    monkeypatch.setattr(hierarchical, "COARSE_MAX_ELEMENTS", 0)  # memory-bounded dispatch
    out2, selection2 = layer(queries, context, context_mask=mask, return_selection=True)
    assert torch.equal(selection, selection2)
    assert (out - out2).abs().max().item() <= tol64(out, 29)


def test_hierarchical_prepared_context_equals_raw_context(gen):
    layer = HierarchicalCrossAttention(
        8, 6, heads=2, dim_head=4, block_size=5, top_k=2, query_block_size=3
    ).double()
    queries, context, mask = hierarchical_inputs(gen)
    prepared = layer.attn.prepare_context(context, context_mask=mask)
    assert torch.equal(layer(queries, prepared), layer(queries, context, context_mask=mask))
    with pytest.raises(ValueError, match="context_mask was given with a PreparedContext"):
        layer(queries, prepared, context_mask=mask)
