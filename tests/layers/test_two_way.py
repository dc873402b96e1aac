"""TwoWayTransformer: against Segment Anything's module and an explicit float64 computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crossattn
from crossattn.layers import CrossAttention, TwoWayAttentionBlock, TwoWayTransformer


@pytest.fixture(scope="module")
def sam():
    from crossattn.integrations.segment_anything import load_sam_transformer_module

    try:
        return load_sam_transformer_module()
    except ImportError as err:  # pragma: no cover - the dev extras install it
        pytest.skip(str(err))


def _inputs(b=2, c=32, h=5, w=7, n=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    pe = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    points = torch.randn(b, n, c, generator=g, dtype=dtype)
    return image, pe, points


def _randomise(module: nn.Module, seed: int = 1) -> None:
    """Random LayerNorm affines too, so that a weight copied to the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


# --- an explicit computation, written from the Segment Anything recipe -------------------------


def _attend(attn: CrossAttention, q_in, k_in, v_in, key_mask=None):
    """One attention with explicit projections, the kernel being the float64 reference op."""
    b, length, _ = q_in.shape
    s = k_in.shape[1]
    h, d = attn.heads, attn.dim_head
    q = F.linear(q_in, attn.to_q.weight, attn.to_q.bias).view(b, length, h, d).transpose(1, 2)
    k = F.linear(k_in, attn.to_k.weight, attn.to_k.bias).view(b, s, h, d).transpose(1, 2)
    v = F.linear(v_in, attn.to_v.weight, attn.to_v.bias).view(b, s, h, d).transpose(1, 2)
    out = crossattn.cross_attention(q, k, v, key_mask=key_mask, backend="reference")
    out = out.transpose(1, 2).reshape(b, length, h * d)
    return F.linear(out, attn.to_out.weight, attn.to_out.bias)


def _explicit(t: TwoWayTransformer, image, pe, points, point_mask=None):
    keys = image.flatten(2).transpose(1, 2)
    key_pe = pe.flatten(2).transpose(1, 2).expand_as(keys)
    queries = points
    for blk in t.layers:
        if blk.skip_first_layer_pe:
            queries = _attend(blk.self_attn, queries, queries, queries, point_mask)
        else:
            q = queries + points
            queries = queries + _attend(blk.self_attn, q, q, queries, point_mask)
        queries = blk.norm1(queries)
        queries = blk.norm2(
            queries + _attend(blk.cross_attn_token_to_image, queries + points, keys + key_pe, keys)
        )
        queries = blk.norm3(queries + blk.mlp.linear_out(blk.mlp.act(blk.mlp.linear_in(queries))))
        attn_out = _attend(
            blk.cross_attn_image_to_token, keys + key_pe, queries + points, queries, point_mask
        )
        keys = blk.norm4(keys + attn_out)
    attn_out = _attend(t.final_attn_token_to_image, queries + points, keys + key_pe, keys)
    return t.norm_final_attn(queries + attn_out), keys


@pytest.mark.parametrize("rate", [1, 2, 4])
def test_two_way_matches_explicit_float64(rate):
    torch.manual_seed(0)
    t = TwoWayTransformer(2, 32, 4, 48, attention_downsample_rate=rate).double()
    _randomise(t)
    image, pe, points = _inputs(dtype=torch.float64)
    got_q, got_k = t(image, pe, points)
    want_q, want_k = _explicit(t, image, pe, points)
    assert got_q.shape == (2, 3, 32) and got_k.shape == (2, 35, 32)
    torch.testing.assert_close(got_q, want_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_k, want_k, rtol=1e-12, atol=1e-12)


