"""diffusers interop: CrossAttention.from_diffusers and CrossAttnProcessor against diffusers."""

from __future__ import annotations

import pytest
import torch

import crossattn
from crossattn import CrossAttention

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
)

from crossattn.integrations.diffusers import CrossAttnProcessor, processors_for  # noqa: E402

pytestmark = pytest.mark.interop


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Random values for every parameter, norm weights and biases included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale + (p == 1) * 1.0)


def _seq(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


CONFIGS = {
    "self": dict(query_dim=40, heads=4, dim_head=8),
    "cross": dict(query_dim=40, cross_attention_dim=24, heads=4, dim_head=8),
    "cross_bias_no_out_bias": dict(
        query_dim=40, cross_attention_dim=24, heads=2, dim_head=16, bias=True, out_bias=False
    ),
    "qk_layer_norm": dict(
        query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, qk_norm="layer_norm", eps=1e-6
    ),
    "qk_layer_norm_no_affine": dict(
        query_dim=32, heads=4, dim_head=8, qk_norm="layer_norm", elementwise_affine=False
    ),
    "qk_fp32_layer_norm": dict(query_dim=32, heads=4, dim_head=8, qk_norm="fp32_layer_norm"),
    "qk_rms_norm": dict(
        query_dim=32, cross_attention_dim=20, heads=2, dim_head=8, qk_norm="rms_norm", eps=1e-4
    ),
    "qk_rms_norm_no_affine": dict(
        query_dim=32, heads=2, dim_head=8, qk_norm="rms_norm", elementwise_affine=False
    ),
    "out_dim": dict(query_dim=24, cross_attention_dim=16, heads=4, dim_head=8, out_dim=48),
}


def _run_diffusers(attn, hidden, context, mask=None):
    return attn(hidden, encoder_hidden_states=context, attention_mask=mask)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_diffusers_matches(name, dtype):
    cfg = CONFIGS[name]
    attn = Attention(**cfg).to(dtype).eval()
    _randomise(attn, seed=len(name))
    layer = CrossAttention.from_diffusers(attn)
    assert next(layer.parameters()).dtype == dtype
    assert not layer.training and CrossAttention.from_diffusers(attn.train()).training
    attn.eval()
    assert (layer.heads, layer.dim_head) == (attn.heads, attn.to_q.out_features // attn.heads)
    hidden = _seq(2, 7, cfg["query_dim"], dtype=dtype, seed=1)
    context = (
        hidden
        if "cross_attention_dim" not in cfg
        else _seq(2, 5, cfg["cross_attention_dim"], dtype=dtype, seed=2)
    )
    with torch.no_grad():
        want = _run_diffusers(attn, hidden, None if context is hidden else context)
        got = layer(hidden, context)
    assert got.shape == want.shape
    # diffusers' fp32_layer_norm and RMSNorm compute their statistics in float32, whatever the
    # dtype: those configs match to float32 precision only
    float32_inside = "fp32" in name or "rms" in name
    tol = 1e-5 if dtype == torch.float32 or float32_inside else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_from_diffusers_encoder_attention_mask(qk_norm):
    attn = Attention(32, cross_attention_dim=16, heads=4, dim_head=8, qk_norm=qk_norm).eval()
    _randomise(attn, seed=3)
    layer = CrossAttention.from_diffusers(attn)
    hidden, context = _seq(3, 6, 32, seed=4), _seq(3, 9, 16, seed=5)
    keep = crossattn.lengths_to_key_mask(torch.tensor([9, 4, 1]), 9)  # (B, S), S=1 row too
    bias = ((1 - keep.float()) * -10000.0)[:, None, :]  # diffusers' (B, 1, S) additive mask
    with torch.no_grad():
        want = _run_diffusers(attn, hidden, context, bias)
        got = layer(hidden, context, context_mask=keep)
        # padding is never read: NaN there changes nothing
        poisoned = context.masked_fill(~keep[..., None], float("nan"))
        got_poisoned = layer(hidden, poisoned, context_mask=keep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_poisoned, got, rtol=0, atol=0)


def test_from_diffusers_kv_heads_matches_explicit_float64():
    attn = Attention(32, cross_attention_dim=16, heads=4, kv_heads=2, dim_head=8).double()
    _randomise(attn, seed=6)
    layer = CrossAttention.from_diffusers(attn)
    assert (layer.heads, layer.kv_heads) == (4, 2)
    hidden, context = _seq(2, 5, 32, dtype=torch.float64), _seq(2, 3, 16, dtype=torch.float64)
    q = attn.to_q(hidden).view(2, 5, 4, 8).transpose(1, 2)
    k = attn.to_k(context).view(2, 3, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.to_v(context).view(2, 3, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    want = attn.to_out[0]((probs @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(layer(hidden, context), want, rtol=1e-12, atol=1e-12)


def test_from_diffusers_rejects_what_it_cannot_express():
    with pytest.raises(TypeError, match=r"from_diffusers expects .*Attention.*lacks \['to_q'"):
        CrossAttention.from_diffusers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"scales scores by 1.0 \(scale_qk=False\?\)"):
        CrossAttention.from_diffusers(Attention(16, heads=2, dim_head=8, scale_qk=False))
    with pytest.raises(
        ValueError, match=r"group norm .*residual_connection=True.*CrossAttnProcessor"
    ):
        CrossAttention.from_diffusers(
            Attention(32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True)
        )
    with pytest.raises(ValueError, match=r"rescale_output_factor=2.0"):
        CrossAttention.from_diffusers(Attention(16, heads=2, dim_head=8, rescale_output_factor=2.0))
    with pytest.raises(
        ValueError, match=r"norm_q normalises over \(16,\), not over one head \(8,\)"
    ):
        CrossAttention.from_diffusers(
            Attention(16, heads=2, kv_heads=2, dim_head=8, qk_norm="layer_norm_across_heads")
        )
    with pytest.raises(ValueError, match=r"norm_q is a LpNorm; only LayerNorm and RMSNorm"):
        CrossAttention.from_diffusers(Attention(16, heads=2, dim_head=8, qk_norm="l2"))


# --- CrossAttnProcessor on standalone modules ----------------------------------------------


def _compare_processors(attn, reference_processor, *args, tol=1e-5, **kwargs):
    with torch.no_grad():
        attn.set_processor(reference_processor)
        want = attn(*args, **kwargs)
        attn.set_processor(CrossAttnProcessor())
        got = attn(*args, **kwargs)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    return got


def test_processor_image_attention_with_group_norm_residual_and_rescale():
    """The layout of a VAE mid-block attention: 4-D input, group norm, residual, rescale."""
    attn = Attention(
        32,
        heads=2,
        dim_head=16,
        norm_num_groups=8,
        residual_connection=True,
        rescale_output_factor=1.7,
        bias=True,
    ).eval()
    _randomise(attn, seed=7)
    image = _seq(2, 32, 3, 5, seed=8)
    out = _compare_processors(attn, AttnProcessor2_0(), image)
    assert out.shape == image.shape


def test_processor_spatial_norm_and_cross_attention_norm():
    attn = Attention(
        32,
        cross_attention_dim=16,
        heads=2,
        dim_head=8,
        spatial_norm_dim=4,
        cross_attention_norm="layer_norm",
    ).eval()
    _randomise(attn, seed=9)
    image, zq = _seq(2, 32, 4, 4, seed=10), _seq(2, 4, 2, 2, seed=11)
    context = _seq(2, 6, 16, seed=12)
    _compare_processors(attn, AttnProcessor2_0(), image, encoder_hidden_states=context, temb=zq)


def test_processor_honours_scale_qk_false_like_attn_processor():
    attn = Attention(16, heads=2, dim_head=8, scale_qk=False).eval()
    _randomise(attn, seed=13, scale=0.1)
    assert isinstance(attn.processor, AttnProcessor)
    hidden = _seq(2, 5, 16, seed=14)
    _compare_processors(attn, AttnProcessor(), hidden)


@pytest.mark.parametrize("qk_norm", ["layer_norm", "rms_norm"])
def test_processor_qk_norm_and_masks(qk_norm):
    attn = Attention(32, cross_attention_dim=16, heads=4, dim_head=8, qk_norm=qk_norm).eval()
    _randomise(attn, seed=15)
    hidden, context = _seq(2, 6, 32, seed=16), _seq(2, 5, 16, seed=17)
    bias = (torch.rand(2, 1, 5, generator=torch.Generator().manual_seed(0)) > 0.4) * -10000.0
    bias[:, :, 0] = 0.0
    _compare_processors(attn, AttnProcessor2_0(), hidden, context, attention_mask=bias)
    keep = bias == 0  # a bool mask, True = keep, in SDPA's convention
    _compare_processors(attn, AttnProcessor2_0(), hidden, context, attention_mask=keep)


def test_processor_rejects_added_kv_projections():
    attn = Attention(16, heads=2, dim_head=8, added_kv_proj_dim=12)
    attn.set_processor(CrossAttnProcessor())
    with pytest.raises(ValueError, match="added key/value projections"):
        attn(_seq(1, 3, 16), encoder_hidden_states=_seq(1, 2, 12))


def test_processor_argument_errors():
    with pytest.raises(TypeError, match="record must be callable"):
        CrossAttnProcessor(record=3)
    with pytest.raises(ValueError, match="record_weights must be True or 'mean'"):
        CrossAttnProcessor(record=print, record_weights=False)
    with pytest.raises(TypeError, match="processors_for expects a diffusers model"):
        processors_for(torch.nn.Linear(2, 2))


# --- CrossAttnProcessor on a tiny UNet -------------------------------------------------------


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    return model


def _unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 7, 32, generator=g)
    return sample, torch.tensor([10, 500]), context


def _unet_out(unet, processor, sample, t, context, **kwargs):
    unet.set_attn_processor(processor)
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=context, **kwargs).sample


@pytest.mark.slow
def test_processor_matches_default_on_tiny_unet(unet):
    sample, t, context = _unet_inputs()
    want = _unet_out(unet, AttnProcessor2_0(), sample, t, context)
    got = _unet_out(unet, CrossAttnProcessor(), sample, t, context)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the conditioning matters: other text gives another output, far beyond the tolerance
    other = _unet_out(unet, CrossAttnProcessor(), sample, t, _unet_inputs(seed=5)[2])
    assert (other - got).abs().max() > 1e-3
    for backend in ("reference", "chunked"):
        pinned = _unet_out(unet, CrossAttnProcessor(backend=backend), sample, t, context)
        torch.testing.assert_close(pinned, want, rtol=1e-5, atol=1e-5)
    unet.set_attn_processor(AttnProcessor2_0())


@pytest.mark.slow
def test_processor_matches_default_on_tiny_unet_with_encoder_mask(unet):
    sample, t, context = _unet_inputs(seed=1)
    keep = crossattn.lengths_to_key_mask(torch.tensor([7, 3]), 7)
    kwargs = dict(encoder_attention_mask=keep.float())
    want = _unet_out(unet, AttnProcessor2_0(), sample, t, context, **kwargs)
    got = _unet_out(unet, CrossAttnProcessor(), sample, t, context, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the mask matters: the padded text no longer reaches the output
    changed = context.clone()
    changed[1, 3:] = 5.0
    got_changed = _unet_out(unet, CrossAttnProcessor(), sample, t, changed, **kwargs)
    torch.testing.assert_close(got_changed, got, rtol=1e-5, atol=1e-5)
    unet.set_attn_processor(AttnProcessor2_0())


@pytest.mark.slow
def test_processor_record_hook_gets_the_weights_of_each_module(unet):
    sample, t, context = _unet_inputs(seed=2)
    records: list[tuple[str, torch.Tensor]] = []
    inputs = {}
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    module = unet.get_submodule(name)
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: inputs.update(hidden=args[0], **kwargs), with_kwargs=True
    )
    unet.set_attn_processor(processors_for(unet, record=lambda n, w: records.append((n, w))))
    try:
        with torch.no_grad():
            unet(sample, t, encoder_hidden_states=context)
    finally:
        handle.remove()
        unet.set_attn_processor(AttnProcessor2_0())
    names = [n for n, _ in records]
    assert set(names) == {k.removesuffix(".processor") for k in unet.attn_processors}
    weights = dict(records)
    # cross-attention maps (B, heads, H*W, 7); self-attention maps (B, heads, H*W, H*W)
    assert weights[name].shape == (2, module.heads, 64, 7)
    attn1 = name.replace("attn2", "attn1")
    assert weights[attn1].shape == (2, module.heads, 64, 64)
    torch.testing.assert_close(weights[name].sum(-1), torch.ones(2, module.heads, 64))
    # the recorded map is the attention of that module on its own inputs
    layer = CrossAttention.from_diffusers(module)
    with torch.no_grad():
        _, want = layer(inputs["hidden"], inputs["encoder_hidden_states"], return_weights=True)
    torch.testing.assert_close(weights[name], want, rtol=1e-5, atol=1e-6)


def test_processor_record_mean_and_float64_exact():
    attn = Attention(16, cross_attention_dim=8, heads=2, dim_head=8).double().eval()
    _randomise(attn, seed=18)
    seen = []
    attn.set_processor(
        CrossAttnProcessor(record=lambda n, w: seen.append((n, w)), record_weights="mean", name="x")
    )
    hidden, context = _seq(1, 3, 16, dtype=torch.float64), _seq(1, 4, 8, dtype=torch.float64)
    out = attn(hidden, encoder_hidden_states=context)
    attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(
        out, attn(hidden, encoder_hidden_states=context), rtol=1e-12, atol=1e-12
    )
    ((name, mean),) = seen
    q = attn.to_q(hidden).view(1, 3, 2, 8).transpose(1, 2)
    k = attn.to_k(context).view(1, 4, 2, 8).transpose(1, 2)
    want = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1).mean(1)
    assert name == "x"
    torch.testing.assert_close(mean, want, rtol=1e-12, atol=1e-12)


def test_processor_gradients_match_default():
    attn = Attention(16, cross_attention_dim=8, heads=2, dim_head=8).double()
    _randomise(attn, seed=19)
    grads = []
    for proc in (AttnProcessor2_0(), CrossAttnProcessor()):
        attn.set_processor(proc)
        context = _seq(2, 4, 8, dtype=torch.float64).requires_grad_(True)
        attn(_seq(2, 3, 16, dtype=torch.float64), encoder_hidden_states=context).pow(
            2
        ).sum().backward()
        grads.append(context.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10)


def test_processor_upcast_in_bfloat16_is_as_accurate_as_the_default():
    """With upcast_attention the kernel runs in float32. Both processors share the bfloat16
    projections, whose rounding dominates the error against float64; ours stays within the
    default processor's error plus one bfloat16 rounding of the output."""
    attn = Attention(32, cross_attention_dim=16, heads=4, dim_head=8, upcast_attention=True)
    _randomise(attn.eval(), seed=20)
    hidden, context = _seq(2, 9, 32, seed=21), _seq(2, 13, 16, seed=22)
    with torch.no_grad():
        exact = attn.double()(hidden.double(), context.double())
        attn.to(torch.bfloat16)
        h, c = hidden.bfloat16(), context.bfloat16()
        default = attn(h, c)
        attn.set_processor(CrossAttnProcessor())
        ours = attn(h, c)
    assert ours.dtype == torch.bfloat16
    err = (ours.double() - exact).abs().max().item()
    base = (default.double() - exact).abs().max().item()
    rounding = torch.finfo(torch.bfloat16).eps * exact.abs().max().item()
    assert 0 < err <= base + rounding, (err, base, rounding)


def test_processor_grouped_kv_heads_match_the_converted_layer():
    """diffusers' default processor cannot run kv_heads < heads; ours groups heads like
    CrossAttention (query head h reads key/value head h // (heads / kv_heads))."""
    attn = Attention(32, cross_attention_dim=16, heads=4, kv_heads=2, dim_head=8).double().eval()
    _randomise(attn, seed=23)
    attn.set_processor(CrossAttnProcessor())
    hidden, context = _seq(2, 5, 32, dtype=torch.float64), _seq(2, 3, 16, dtype=torch.float64)
    keep = torch.tensor([[True, True, True], [True, False, False]])
    bias = ((~keep).double() * -10000.0)[:, None, :]
    with torch.no_grad():
        got = attn(hidden, context, attention_mask=bias)
        want = CrossAttention.from_diffusers(attn)(hidden, context, context_mask=keep)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_processor_checks_context_and_mask_in_the_callers_terms():
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    attn.set_processor(CrossAttnProcessor())
    hidden = _seq(1, 5, 16)
    with pytest.raises(
        ValueError,
        match=r"encoder_hidden_states has 7 features \(shape \(1, 3, 7\)\) but the module's "
        r"to_k expects cross_attention_dim=8",
    ):
        attn(hidden, _seq(1, 3, 7))
    with pytest.raises(
        ValueError, match=r"encoder_hidden_states has batch size 2 \(shape \(2, 3, 8\)\)"
    ):
        attn(hidden, _seq(2, 3, 8))
    with pytest.raises(
        ValueError,
        match=r"encoder_hidden_states must be 3-D \(B, S, cross_attention_dim\), got shape \(3, 8\)",
    ):
        attn(hidden, _seq(3, 8))
    with pytest.raises(ValueError, match=r"hidden_states has 12 features"):
        attn(_seq(1, 5, 12), _seq(1, 3, 8))
    with pytest.raises(
        ValueError, match=r"attention_mask has shape \(1, 4\); expected .* B = 1, L = 5, S = 3"
    ):
        attn(hidden, _seq(1, 3, 8), attention_mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\)"):
        attn(hidden, _seq(1, 3, 8), attention_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2, 3\)"):
        attn(hidden, _seq(1, 3, 8), attention_mask=torch.zeros(1, 2, 3))
    # the shapes the docstring names still run
    assert attn(hidden, _seq(1, 3, 8), attention_mask=torch.zeros(1, 5, 3)).shape == (1, 5, 16)
    assert attn(hidden, _seq(1, 3, 8), attention_mask=torch.ones(1, 3, dtype=torch.bool)).shape == (
        1,
        5,
        16,
    )
