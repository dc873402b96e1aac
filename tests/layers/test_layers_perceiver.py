"""PerceiverEncoder, PerceiverDecoder, PerceiverIO against an explicit float64 computation.

The explicit path re-does every attention from the layers' weights through the reference op
(`cross_attention(..., backend="reference")`) on the whole, unchunked input; the layers under
test project the input in chunks and run their default backends.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

import crossattn
from crossattn import CrossAttention, cross_attention
from crossattn.backends import get_backend
from crossattn.layers import PerceiverDecoder, PerceiverEncoder, PerceiverIO
from tests.conftest import tol64


def ref_attention(
    layer: CrossAttention,
    queries: Tensor,
    context: Tensor,
    *,
    context_mask: Tensor | None = None,
) -> Tensor:
    """`layer`'s attention written out: its projections, the reference op, its output."""
    b, length, _ = queries.shape
    s = context.shape[1]
    h, d = layer.heads, layer.dim_head
    q = layer.to_q(queries).view(b, length, h, d).transpose(1, 2)
    k = layer.to_k(context).view(b, s, h, d).transpose(1, 2)
    v = layer.to_v(context).view(b, s, h, d).transpose(1, 2)
    out = cross_attention(q, k, v, key_mask=context_mask, backend="reference")
    return layer.to_out(out.transpose(1, 2).reshape(b, length, h * d))


def explicit_encoder(enc: PerceiverEncoder, inputs: Tensor, mask: Tensor | None) -> Tensor:
    b = inputs.shape[0]
    if mask is not None:
        inputs = torch.where(mask[..., None], inputs, torch.zeros_like(inputs))
    latents = enc.latents.expand(b, -1, -1)
    for index in enc.stage_schedule():
        stage = enc.stages[index]
        cross = stage["cross"]
        latents = latents + ref_attention(
            cross.attn_latents_to_inputs,
            cross.norm_latents(latents),
            cross.norm_inputs(inputs),
            context_mask=mask,
        )
        latents = latents + cross.ff(cross.norm_ff(latents))
        for block in stage["blocks"]:
            normed = block.norm_attn(latents)
            latents = latents + ref_attention(block.attn_latents_to_latents, normed, normed)
            latents = latents + block.ff(block.norm_ff(latents))
    return latents


def make_encoder(**kw) -> PerceiverEncoder:
    options = dict(
        num_latents=5,
        latent_dim=12,
        heads=3,
        dim_head=4,
        depth=2,
        cross_heads=2,
        cross_dim_head=6,
        input_chunk_size=8,
    )
    options.update(kw)
    return PerceiverEncoder(10, **options).double()


def poisoned_inputs(gen: torch.Generator, b: int = 3, s: int = 37, dim: int = 10):
    inputs = torch.randn(b, s, dim, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, s, generator=gen) > 0.35
    mask[0, :] = True
    mask[1, 20:] = False
    inputs = inputs.masked_fill(~mask[..., None], float("nan"))
    return inputs, mask


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


@pytest.mark.parametrize(
    "num_cross_attends,share_weights,stages",
    [(1, False, 1), (3, False, 3), (3, True, 2), (1, True, 1)],
)
def test_encoder_matches_explicit_reference(gen, num_cross_attends, share_weights, stages):
    torch.manual_seed(0)
    enc = make_encoder(num_cross_attends=num_cross_attends, share_weights=share_weights)
    assert len(enc.stages) == stages
    inputs, mask = poisoned_inputs(gen)  # S = 37: chunks of 8 with a remainder of 5
    out = enc(inputs, mask)
    ref = explicit_encoder(enc, inputs, mask)
    assert out.shape == (3, 5, 12)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= tol64(ref, 37)


@pytest.mark.parametrize("backend", ["reference", "sdpa", None])
def test_encoder_other_backends_and_no_mask(gen, backend):
    torch.manual_seed(1)
    enc = make_encoder(input_backend=backend, backend=backend, depth=1)
    inputs = torch.randn(2, 19, 10, generator=gen, dtype=torch.float64)
    ref = explicit_encoder(enc, inputs, None)
    out = enc(inputs)
    assert (out - ref).abs().max().item() <= tol64(ref, 19)


