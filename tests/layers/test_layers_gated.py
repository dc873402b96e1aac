"""GatedCrossAttentionBlock (Flamingo) and GatedFusion against explicit float64 computations."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from crossattn import CrossAttention, cross_attention
from crossattn.layers import GatedCrossAttentionBlock, GatedFusion
from crossattn.layers.gated import media_attention_mask
from tests.conftest import tol64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def ref_attention(layer: CrossAttention, queries, context, *, context_mask=None, attn_mask=None):
    b, length, _ = queries.shape
    s = context.shape[1]
    h, d = layer.heads, layer.dim_head
    q = layer.to_q(queries).view(b, length, h, d).transpose(1, 2)
    k = layer.to_k(context).view(b, s, h, d).transpose(1, 2)
    v = layer.to_v(context).view(b, s, h, d).transpose(1, 2)
    mask = None if attn_mask is None else attn_mask[:, None]  # (B, 1, L, S)
    out = cross_attention(q, k, v, key_mask=context_mask, attn_mask=mask, backend="reference")
    return layer.to_out(out.transpose(1, 2).reshape(b, length, h * d))


def loop_media_mask(locations: Tensor, num_media: int, n: int, immediate: bool) -> Tensor:
    """The media-location rule written as a loop over text tokens and media tokens."""
    b, length = locations.shape
    mask = torch.zeros(b, length, num_media * n, dtype=torch.bool)
    for row in range(b):
        seen = 0
        for t in range(length):
            seen += int(locations[row, t])
            for j in range(num_media * n):
                item = j // n  # 0-based media item of media token j
                mask[row, t, j] = (item == seen - 1) if immediate else (item < seen)
    return mask


def explicit_block(block, text, media_flat, mask, media_mask=None):
    if media_mask is not None:
        media_flat = media_flat.masked_fill(~media_mask[..., None], 0.0)
    attended = ref_attention(
        block.attn_text_to_media,
        block.norm_attn(text),
        media_flat,
        context_mask=media_mask,
        attn_mask=mask,
    )
    allowed = torch.ones(*attended.shape[:2], media_flat.shape[1], dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask
    if media_mask is not None:
        allowed = allowed & media_mask[:, None, :]
    attended = torch.where(allowed.any(-1, keepdim=True), attended, torch.zeros_like(attended))
    text = text + block.attn_gate.tanh() * attended
    return text + block.ff_gate.tanh() * block.ff(block.norm_ff(text))


def setup(gen, b=3, length=11, t=3, n=4, dim=10, context_dim=6):
    text = torch.randn(b, length, dim, generator=gen, dtype=torch.float64)
    media = torch.randn(b, t, n, context_dim, generator=gen, dtype=torch.float64)
    locations = torch.zeros(b, length, dtype=torch.bool)
    locations[0, [0, 4, 8]] = True  # three items
    locations[1, [3]] = True  # one item, two of padding; tokens 0-2 see no media
    locations[2, [2, 3]] = True  # two items back to back
    return text, media, locations


def test_identity_at_initialisation(gen):
    text, media, locations = setup(gen)
    block = GatedCrossAttentionBlock(10, 6, heads=2, dim_head=5).double()
    media_mask = torch.rand(3, 12, generator=gen) > 0.3
    poisoned = media.flatten(1, 2).masked_fill(~media_mask[..., None], float("nan"))
    assert torch.equal(block(text, media), text)
    assert torch.equal(
        block(text, poisoned, media_locations=locations, tokens_per_media=4, media_mask=media_mask),
        text,
    )


@pytest.mark.parametrize("immediate", [True, False])
def test_media_location_mask_matches_loop(immediate):
    locations = torch.tensor([[1, 0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    got = media_attention_mask(locations, 3, 2, only_immediate=immediate)
    assert torch.equal(got, loop_media_mask(locations, 3, 2, immediate))


@pytest.mark.parametrize("immediate", [True, False])
def test_block_matches_explicit_reference(gen, immediate):
    torch.manual_seed(0)
    text, media, locations = setup(gen)
    block = GatedCrossAttentionBlock(
        10, 6, heads=2, dim_head=5, only_attend_immediate_media=immediate
    ).double()
    with torch.no_grad():
        block.attn_gate.fill_(0.8)
        block.ff_gate.fill_(-0.5)
    media_mask = torch.rand(3, 12, generator=gen) > 0.25
    media_mask[:, ::4] = True  # every item keeps a valid token
    flat = media.flatten(1, 2).masked_fill(~media_mask[..., None], float("nan"))
    out = block(text, flat, media_locations=locations, tokens_per_media=4, media_mask=media_mask)
    mask = loop_media_mask(locations, 3, 4, immediate)
    ref = explicit_block(block, text, flat, mask, media_mask)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= tol64(ref, 12)
    # 4-D media give the same result as flattened media with tokens_per_media
    out4 = block(text, media, media_locations=locations)
    ref4 = explicit_block(block, text, media.flatten(1, 2), mask)
    assert (out4 - ref4).abs().max().item() <= tol64(ref4, 12)


def test_tokens_before_first_media_pass_through(gen):
    text, media, locations = setup(gen)
    block = GatedCrossAttentionBlock(10, 6, heads=2, dim_head=5).double()
    with torch.no_grad():
        block.attn_gate.fill_(1.0)  # ff gate stays 0: out = text + tanh(1) * attention
    out = block(text, media, media_locations=locations)
    assert torch.equal(out[1, :3], text[1, :3])  # row 1 shows its first item at token 3
    assert not torch.allclose(out[1, 3:], text[1, 3:])


def test_without_locations_every_token_sees_all_media(gen):
    text, media, _ = setup(gen)
    block = GatedCrossAttentionBlock(10, 6, heads=2, dim_head=5).double()
    with torch.no_grad():
        block.attn_gate.fill_(0.3)
    ref = explicit_block(block, text, media.flatten(1, 2), None)
    out = block(text, media)
    assert (out - ref).abs().max().item() <= tol64(ref, 12)


def test_float32_default_backend_within_derived_tolerance(gen):
    text, media, locations = setup(gen)
    block = GatedCrossAttentionBlock(10, 6, heads=2, dim_head=5).double()
    with torch.no_grad():
        block.attn_gate.fill_(0.9)
        block.ff_gate.fill_(0.9)
    mask = loop_media_mask(locations, 3, 4, True)
    ref = explicit_block(block, text, media.flatten(1, 2), mask)
    block32 = block.float()
    with torch.no_grad():
        yardstick = explicit_block(block32, text.float(), media.flatten(1, 2).float(), mask)
        out = block32(text.float(), media.float(), media_locations=locations)
    tol = 3 * (yardstick.double() - ref).abs().max().item() + tol64(ref, 12)
    assert (out.double() - ref).abs().max().item() <= tol


def test_gradients(gen):
    text, media, locations = setup(gen)
    block = GatedCrossAttentionBlock(10, 6, heads=2, dim_head=5).double()
    block(text, media, media_locations=locations).sum().backward()
    # At initialisation only the gates learn (the gated branches are multiplied by tanh(0)).
    assert block.attn_gate.grad.abs().item() > 0 and block.ff_gate.grad.abs().item() > 0
    assert block.attn_text_to_media.to_q.weight.grad.abs().max() == 0
    block.zero_grad()
    with torch.no_grad():
        block.attn_gate.fill_(0.5)
        block.ff_gate.fill_(0.5)
    media = media.requires_grad_()
    block(text, media, media_locations=locations).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert media.grad.abs().sum() > 0


def test_errors(gen):
    text, media, locations = setup(gen)
    block = GatedCrossAttentionBlock(10, 6, heads=2, dim_head=5).double()
    flat = media.flatten(1, 2)
    with pytest.raises(ValueError, match="needs tokens_per_media=n"):
        block(text, flat, media_locations=locations)
    with pytest.raises(ValueError, match=r"M=12, not a multiple of tokens_per_media=5"):
        block(text, flat, media_locations=locations, tokens_per_media=5)
    with pytest.raises(ValueError, match=r"marks 3 media items in a row but media holds T=2"):
        block(text, flat[:, :8], media_locations=locations, tokens_per_media=4)
    with pytest.raises(ValueError, match=r"tokens_per_media=3 contradicts media"):
        block(text, media, media_locations=locations, tokens_per_media=3)
    with pytest.raises(ValueError, match=r"media have B=2 but text has B=3"):
        block(text, media[:2])
    with pytest.raises(ValueError, match=r"media_locations must have shape \(B, L\) = \(3, 11\)"):
        block(text, media, media_locations=locations[:, :5])
    with pytest.raises(ValueError, match=r"text must have shape \(B, L, dim\) with last dim 10"):
        block(text[..., :4], media)
    with pytest.raises(ValueError, match=r"media must have shape \(B, M, context_dim\)"):
        block(text, flat[..., :5])
    with pytest.raises(TypeError, match="media_mask must be a bool tensor"):
        block(text, flat, media_mask=torch.ones(3, 12))


def test_gated_fusion_matches_formula(gen):
    fusion = GatedFusion(5).double()
    features = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    attended = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    assert torch.allclose(fusion(features, attended), 0.5 * (features + attended), atol=1e-15)
    with torch.no_grad():
        fusion.to_gate.weight.normal_(generator=gen)
        fusion.to_gate.bias.normal_(generator=gen)
    w, b = fusion.to_gate.weight, fusion.to_gate.bias
    g = 1 / (1 + torch.exp(-(torch.cat([features, attended], -1) @ w.T + b)))
    ref = g * attended + (1 - g) * features
    assert (fusion(features, attended) - ref).abs().max().item() <= tol64(ref, 10)
    fusion(features, attended).sum().backward()
    assert w.grad.abs().sum() > 0


def test_gated_fusion_bias_init_and_errors():
    fusion = GatedFusion(4, bias_init=-4.0)
    features, attended = torch.zeros(1, 2, 4), torch.ones(1, 2, 4)
    expected = torch.sigmoid(torch.tensor(-4.0))
    assert torch.allclose(fusion(features, attended), expected.expand(1, 2, 4))
    with pytest.raises(ValueError, match=r"features and attended must have one shape"):
        fusion(torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match=r"attended must have shape \(B, L, dim\) with last dim 4"):
        fusion(torch.zeros(1, 2, 4), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
        GatedFusion(0)
