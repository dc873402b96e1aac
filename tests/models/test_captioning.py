"""The captioning model: shapes, causal masking, recorded cross-attention, argument errors."""

from __future__ import annotations

import pytest
import torch

from crossattn.capture import AttentionRecorder
from crossattn.models.captioning import CaptionConfig, CaptionModel


def _model(**kw) -> CaptionModel:
    torch.manual_seed(0)
    config = CaptionConfig(13, image_size=24, grid=3, d_model=16, heads=2, dim_ff=24, **kw)
    return CaptionModel(config).eval()


def test_shapes_and_maps():
    model = _model(decoder_layers=3)
    images, tokens = torch.rand(2, 3, 24, 24), torch.randint(0, 13, (2, 5))
    out = model(images, tokens, return_maps=True)
    assert out.logits.shape == (2, 5, 13)
    assert len(out.maps) == 3
    for m in out.maps:
        assert m.shape == (2, 2, 5, 9)  # (B, heads, T, P)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 2, 5))
    assert model(images, tokens).maps is None


def test_causal_changing_word_t_leaves_earlier_logits():
    model = _model()
    images, tokens = torch.rand(3, 3, 24, 24), torch.randint(3, 13, (3, 7))
    before = model(images, tokens).logits
    t = 4
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] - 3 + 1) % 10 + 3  # a different word at t
    after = model(images, changed).logits
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert (after[:, t:] - before[:, t:]).abs().max() > 1e-4  # the change is seen from t on


def test_recorder_records_the_decoder_cross_attention():
    model = _model()
    images, tokens = torch.rand(2, 3, 24, 24), torch.randint(0, 13, (2, 4))
    with AttentionRecorder(model, heads="all") as rec:
        out = model(images, tokens, return_maps=True)
    names = sorted(n for n in rec.maps if n.startswith("layers."))
    assert names == ["layers.0.cross_attn_target_to_source", "layers.1.cross_attn_target_to_source"]
    for k, name in enumerate(names):
        torch.testing.assert_close(rec.maps[name][0].float(), out.maps[k], rtol=1e-5, atol=1e-6)


def test_greedy_caption_stops_at_eos_and_pads():
    from crossattn.models.captioning import CaptionOutput

    model = _model()
    c = model.config
    script = {0: [c.eos_id], 1: [5, 6, c.eos_id]}  # row 0 ends at step 1, row 1 at step 3

    def decode(patches, tokens, return_maps=False):  # the next word of each row, scripted
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], c.vocab_size)
        step = tokens.shape[1] - 1
        for row, words in script.items():
            logits[row, -1, words[min(step, len(words) - 1)]] = 1.0
        return CaptionOutput(logits, None)

    model.decode = decode
    caps = model.caption(torch.rand(2, 3, 24, 24), max_len=5)
    assert caps.tolist() == [[c.eos_id, c.pad_id, c.pad_id], [5, 6, c.eos_id]]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CaptionConfig(13, image_size=30, grid=4), "multiple of grid"),
        (lambda: CaptionConfig(13, eos_id=1), "distinct"),
        (lambda: CaptionConfig(0), "vocab_size"),
        (lambda: CaptionConfig(13, d_model=30, heads=4), "d_model=30 must divide by heads=4"),
        (lambda: CaptionConfig(13, dropout=1.5), "CaptionConfig.dropout"),
    ],
)
def test_bad_config(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_arguments_name_the_argument():
    model = _model()
    images = torch.rand(2, 3, 24, 24)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 24, 24\), got \(2, 3, 16, 16\)"):
        model(torch.rand(2, 3, 16, 16), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens must have dtype torch.int64"):
        model(images, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"tokens holds ids from .* this vocabulary has ids 0..12"):
        model(images, torch.full((2, 3), 13))
    with pytest.raises(ValueError, match="max_len=16"):
        model(images, torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len must be <= 15"):
        model.caption(images, max_len=16)