def test_chunked_projection_equals_whole_projection(gen):
    torch.manual_seed(2)
    enc = make_encoder(input_chunk_size=4)
    whole = copy.deepcopy(enc)
    whole.input_chunk_size = 1000
    inputs, mask = poisoned_inputs(gen, s=23)
    prepared = enc.stages[0]["cross"].prepare(inputs.nan_to_num(), mask, 4)
    prepared_whole = whole.stages[0]["cross"].prepare(inputs.nan_to_num(), mask, 1000)
    assert prepared.key.shape == (3, 2, 23, 6) and prepared.key.is_contiguous()
    assert torch.equal(prepared.key, prepared_whole.key)
    assert torch.equal(prepared.value, prepared_whole.value)
    assert (enc(inputs, mask) - whole(inputs, mask)).abs().max().item() <= tol64(
        whole(inputs, mask), 23
    )


def test_float32_auto_backend_within_derived_tolerance(gen):
    torch.manual_seed(3)
    enc64 = make_encoder(input_chunk_size=16)
    enc32 = copy.deepcopy(enc64).float()
    inputs, mask = poisoned_inputs(gen, s=50)
    ref = explicit_encoder(enc64, inputs, mask)
    with torch.no_grad():
        yardstick = explicit_encoder(enc32, inputs.float(), mask)  # plain math in float32
        out = enc32(inputs.float(), mask)
    tol = 3 * (yardstick.double() - ref).abs().max().item() + tol64(ref, 50)
    assert (out.double() - ref).abs().max().item() <= tol


def test_padding_never_leaks_and_fully_padded_row_is_finite(gen):
    torch.manual_seed(4)
    enc = make_encoder()
    inputs, mask = poisoned_inputs(gen)
    mask[2] = False
    out = enc(inputs, mask)
    assert torch.isfinite(out).all()
    other = inputs.masked_fill(~mask[..., None], 1e6)
    assert torch.allclose(enc(other, mask), out, rtol=0, atol=tol64(out, 37))
    ref = explicit_encoder(enc, inputs, mask)
    assert (out - ref).abs().max().item() <= tol64(ref, 37)


def test_shared_weights_project_inputs_once_per_distinct_stage(gen, monkeypatch):
    enc = make_encoder(num_cross_attends=4, share_weights=True)
    assert enc.stage_schedule() == [0, 1, 1, 1]
    calls = []
    for index, stage in enumerate(enc.stages):
        original = stage["cross"].prepare

        def counting(*args, _original=original, _index=index, **kw):
            calls.append(_index)
            return _original(*args, **kw)

        monkeypatch.setattr(stage["cross"], "prepare", counting)
    enc(torch.randn(1, 9, 10, generator=gen, dtype=torch.float64))
    assert calls == [0, 1]


def test_depth_zero_and_single_token_input(gen):
    enc = make_encoder(depth=0)
    assert all(len(stage["blocks"]) == 0 for stage in enc.stages)
    inputs = torch.randn(2, 1, 10, generator=gen, dtype=torch.float64)
    ref = explicit_encoder(enc, inputs, None)
    assert (enc(inputs) - ref).abs().max().item() <= tol64(ref, 1)


def test_encoder_gradients_reach_every_parameter(gen):
    enc = make_encoder(num_cross_attends=2, input_chunk_size=5)
    inputs, mask = poisoned_inputs(gen, s=17)
    inputs = inputs.nan_to_num().requires_grad_()
    enc(inputs, mask).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(inputs.grad).all()
    assert inputs.grad[~mask].abs().max() == 0  # padded tokens do not influence the output


def test_encoder_gradients_match_explicit(gen):
    enc = make_encoder(depth=1, input_chunk_size=6)
    inputs = torch.randn(2, 15, 10, generator=gen, dtype=torch.float64)
    enc(inputs).sum().backward()
    got = {n: p.grad.clone() for n, p in enc.named_parameters()}
    enc.zero_grad()
    explicit_encoder(enc, inputs, None).sum().backward()
    for name, p in enc.named_parameters():
        assert (got[name] - p.grad).abs().max().item() <= tol64(p.grad, 15), name