def test_two_way_attention_sizes_follow_downsample_rate():
    t = TwoWayTransformer(1, 64, 4, 32, attention_downsample_rate=4)
    blk = t.layers[0]
    assert blk.skip_first_layer_pe
    assert blk.self_attn.heads * blk.self_attn.dim_head == 64
    for attn in (
        blk.cross_attn_token_to_image,
        blk.cross_attn_image_to_token,
        t.final_attn_token_to_image,
    ):
        assert (attn.heads, attn.dim_head) == (4, 4)
        assert attn.to_q.bias is not None and attn.to_out.bias is not None
    assert not TwoWayTransformer(2, 64, 4, 32).layers[1].skip_first_layer_pe


@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_two_way_backends_agree_with_reference(backend):
    torch.manual_seed(0)
    t64 = TwoWayTransformer(2, 32, 4, 48, backend="reference").double()
    _randomise(t64)
    image, pe, points = _inputs(dtype=torch.float64, h=9, w=11, n=1)
    want_q, want_k = t64(image, pe, points)
    t32 = TwoWayTransformer(2, 32, 4, 48, backend=backend)
    t32.load_state_dict(t64.state_dict())
    ref32 = TwoWayTransformer(2, 32, 4, 48, backend="reference")
    ref32.load_state_dict(t64.state_dict())
    args32 = (image.float(), pe.float(), points.float())
    got_q, got_k = t32(*args32)
    base_q, base_k = ref32(*args32)
    # The backend's float32 error is within a small multiple of the reference op's own
    # float32 error (plus a floor at float32 resolution).
    for got, base, want in ((got_q, base_q, want_q), (got_k, base_k, want_k)):
        err = (got.double() - want).abs().max().item()
        base_err = (base.double() - want).abs().max().item()
        assert err <= 4 * base_err + 1e-5, (err, base_err)


def test_two_way_image_pe_broadcasts_over_batch():
    torch.manual_seed(0)
    t = TwoWayTransformer(1, 16, 2, 32).double()
    image, pe, points = _inputs(c=16, dtype=torch.float64)
    pe1 = pe[:1]
    got = t(image, pe1, points)
    want = t(image, pe1.expand_as(image), points)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


