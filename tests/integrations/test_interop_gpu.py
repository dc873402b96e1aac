"""Interop on CUDA: the converted layers and the diffusers processor against the originals, in
float32 (to 1e-5) and in half precision (error against float64 at most twice the original's)."""

from __future__ import annotations

import pytest
import torch

import crossattn
from crossattn import CrossAttention
from crossattn.layers import TwoWayTransformer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.interop,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 matmuls in full precision, so that 1e-5 means what it says."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _randomise(module, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale + (p == 1) * 1.0)


def _max_err(got, exact):
    return (got.double().cpu() - exact).abs().max().item()


def _assert_half_within(ours, theirs, exact, what, floor=1e-3):
    """Our error against float64 is at most twice the original's (plus a floor)."""
    err, base = _max_err(ours, exact), _max_err(theirs, exact)
    print(
        f"ERR {what}: ours {err:.3g}, original {base:.3g}, ours vs original "
        f"{(ours.double() - theirs.double()).abs().max().item():.3g}"
    )
    assert err <= 2 * base + floor, f"{what}: error {err:.3g} vs the original's {base:.3g}"


def test_two_way_on_cuda():
    from crossattn.integrations.segment_anything import load_sam_transformer_module

    sam = load_sam_transformer_module()
    original = sam.TwoWayTransformer(depth=2, embedding_dim=64, num_heads=4, mlp_dim=96).eval()
    _randomise(original)
    g = torch.Generator().manual_seed(1)
    image, pe = torch.randn(2, 64, 16, 16, generator=g), torch.randn(2, 64, 16, 16, generator=g)
    points = torch.randn(2, 5, 64, generator=g)
    with torch.no_grad():
        exact = original.double()(image.double(), pe.double(), points.double())
        for dtype in [torch.float32, *HALF]:
            theirs_module = original.to("cuda", dtype)
            ours_module = TwoWayTransformer.from_segment_anything(theirs_module)
            assert ours_module.final_attn_token_to_image.to_q.weight.device.type == "cuda"
            args = [t.to("cuda", dtype) for t in (image, pe, points)]
            theirs, ours = theirs_module(*args), ours_module(*args)
            for o, t, e, name in zip(ours, theirs, exact, ("queries", "keys")):
                # CUDA's float32 kernels round differently from the CPU's; through two blocks of
                # LayerNorms both drift by some 1e-5 from float64, so float32 is held to the same
                # derived bound as half precision, with a float32-sized floor.
                floor = 1e-6 if dtype == torch.float32 else 1e-3
                _assert_half_within(o, t, e, f"two-way {name} {dtype}", floor)


def test_diffusers_processor_on_cuda_unet():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import AttnProcessor2_0

    from crossattn.integrations.diffusers import CrossAttnProcessor

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    ).eval()
    g = torch.Generator().manual_seed(1)
    sample, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 9, 32, generator=g)
    keep = crossattn.lengths_to_key_mask(torch.tensor([9, 4]), 9).float()
    t = torch.tensor([10, 700])

    def run(dtype, processor, device):
        unet.to(device, dtype).set_attn_processor(processor)
        with torch.no_grad():
            return unet(
                sample.to(device, dtype),
                t.to(device),
                encoder_hidden_states=context.to(device, dtype),
                encoder_attention_mask=keep.to(device, dtype),
            ).sample

    exact = run(torch.float64, AttnProcessor2_0(), "cpu").cpu()
    for dtype in [torch.float32, *HALF]:
        theirs = run(dtype, AttnProcessor2_0(), "cuda")
        ours = run(dtype, CrossAttnProcessor(), "cuda")
        if dtype == torch.float32:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        else:
            _assert_half_within(ours, theirs, exact, f"UNet {dtype}")


@pytest.mark.parametrize("qk_norm", [None, "layer_norm", "rms_norm"])
def test_from_diffusers_on_cuda(qk_norm):
    pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import Attention

    attn = Attention(64, cross_attention_dim=48, heads=4, dim_head=16, qk_norm=qk_norm).eval()
    _randomise(attn)
    g = torch.Generator().manual_seed(2)
    hidden, context = torch.randn(2, 33, 64, generator=g), torch.randn(2, 77, 48, generator=g)
    with torch.no_grad():
        exact = attn.double()(hidden.double(), context.double())
        for dtype in [torch.float32, *HALF]:
            attn.to("cuda", dtype)
            layer = CrossAttention.from_diffusers(attn)
            h, c = hidden.to("cuda", dtype), context.to("cuda", dtype)
            theirs, ours = attn(h, c), layer(h, c)
            if dtype == torch.float32:
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
            else:
                _assert_half_within(ours, theirs, exact, f"{qk_norm} {dtype}")


def test_from_transformers_on_cuda():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=32,
        is_decoder=True,
        add_cross_attention=True,
        attn_implementation="eager",
    )
    ca = transformers.BertModel(config).eval().encoder.layer[0].crossattention
    _randomise(ca)
    g = torch.Generator().manual_seed(3)
    hidden, context = torch.randn(2, 11, 64, generator=g), torch.randn(2, 29, 64, generator=g)
    keep = crossattn.lengths_to_key_mask(torch.tensor([29, 5]), 29)

    def theirs(module, h, c):
        bias = (1.0 - keep[:, None, None, :].to(h)) * torch.finfo(h.dtype).min
        return module.output.dense(module.self(h, encoder_hidden_states=c, attention_mask=bias)[0])

    with torch.no_grad():
        exact = theirs(ca.double(), hidden.double(), context.double())
        for dtype in [torch.float32, *HALF]:
            ca.to("cuda", dtype)
            layer = CrossAttention.from_transformers(ca)
            h, c = hidden.to("cuda", dtype), context.to("cuda", dtype)
            got, want = layer(h, c, context_mask=keep.cuda()), theirs(ca, h, c)
            if dtype == torch.float32:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            else:
                _assert_half_within(got, want, exact, f"BERT {dtype}")
