"""transformers interop: CrossAttention.from_transformers against BERT's cross-attention."""

from __future__ import annotations

import pytest
import torch

import crossattn
from crossattn import CrossAttention

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.interop


def _bert(attn_implementation="eager", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=32,
        is_decoder=True,
        add_cross_attention=True,
        attention_probs_dropout_prob=0.1,
        attn_implementation=attn_implementation,
    )
    model = transformers.BertModel(config).to(dtype).eval()
    # BERT's initialisation (std 0.02) makes near-uniform attention; larger weights test more.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.encoder.layer:
            for p in layer.crossattention.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model


def _seq(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _extended(keep: torch.Tensor, dtype) -> torch.Tensor:
    """BERT's additive (B, 1, 1, S) mask from a (B, S) keep mask."""
    return (1.0 - keep[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer_index", [0, 1])
def test_from_transformers_matches_self_then_dense(dtype, layer_index):
    model = _bert(dtype=dtype)
    ca = model.encoder.layer[layer_index].crossattention
    layer = CrossAttention.from_transformers(ca).eval()
    assert (layer.heads, layer.dim_head, layer.dropout) == (4, 8, 0.1)
    assert next(layer.parameters()).dtype == dtype
    hidden, context = _seq(3, 5, 32, dtype=dtype, seed=2), _seq(3, 9, 32, dtype=dtype, seed=3)
    keep = crossattn.lengths_to_key_mask(torch.tensor([9, 4, 1]), 9)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        for mask in (None, keep):
            attn_mask = None if mask is None else _extended(mask, dtype)
            attended, _ = ca.self(hidden, encoder_hidden_states=context, attention_mask=attn_mask)
            want = ca.output.dense(attended)
            got = layer(hidden, context, context_mask=mask)
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # the residual and LayerNorm of BertSelfOutput are not part of the layer
    with torch.no_grad():
        full = ca(hidden, encoder_hidden_states=context)[0]
        torch.testing.assert_close(
            ca.output.LayerNorm(layer(hidden, context) + hidden), full, rtol=tol, atol=tol
        )


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_from_transformers_inside_the_decoder_with_encoder_mask(attn_implementation):
    """Run the whole decoder with encoder_attention_mask; compare at the cross-attention."""
    model = _bert(attn_implementation)
    ca = model.encoder.layer[1].crossattention
    seen = {}
    hooks = [
        ca.register_forward_pre_hook(
            lambda m, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True
        ),
        ca.output.dense.register_forward_hook(lambda m, args, out: seen.update(dense=out)),
    ]
    context = _seq(2, 6, 32, seed=4)
    keep = crossattn.lengths_to_key_mask(torch.tensor([6, 2]), 6)
    try:
        with torch.no_grad():
            model(
                input_ids=torch.tensor([[1, 5, 7, 9], [3, 4, 2, 8]]),
                encoder_hidden_states=context,
                encoder_attention_mask=keep.long(),
            )
    finally:
        for h in hooks:
            h.remove()
    args, kwargs = seen["args"], seen["kwargs"]
    # BertLayer calls crossattention(hidden, None, encoder_hidden_states, encoder_attention_mask)
    passed = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
    assert passed is context
    layer = CrossAttention.from_transformers(ca).eval()
    with torch.no_grad():
        got = layer(args[0], context, context_mask=keep)
    torch.testing.assert_close(got, seen["dense"], rtol=1e-5, atol=1e-5)


def test_from_transformers_accepts_the_bare_attention():
    model = _bert(dtype=torch.float64)
    core = model.encoder.layer[0].crossattention.self
    layer = CrossAttention.from_transformers(core)
    hidden, context = _seq(2, 3, 32, dtype=torch.float64), _seq(2, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        want, _ = core(hidden, encoder_hidden_states=context)
        got = layer(hidden, context)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_from_transformers_gradients_match():
    model = _bert(dtype=torch.float64)
    ca = model.encoder.layer[0].crossattention
    layer = CrossAttention.from_transformers(ca).eval()
    grads = []
    for run in (
        lambda h, c: ca.output.dense(ca.self(h, encoder_hidden_states=c)[0]),
        lambda h, c: layer(h, c),
    ):
        hidden = _seq(2, 3, 32, dtype=torch.float64).requires_grad_(True)
        context = _seq(2, 4, 32, dtype=torch.float64, seed=1).requires_grad_(True)
        run(hidden, context).sin().sum().backward()
        grads.append((hidden.grad, context.grad))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_from_transformers_errors():
    with pytest.raises(TypeError, match=r"from_transformers expects a BERT attention.*got Linear"):
        CrossAttention.from_transformers(torch.nn.Linear(2, 2))
    model = _bert()
    ca = model.encoder.layer[0].crossattention
    ca.self.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match=r"position_embedding_type='relative_key'"):
        CrossAttention.from_transformers(ca)
    ca.self.position_embedding_type = "absolute"
    ca.self.num_attention_heads = 3
    with pytest.raises(ValueError, match=r"query has 32 output features, expected .* 3 \* 8"):
        CrossAttention.from_transformers(ca)
    ca.self.num_attention_heads = 4
    del ca.output.dense
    with pytest.raises(TypeError, match="output has no dense nn.Linear"):
        CrossAttention.from_transformers(ca)