def test_two_way_point_mask_ignores_nan_padding():
    torch.manual_seed(0)
    t = TwoWayTransformer(2, 16, 2, 32).double()
    _randomise(t)
    image, pe, points = _inputs(c=16, n=5, dtype=torch.float64)
    lengths = torch.tensor([5, 2])
    mask = crossattn.lengths_to_key_mask(lengths, 5)
    poisoned = points.masked_fill(~mask[..., None], float("nan"))
    got_q, got_k = t(image, pe, poisoned, point_mask=mask)
    for row, n in enumerate(lengths.tolist()):
        want_q, want_k = t(image[row : row + 1], pe[row : row + 1], points[row : row + 1, :n])
        torch.testing.assert_close(got_q[row : row + 1, :n], want_q, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_k[row : row + 1], want_k, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(got_k).all()
    # and the mask is equivalent to the explicit masked computation
    want_q, want_k = _explicit(t, image, pe, points, mask)
    clean_q, clean_k = t(image, pe, points, point_mask=mask)
    torch.testing.assert_close(clean_k, want_k, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clean_q[mask], want_q[mask], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_q[mask], want_q[mask], rtol=1e-12, atol=1e-12)


def test_two_way_depth_zero_is_final_attention_only():
    t = TwoWayTransformer(0, 16, 2, 32).double()
    image, pe, points = _inputs(c=16, dtype=torch.float64)
    q, k = t(image, pe, points)
    want_q, want_k = _explicit(t, image, pe, points)
    torch.testing.assert_close(q, want_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k, image.flatten(2).transpose(1, 2), rtol=0, atol=0)


def test_block_alone_matches_explicit():
    torch.manual_seed(0)
    blk = TwoWayAttentionBlock(16, 2, 24, attention_downsample_rate=2).double()
    _randomise(blk)
    g = torch.Generator().manual_seed(3)
    queries, qpe = (torch.randn(2, 4, 16, generator=g, dtype=torch.float64) for _ in range(2))
    keys, kpe = (torch.randn(2, 6, 16, generator=g, dtype=torch.float64) for _ in range(2))
    q_out, k_out = blk(queries, keys, qpe, kpe)
    q = queries + qpe
    want_q = blk.norm1(queries + _attend(blk.self_attn, q, q, queries))
    want_q = blk.norm2(
        want_q + _attend(blk.cross_attn_token_to_image, want_q + qpe, keys + kpe, keys)
    )
    want_q = blk.norm3(want_q + blk.mlp(want_q))
    want_k = blk.norm4(
        keys + _attend(blk.cross_attn_image_to_token, keys + kpe, want_q + qpe, want_q)
    )
    torch.testing.assert_close(q_out, want_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k_out, want_k, rtol=1e-12, atol=1e-12)


# --- against Segment Anything ----------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize(
    ("depth", "dim", "heads", "mlp", "rate", "act"),
    [(2, 32, 4, 64, 2, nn.ReLU), (3, 48, 3, 40, 1, nn.GELU), (1, 64, 2, 16, 4, nn.ReLU)],
)
def test_from_segment_anything_matches(sam, depth, dim, heads, mlp, rate, act):
    torch.manual_seed(0)
    original = sam.TwoWayTransformer(
        depth=depth,
        embedding_dim=dim,
        num_heads=heads,
        mlp_dim=mlp,
        activation=act,
        attention_downsample_rate=rate,
    ).eval()
    _randomise(original, seed=depth)
    layer = TwoWayTransformer.from_segment_anything(original).eval()
    assert layer.attention_downsample_rate == rate and len(layer.layers) == depth
    image, pe, points = _inputs(b=2, c=dim, h=6, w=5, n=4)
    with torch.no_grad():
        want_q, want_k = original(image, pe, points)
        got_q, got_k = layer(image, pe, points)
    torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-5)
    # float64: equal to rounding
    original64, layer64 = (
        original.double(),
        TwoWayTransformer.from_segment_anything(original.double()),
    )
    args = tuple(t.double() for t in (image, pe, points))
    for got, want in zip(layer64(*args), original64(*args)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.interop
def test_from_segment_anything_gradients_match(sam):
    torch.manual_seed(0)
    original = sam.TwoWayTransformer(depth=2, embedding_dim=16, num_heads=2, mlp_dim=32).double()
    _randomise(original)
    layer = TwoWayTransformer.from_segment_anything(original)
    image, pe, points = _inputs(c=16, dtype=torch.float64)
    grads = []
    for model in (original, layer):
        pts = points.clone().requires_grad_(True)
        q, k = model(image, pe, pts)
        (q.square().sum() + k.sin().sum()).backward()
        grads.append(pts.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10)


@pytest.mark.interop
def test_from_segment_anything_keeps_dtype_and_eps(sam):
    original = sam.TwoWayTransformer(depth=1, embedding_dim=16, num_heads=2, mlp_dim=32).double()
    original.layers[0].norm2.eps = 1e-3
    layer = TwoWayTransformer.from_segment_anything(original)
    assert layer.layers[0].norm2.eps == 1e-3
    assert all(p.dtype == torch.float64 for p in layer.parameters())


@pytest.mark.interop
def test_from_segment_anything_rejects_other_modules(sam):
    with pytest.raises(TypeError, match=r"lacks \['layers'"):
        TwoWayTransformer.from_segment_anything(nn.Linear(2, 2))
    original = sam.TwoWayTransformer(depth=1, embedding_dim=16, num_heads=2, mlp_dim=32)
    del original.layers[0].norm3
    with pytest.raises(TypeError, match=r"layers\[0\].*lacks \['norm3'\]"):
        TwoWayTransformer.from_segment_anything(original)


@pytest.mark.interop
def test_from_segment_anything_duck_types_any_copy(sam):
    """A module of another class with the same layout (a copy loaded another way) converts."""

    class Copy(nn.Module):
        pass

    original = sam.TwoWayTransformer(depth=1, embedding_dim=16, num_heads=2, mlp_dim=32)
    twin = Copy()
    twin.layers, twin.final_attn_token_to_image = (
        original.layers,
        original.final_attn_token_to_image,
    )
    twin.norm_final_attn, twin.embedding_dim, twin.num_heads = original.norm_final_attn, 16, 2
    layer = TwoWayTransformer.from_segment_anything(twin)
    image, pe, points = _inputs(c=16)
    with torch.no_grad():
        torch.testing.assert_close(layer(image, pe, points), original(image, pe, points))


# --- errors ----------------------------------------------------------------------------------


def test_two_way_errors_name_argument_and_shapes():
    t = TwoWayTransformer(1, 16, 2, 32)
    image, pe, points = _inputs(c=16, h=3, w=4)
    with pytest.raises(
        ValueError,
        match=r"image_embedding must have shape \(B, C, H, W\) with C = embedding_dim = 16, got \(2, 8, 3, 4\)",
    ):
        t(image[:, :8], pe, points)
    with pytest.raises(ValueError, match=r"image_embedding .* got \(2, 16, 12\)"):
        t(image.flatten(2), pe, points)
    with pytest.raises(
        ValueError,
        match=r"image_pe must have shape \(B, C, H, W\) = \(2, 16, 3, 4\) or \(1, 16, 3, 4\), got \(2, 16, 4, 3\)",
    ):
        t(image, pe.transpose(2, 3), points)
    with pytest.raises(
        ValueError,
        match=r"point_embedding must have shape \(B, N, C\) = \(2, N, 16\), got \(1, 3, 16\)",
    ):
        t(image, pe, points[:1])
    with pytest.raises(TypeError, match="point_embedding must be a torch.Tensor"):
        t(image, pe, points.tolist())
    with pytest.raises(TypeError, match="point_mask must be a bool tensor"):
        t(image, pe, points, point_mask=torch.ones(2, 3))
    with pytest.raises(
        ValueError, match=r"point_mask must have shape \(B, N\) = \(2, 3\), got \(2, 4\)"
    ):
        t(image, pe, points, point_mask=torch.ones(2, 4, dtype=torch.bool))


def test_two_way_constructor_errors():
    with pytest.raises(
        ValueError,
        match=r"embedding_dim // attention_downsample_rate = 32 // 8 = 4 must be a positive multiple of num_heads=8",
    ):
        TwoWayTransformer(1, 32, 8, 64, attention_downsample_rate=8)
    with pytest.raises(ValueError, match="num_heads=3 must divide embedding_dim=32"):
        TwoWayTransformer(1, 32, 3, 64)
    with pytest.raises(ValueError, match="depth must be a non-negative int, got -1"):
        TwoWayTransformer(-1, 32, 4, 64)
    with pytest.raises(ValueError, match="attention_downsample_rate must be a positive int, got 0"):
        TwoWayTransformer(1, 32, 4, 64, attention_downsample_rate=0)
    with pytest.raises(ValueError, match="mlp_dim must be a positive int"):
        TwoWayAttentionBlock(32, 4, 0)


def test_reexported():
    import crossattn.layers as layers

    assert layers.TwoWayTransformer is TwoWayTransformer
    assert layers.TwoWayAttentionBlock is TwoWayAttentionBlock


def test_block_shares_positional_encodings_given_without_a_batch_dimension():
    torch.manual_seed(1)
    block = TwoWayAttentionBlock(16, 2, 32).double()
    queries, keys = (
        torch.randn(3, 5, 16, dtype=torch.float64),
        torch.randn(3, 7, 16, dtype=torch.float64),
    )
    query_pe, key_pe = (
        torch.randn(5, 16, dtype=torch.float64),
        torch.randn(7, 16, dtype=torch.float64),
    )
    got = block(queries, keys, query_pe, key_pe)
    want = block(queries, keys, query_pe.expand(3, 5, 16), key_pe.expand(3, 7, 16))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