def test_decoder_matches_explicit(gen):
    torch.manual_seed(5)
    dec = PerceiverDecoder(7, 12, heads=2, dim_head=3, out_dim=4).double()
    queries = torch.randn(9, 7, generator=gen, dtype=torch.float64)  # (O, query_dim), shared
    latents = torch.randn(2, 5, 12, generator=gen, dtype=torch.float64)
    latent_mask = torch.tensor([[True] * 5, [True, False, True, False, False]])
    latents = latents.masked_fill(~latent_mask[..., None], float("nan"))
    out = dec(queries, latents, latent_mask)
    q = queries.expand(2, -1, -1)
    x = q + ref_attention(
        dec.attn_queries_to_latents,
        dec.norm_queries(q),
        dec.norm_latents(latents.nan_to_num()),
        context_mask=latent_mask,
    )
    ref = dec.to_out(x + dec.ff(dec.norm_ff(x)))
    assert out.shape == (2, 9, 4)
    assert (out - ref).abs().max().item() <= tol64(ref, 12)


def test_perceiver_io_learned_and_given_queries(gen):
    torch.manual_seed(6)
    io = PerceiverIO(
        10, num_latents=4, latent_dim=8, heads=2, dim_head=4, depth=1, query_dim=6,
        num_outputs=3, out_dim=2, input_chunk_size=8, cross_dim_head=4,
    ).double()  # fmt: skip
    inputs, mask = poisoned_inputs(gen, s=21)
    out = io(inputs, input_mask=mask)
    latents = explicit_encoder(io.encoder, inputs, mask)
    assert out.shape == (3, 3, 2)
    assert torch.allclose(out, io.decoder(io.output_queries, latents), rtol=0, atol=1e-12)
    given = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    out_given = io(inputs, given, input_mask=mask)
    assert out_given.shape == (3, 5, 2)
    assert torch.allclose(out_given, io.decoder(given, latents), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("input_backend", "outer", "want_cross"),
    [("auto", None, "chunked"), ("auto", "reference", "chunked"), (None, "reference", "reference"),
     ("reference", "sdpa", "reference")],
)  # fmt: skip
def test_input_backend_picks_the_cross_attention_backend(
    gen, monkeypatch, input_backend, outer, want_cross
):
    """The latents-to-inputs calls (S = input length) run on the backend input_backend says;
    the latent self-attention (S = num_latents) follows the outer default."""
    calls: list[tuple[str, int]] = []
    for name in crossattn.available_backends():
        backend = get_backend(name)

        def spy(inputs, _name=name, _forward=backend.forward):
            calls.append((_name, inputs.kv_len))
            return _forward(inputs)

        monkeypatch.setattr(backend, "forward", spy)
    enc = make_encoder(input_backend=input_backend)
    inputs, mask = poisoned_inputs(gen)
    with crossattn.use_backend(outer):
        enc(inputs, mask)
    cross = {name for name, s in calls if s == inputs.shape[1]}
    latent = {name for name, s in calls if s == enc.num_latents}
    assert cross == {want_cross}
    assert latent, "the latent self-attention ran"
    if outer is not None:
        assert latent == {outer}


def test_errors():
    enc = make_encoder()
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, S, input_dim\) with last dim 10, got \(2, 5, 9\)"):  # fmt: skip
        enc(torch.zeros(2, 5, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input_mask must have shape \(B, S\) = \(2, 5\), got \(2, 4\)"):  # fmt: skip
        enc(torch.zeros(2, 5, 10, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="input_mask must be a bool tensor"):
        enc(torch.zeros(2, 5, 10, dtype=torch.float64), torch.ones(2, 5))
    with pytest.raises(TypeError, match="inputs must be a floating-point tensor"):
        enc(torch.zeros(2, 5, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="depth must be a non-negative int, got -1"):
        PerceiverEncoder(4, num_latents=2, latent_dim=4, heads=1, dim_head=4, depth=-1)
    with pytest.raises(ValueError, match="num_latents must be a positive int, got 0"):
        PerceiverEncoder(4, num_latents=0, latent_dim=4, heads=1, dim_head=4, depth=1)
    dec = PerceiverDecoder(6, 8)
    with pytest.raises(ValueError, match=r"queries have B=3 but latents have B=2"):
        dec(torch.zeros(3, 4, 6), torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, N, latent_dim\)"):
        dec(torch.zeros(4, 6), torch.zeros(2, 5, 7))
    io = PerceiverIO(4, num_latents=2, latent_dim=4, heads=1, dim_head=4, depth=0, query_dim=3)
    with pytest.raises(ValueError, match="queries=None needs learned output queries"):
        io(torch.zeros(1, 3, 4))
