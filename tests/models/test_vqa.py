"""The VQA model, its training loop, the model directory and `crossattn vqa`."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossattn.data.toy_scenes import generate_scenes
from crossattn.data.vqa import VQARecord, write_vqa_jsonl
from crossattn.grounding import pointing_game
from crossattn.models.seq2seq import sinusoidal_positions
from crossattn.models.vqa import VQAConfig, VQAModel, patch_centres, patch_positions
from crossattn.training.vqa import (
    VQAOptions,
    VQAPredictor,
    _learning_rate,
    _loss,
    box_share,
    choose_head,
    encode_questions,
    examples_from_records,
    examples_from_scenes,
    grounding_map,
    load_vqa,
    map_information,
    pointable_target,
    question_images,
    save_vqa,
    score,
    smooth_grid,
    train_vqa,
)

SMALL = {"d_model": 32, "heads": 4, "dim_ff": 64}


@pytest.mark.parametrize("readout, rows", [("query", 1), ("mean", 3)])
def test_maps_are_the_attention_of_the_answer_call(readout, rows):
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, readout=readout, cross_layers=2, **SMALL)
    model = VQAModel(config).eval()
    images = torch.rand(2, 3, 64, 64)
    ids = torch.tensor([[4, 5, 6], [7, 8, 0]])
    out = model(images, ids, ids != 0, return_maps=True)
    assert out.logits.shape == (2, 3) and len(out.maps) == 2
    for m in out.maps:
        assert m.shape == (2, 4, rows, 64)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, rows))
    want_mask = torch.ones(2, 1, dtype=torch.bool) if readout == "query" else ids != 0
    assert torch.equal(out.map_mask, want_mask)
    plain = model(images, ids, ids != 0)
    torch.testing.assert_close(plain.logits, out.logits)  # maps do not change the answer
    assert plain.maps is None
    # padding does not change the answer of the shorter question
    short = model(images[1:], ids[1:, :2], ids[1:, :2] != 0)
    torch.testing.assert_close(short.logits, out.logits[1:], atol=1e-5, rtol=1e-5)


def _seen(stem: str, first: int, patch: int) -> tuple[int, int]:
    """The first and last pixel rows (or columns) a patch feature of ``stem`` sees, for the patch
    whose first pixel row is ``first``."""
    if stem == "cnn":  # a (2 * patch - 2)-pixel square centred on the patch
        return first - (patch // 2 - 1), first + patch - 1 + (patch // 2 - 1)
    return first - (2 * patch - 1), first + 2 * patch - 1  # wide: 4 * patch - 1 pixels


@pytest.mark.parametrize("stem", ["cnn", "wide"])
@pytest.mark.parametrize("image_size, grid", [(64, 8), (48, 12), (32, 16)])
def test_convolution_stems_see_the_pixels_around_their_patch(stem, image_size, grid):
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, image_size=image_size, grid=grid,
                       stem=stem, image_layers=0, **SMALL)  # fmt: skip
    module = VQAModel(config).patches.stem
    patch = image_size // grid
    images = torch.rand(1, 3, image_size, image_size, requires_grad=True)
    row, col = grid // 2, grid // 2 - 1
    feats = module(images)  # (1, d, grid, grid)
    assert feats.shape == (1, 32, grid, grid)
    feats[0, :, row, col].pow(2).sum().backward()
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)  # pixels seen
    assert (ys.min(), ys.max()) == _seen(stem, row * patch, patch)
    assert (xs.min(), xs.max()) == _seen(stem, col * patch, patch)


@pytest.mark.parametrize("amx, enabled", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("d_model, image_size, grid", [(32, 64, 8), (64, 48, 12), (16, 32, 16)])
def test_wide_stem_trains_in_bfloat16_when_asked_on_amx_and_evaluates_in_float32(
    amx, enabled, d_model, image_size, grid, monkeypatch
):
    from crossattn import _cpu

    monkeypatch.setattr(_cpu, "AMX", amx)
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, stem="wide", image_layers=0,
                       image_size=image_size, grid=grid, d_model=d_model, heads=4,
                       dim_ff=32)  # fmt: skip
    model = VQAModel(config)
    assert model.train_convolutions_in_bfloat16(enabled) is model
    convs = model.patches.stem.convs
    amx = amx and enabled  # bfloat16 runs only when both hold
    images = torch.rand(3, 3, image_size, image_size) - 0.5
    exact = copy.deepcopy(convs).double()  # float64, NCHW, the plain modules one by one
    want = torch.nn.Sequential(*exact)(images.double())
    want.pow(2).sum().backward()
    torch.testing.assert_close(convs.eval()(images), want.float(), rtol=1e-4, atol=1e-5)
    got = convs.train()(images)
    assert got.dtype == torch.float32
    assert got.flatten(2).transpose(1, 2).is_contiguous()  # patch tokens without a copy
    got.pow(2).sum().backward()
    # bfloat16 keeps 8 significant bits: each convolution rounds its inputs and weights, a
    # few units of 2^-8 of the output's scale per layer; float32 agrees to float32 rounding
    layers = sum(isinstance(m, torch.nn.Conv2d) for m in convs)
    tol = layers * 4 * 2.0**-8 if amx else 1e-4
    assert (got.double() - want).abs().max() <= tol * want.abs().max()
    assert amx == (not torch.allclose(got.double(), want, rtol=0, atol=1e-5))
    for mine, ref in zip(convs.parameters(), exact.parameters()):
        assert (mine.grad.double() - ref.grad).abs().max() <= 2 * tol * ref.grad.abs().max()


@pytest.mark.parametrize("image_size, grid", [(30, 6), (21, 7), (8, 8), (36, 6), (64, 8)])
def test_centre_stem_sees_a_square_on_its_patch_centre(image_size, grid):
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, image_size=image_size, grid=grid,
                       stem="centre", image_layers=0, **SMALL)  # fmt: skip
    module = VQAModel(config).patches.stem
    patch = image_size // grid
    images = torch.rand(1, 3, image_size, image_size, requires_grad=True)
    feats = module(images)
    assert feats.shape == (1, 32, grid, grid)
    row, col = grid // 2, max(0, grid // 2 - 1)
    feats[0, :, row, col].pow(2).sum().backward()
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    for seen, first in ((ys, row * patch), (xs, col * patch)):
        lo, hi = int(seen.min()) - first, int(seen.max()) - first  # within the patch
        assert lo == patch - 1 - hi  # symmetric about the patch's centre
        assert patch / 2 - 1 <= hi - lo + 1 <= max(2, patch / 2 + 1)  # about half the side
        assert len(seen.unique()) == hi - lo + 1  # a solid square


def test_patch_values_hold_only_their_own_pixels():
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, stem="wide", values="patch", **SMALL)
    model = VQAModel(config).eval()
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    keys, values, _ = model.patches(images)
    assert keys.shape == values.shape == (1, 64, 32)
    values[0, 8 * 2 + 5].pow(2).sum().backward()  # row 2, column 5
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 23, 40, 47)
    ids = torch.tensor([[4, 5, 6]])
    out = model(images.detach(), ids, ids != 0, return_maps=True)
    torch.testing.assert_close(out.maps[0].sum(-1), torch.ones(1, 4, 1))
    assert VQAModel(VQAConfig(vocab_size=10, n_answers=3, **SMALL)).patches(images)[1] is None


def test_wide_values_with_linear_keys():
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, values="wide", readout="mean",
                       image_layers=0, **SMALL)  # fmt: skip
    model = VQAModel(config).eval()
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    keys, values, _ = model.patches(images)
    keys[0, 8 * 2 + 5].pow(2).sum().backward(retain_graph=True)  # a key: its own patch only
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 23, 40, 47)
    images.grad = None
    values[0, 8 * 2 + 5].pow(2).sum().backward()  # a value: 15 pixels before, 15 after
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (1, 31, 25, 55)
    ids = torch.tensor([[4, 5, 6]])
    plain = model(images.detach(), ids, ids != 0)
    out = model(images.detach(), ids, ids != 0, return_maps=True)
    torch.testing.assert_close(plain.logits, out.logits)
    torch.testing.assert_close(out.maps[0].sum(-1), torch.ones(1, 4, 3))


def test_local_heads_key_on_their_own_patch_and_stack_after_the_stem_heads():
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, stem="wide", values="wide", readout="mean",
                       image_layers=0, local_heads=1, **SMALL)  # fmt: skip
    model = VQAModel(config).eval()
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    feats = model.patches(images)
    feats.local[0, 8 * 2 + 5].pow(2).sum().backward()  # a local key: its own patch only
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 23, 40, 47)
    ids = torch.tensor([[4, 5, 6]])
    out = model(images.detach(), ids, ids != 0, return_maps=True)
    block = model.cross[0]
    assert (block.attn_question_to_image.heads, block.attn_local.heads) == (3, 1)
    assert out.maps[0].shape == (1, 4, 3, 64) and out.centre_logits is None
    torch.testing.assert_close(out.maps[0].sum(-1), torch.ones(1, 4, 3))
    with torch.no_grad():  # the last head is the local one: it follows the local keys alone
        feats = model.patches(images.detach())
        q = block.norm_q(_question_tokens(model, ids))
        _, local = block.attn_local(q, block.norm_local(feats.local), block.norm_values(
            feats.values), return_weights=True)  # fmt: skip
    torch.testing.assert_close(out.maps[0][:, 3:], local)
    torch.testing.assert_close(model(images.detach(), ids, ids != 0).logits, out.logits)


def test_local_heads_key_on_the_centre_of_their_patch_with_local_stem_centre():
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, stem="wide", values="stem", readout="mean",
                       image_layers=0, local_heads=2, local_stem="centre", **SMALL)  # fmt: skip
    model = VQAModel(config).eval()
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    feats = model.patches(images)
    assert feats.values is None  # every head reads the wide stem's features as values
    feats.local[0, 8 * 2 + 5].pow(2).sum().backward()  # patch rows 16..23, columns 40..47
    ys, xs = (images.grad.abs().sum((0, 1)) > 0).nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (18, 21, 42, 45)  # its centre 4 x 4
    ids = torch.tensor([[4, 5, 6]])
    out = model(images.detach(), ids, ids != 0, return_maps=True)
    block = model.cross[0]
    assert (block.attn_question_to_image.heads, block.attn_local.heads) == (2, 2)
    with torch.no_grad():  # the last two heads follow the centre keys, with the stem's values
        feats = model.patches(images.detach())
        q = block.norm_q(_question_tokens(model, ids))
        _, local = block.attn_local(q, block.norm_local(feats.local), block.norm_ctx(
            feats.keys), return_weights=True)  # fmt: skip
    torch.testing.assert_close(out.maps[0][:, 2:], local)
    with pytest.raises(ValueError, match="local_stem"):
        VQAConfig(vocab_size=10, n_answers=3, local_heads=1, local_stem="wide")


def test_a_config_saved_before_local_stem_loads_with_whole_patch_local_keys():
    config = VQAConfig(vocab_size=10, n_answers=3, local_heads=1, **SMALL)
    saved = config.to_dict()
    del saved["local_stem"]  # a vqa.json written before the field existed
    old = VQAConfig.from_dict(saved)
    assert old.local_stem == "linear" and old == config
    weights = VQAModel(config).state_dict()
    VQAModel(old).load_state_dict(weights)  # the same parameters: the weights still fit


def _question_tokens(model, ids):
    """The question tokens the first cross layer reads (readout "mean")."""
    tokens = model.embed(ids) + sinusoidal_positions(ids.shape[1], model.config.d_model)
    for layer in model.text_layers:
        tokens = layer(tokens, token_mask=ids != 0)
    return tokens


@pytest.mark.parametrize("local_heads", [0, 2, 3])
def test_centre_answer_reads_the_patch_centres_through_the_stem_heads(local_heads):
    torch.manual_seed(0)
    config = VQAConfig(vocab_size=10, n_answers=3, stem="wide", values="wide", readout="mean",
                       image_layers=0, cross_layers=2, local_heads=local_heads, centre_answer=4,
                       **SMALL)  # fmt: skip
    model = VQAModel(config).eval()
    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    cells = patch_centres(images, 8, 4)  # (B, P, 3 * 4 * 4): what the centre answer reads
    assert cells.shape == (2, 64, 48)
    want = images[1, :, 8 * 2 + 2 : 8 * 2 + 6, 8 * 5 + 2 : 8 * 5 + 6].reshape(-1)  # patch (2, 5)
    torch.testing.assert_close(cells[1, 8 * 2 + 5], want)
    ids = torch.tensor([[4, 5, 6], [7, 8, 0]])
    images = torch.rand(2, 3, 64, 64)
    out = model(images, ids, ids != 0, return_maps=True)
    keep = (ids != 0).unsqueeze(-1).float()
    stem_maps = out.maps[-1][:, : 4 - local_heads]  # the last layer's stem-keyed heads
    centre = model.centre_answer(images - 0.5, model.patches.positions, stem_maps, keep)
    torch.testing.assert_close(out.centre_logits, centre)
    first = out.maps[0][:, : 4 - local_heads]  # not the first layer's
    other = model.centre_answer(images - 0.5, model.patches.positions, first, keep)
    assert not torch.allclose(other, out.centre_logits)
    assert out.centre_logits.shape == (2, 3)
    plain = model(images, ids, ids != 0)  # computed without return_maps too
    torch.testing.assert_close(plain.centre_logits, out.centre_logits)
    assert plain.maps is None


def test_centre_answer_loss_adds_with_its_weight():
    train = examples_from_scenes(generate_scenes(8, seed=0))
    config = {**SMALL, "stem": "wide", "local_heads": 2, "centre_answer": 4}
    result = train_vqa(train, VQAOptions(seconds=1e9, max_steps=1, batch_size=4, config=config))
    model = result.model
    assert model.config.centre_answer == 4
    ids, mask = encode_questions(result.vocab, train.questions)
    labels = torch.tensor([result.answers.index(a) for a in train.answers])
    rows = torch.arange(4)
    with torch.no_grad():
        losses = [_loss(model, train, rows, ids, mask, labels, VQAOptions(centre_weight=w))
                  for w in (0.0, 2.0)]  # fmt: skip
        out = model(question_images(train, rows), ids[rows], mask[rows])
    torch.testing.assert_close(losses[0], F.cross_entropy(out.logits, labels[rows]))
    centre = F.cross_entropy(out.centre_logits, labels[rows])
    torch.testing.assert_close(losses[1] - losses[0], 2.0 * centre)


def test_a_default_model_keeps_its_parameter_names():
    # models saved before local heads and the centre answer existed load as they did
    names = {
        k.rsplit(".", 1)[0] for k in VQAModel(VQAConfig(vocab_size=10, n_answers=3)).state_dict()
    }
    attn = ("to_q", "to_k", "to_v", "to_out")
    encoder = lambda p: {f"{p}.self_attn.{a}" for a in attn} | {  # noqa: E731
        f"{p}.attn_block.norm", f"{p}.ffn.linear_in", f"{p}.ffn.linear_out", f"{p}.ffn_block.norm"
    }  # fmt: skip
    want = {"answer_head", "embed", "norm_out", "patches.stem", "query"}
    want |= {f"cross.0.attn_question_to_image.{a}" for a in attn}
    want |= {f"cross.0.{n}" for n in ("ffn.linear_in", "ffn.linear_out", "norm_ctx", "norm_ff",
                                      "norm_q")}  # fmt: skip
    want |= encoder("patches.layers.0") | encoder("text_layers.0")
    assert names == want


def test_patch_positions_distinct():
    pos = patch_positions(8, 32)
    assert pos.shape == (64, 32)
    assert torch.cdist(pos, pos).add(torch.eye(64) * 10).min() > 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 60}, "multiple of grid"),
        ({"d_model": 30}, "d_model"),
        ({"stem": "vit"}, "stem"),
        ({"stem": "cnn", "grid": 16, "image_size": 48}, "power of 2"),
        ({"cross_layers": 0}, "cross_layers"),
        ({"grid": True}, "grid"),
        ({"readout": "cls"}, "readout"),
        ({"values": "keys"}, "values"),
        ({"stem": "wide", "grid": 5, "image_size": 60}, "stem='wide' needs"),
        ({"values": "wide", "grid": 5, "image_size": 60}, "values='wide' needs"),
        ({"readout": "query", "text_layers": 0}, "text_layers"),
        ({"local_heads": 4}, "local_heads=4 must be < heads=4: at least one head keys on the stem"),
        (
            {"local_heads": 1, "centre_answer": 4},
            r"\(heads - local_heads = 3\) to divide d_model=32",
        ),
        ({"centre_answer": 9}, "at most a patch's side"),
        ({"centre_answer": -1}, "centre_answer"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VQAConfig(vocab_size=10, n_answers=3, **{**SMALL, **kwargs})


def test_input_errors():
    model = VQAModel(VQAConfig(vocab_size=10, n_answers=3, **SMALL))
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="images must be"):
        model(torch.rand(1, 3, 32, 32), ids, ids != 0)
    with pytest.raises(ValueError, match="question_mask"):
        model(torch.rand(1, 3, 64, 64), ids, ids)


def test_grounding_map_mean_and_guided():
    maps = [torch.rand(2, 4, 3, 9).softmax(-1) for _ in range(2)]  # a 3 x 3 grid
    mask = torch.tensor([[True, True, False], [True, True, True]])
    mean = grounding_map(maps, mask, "mean")
    want = torch.stack([m[0, :, :2].mean((0, 1)) for m in maps]).mean(0)
    torch.testing.assert_close(mean[0], want)
    guided = grounding_map(maps, mask, "guided")
    torch.testing.assert_close(guided[1], maps[-1][1, 0].mean(0))
    one = grounding_map(maps, mask, "head:0:2")
    torch.testing.assert_close(one[0], maps[0][0, 2, :2].mean(0))
    torch.testing.assert_close(grounding_map(maps, mask, "head:-1:0"), guided)
    smoothed = grounding_map(maps, mask, "smoothed")
    torch.testing.assert_close(smoothed, smooth_grid(mean))
    for bad in ("max", "head:0", "head:a:1"):
        with pytest.raises(ValueError, match="grounding choice"):
            grounding_map(maps, mask, bad)
    with pytest.raises(ValueError, match="names no head"):
        grounding_map(maps, mask, "head:2:0")


def test_smooth_grid_hand_computed():
    one = torch.zeros(1, 9)
    one[0, 4] = 1.0  # the centre of a 3 x 3 grid: the kernel itself
    want = torch.tensor([[1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]]) / 16
    torch.testing.assert_close(smooth_grid(one), want)
    corner = torch.zeros(1, 9)
    corner[0, 0] = 1.0  # zero padding loses 7 / 16 of it; renormalised to sum 1
    want = torch.tensor([[4.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]]) / 9
    torch.testing.assert_close(smooth_grid(corner), want)
    # an object ringed by mass: the raw map peaks on the ring, the blurred one in the middle
    ring = torch.full((1, 5, 5), 0.01)
    ring[0, 1:4, 1:4] = 0.12
    ring[0, 2, 2] = 0.05
    ring = ring.reshape(1, 25) / ring.sum()
    assert int(ring.argmax()) != 12 and int(smooth_grid(ring).argmax()) == 12
    with pytest.raises(ValueError, match="square grid"):
        smooth_grid(torch.rand(2, 10))
    # radius 2 on a 5 x 5 grid, mass in the centre: the 5 x 5 binomial kernel itself
    one = torch.zeros(1, 25)
    one[0, 12] = 1.0
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    torch.testing.assert_close(smooth_grid(one, 2), (row[:, None] * row / 256).reshape(1, 25))
    maps, mask = [torch.softmax(torch.randn(3, 2, 4, 25), -1)], torch.ones(3, 4, dtype=torch.bool)
    mean = grounding_map(maps, mask, "mean")
    torch.testing.assert_close(grounding_map(maps, mask, "smoothed:2"), smooth_grid(mean, 2))
    torch.testing.assert_close(grounding_map(maps, mask, "smoothed"), smooth_grid(mean, 1))
    for bad in ("smoothed:0", "smoothed:x", "smoothed:", "smoothed:\u00b2", "blurred"):
        with pytest.raises(ValueError, match="grounding choice must be"):
            grounding_map(maps, mask, bad)
        with pytest.raises(ValueError, match="grounding choice must be"):
            VQAPredictor(VQAModel(VQAConfig(vocab_size=10, n_answers=3, **SMALL)), None, [], bad)
    with pytest.raises(ValueError, match="radius"):
        smooth_grid(one, 0)
    # the kernel is built in float64: in float16 a wide one neither overflows nor vanishes
    half = smooth_grid(torch.full((2, 17 * 17), 1.0 / 289, dtype=torch.float16), 8)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float().sum(1), torch.ones(2), atol=2e-3, rtol=0)


def test_map_information_hand_computed():
    eye = torch.eye(4)  # four maps, each on its own cell
    assert map_information(eye) == pytest.approx(math.log(4))
    assert map_information(eye[[1, 1, 1, 1]]) == pytest.approx(0.0, abs=1e-6)  # a sink
    assert map_information(torch.full((4, 4), 0.25)) == pytest.approx(0.0, abs=1e-6)  # uniform
    half = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])  # H(mean) = log 4, H = log 2
    assert map_information(half) == pytest.approx(math.log(2))


def test_learning_rate_warmup_and_cosine():
    opts = VQAOptions(lr=1e-3, warmup=10)
    assert _learning_rate(opts, 0, 0.0) == pytest.approx(1e-4)
    assert _learning_rate(opts, 9, 0.0) == pytest.approx(1e-3)
    assert _learning_rate(opts, 50, 0.5) == pytest.approx(0.55e-3)
    assert _learning_rate(opts, 99, 1.0) == pytest.approx(1e-4)
    assert _learning_rate(replace(opts, cosine=False), 99, 1.0) == pytest.approx(1e-3)
    assert _learning_rate(replace(opts, warmup=0), 0, 0.0) == pytest.approx(1e-3)  # no warmup


def test_box_share_hand_computed():
    share = box_share((0, 0, 16, 12), (64, 64), 8).reshape(8, 8)
    assert share.sum() == pytest.approx(1.0)
    # 16 x 12 pixels over two full columns of patches and one and a half rows
    assert share[0, 0] == pytest.approx(64 / 192) and share[1, 0] == pytest.approx(32 / 192)
    assert share[2:].sum() == 0 and share[:, 2:].sum() == 0


def test_pointable_target_hand_computed():
    share = torch.tensor([0.5, 0.3, 0.2, 0.0])
    inside = torch.tensor([False, True, False, False])
    torch.testing.assert_close(pointable_target(share, inside), torch.tensor([0.25, 0.65, 0.1, 0]))
    torch.testing.assert_close(pointable_target(share, torch.zeros(4, dtype=torch.bool)), share)


def test_guided_targets_point_inside_every_object():
    """The target's own maximum wins the pointing game on every object (the share alone misses
    small objects whose largest patch has its centre off the object)."""
    examples = examples_from_scenes(generate_scenes(120, seed=1))
    maps = examples.targets.reshape(-1, 8, 8)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(len(examples)))
    assert all(pointing_game(maps, examples.boxes, image_size=(64, 64)))
    blank = np.zeros((64, 64, 3), np.uint8)
    records = [VQARecord(blank, (64, 64), q, None, box, Path("x.png"), k + 1) for k, (q, box) in
               enumerate(zip(examples.questions, examples.boxes))]  # fmt: skip
    from_boxes = examples_from_records(records).targets.reshape(-1, 8, 8)
    assert all(pointing_game(from_boxes, examples.boxes, image_size=(64, 64)))


@pytest.fixture(scope="module")
def trained():
    train = examples_from_scenes(generate_scenes(150, seed=0))
    options = VQAOptions(seconds=1e9, max_steps=300, batch_size=32, config=SMALL)
    result = train_vqa(train, options)
    return train, result


@pytest.mark.slow
def test_short_training_learns(trained):
    train, result = trained
    test = examples_from_scenes(generate_scenes(60, seed=9))
    predictor = VQAPredictor(result.model, result.vocab, result.answers, "mean")
    s = score(predictor.predict(test), test)
    assert result.steps == 300
    assert s["accuracy"] > s["majority_baseline"] + 0.05, s


@pytest.mark.slow
def test_choose_head_takes_the_most_informative_map(trained):
    train, result = trained
    choice, scores = choose_head(result.model, result.vocab, train, limit=64)
    config = result.model.config
    assert len(scores) == 1 + config.cross_layers * config.heads
    assert scores[choice] == max(scores.values())
    assert all(-1e-6 <= v <= math.log(64) + 1e-6 for v in scores.values())
    rows = list(range(64))
    predictor = VQAPredictor(result.model, result.vocab, result.answers, choice)
    maps = torch.tensor([p["map"] for p in predictor.predict(train.subset(rows))]).reshape(64, -1)
    assert map_information(maps) == pytest.approx(scores[choice], abs=1e-3)


def test_callback_sees_every_step():
    train = examples_from_scenes(generate_scenes(8, seed=0))
    seen = []
    options = VQAOptions(seconds=1e9, max_steps=3, batch_size=4, config=SMALL)
    result = train_vqa(train, options, callback=lambda step, model: seen.append(step))
    assert seen == [1, 2, 3] and result.steps == 3


def test_a_run_bounded_by_steps_alone_shows_progress():
    # seconds=inf is a valid option: the progress bar then has no end time, and steps stop the run
    train = examples_from_scenes(generate_scenes(8, seed=0))
    options = VQAOptions(seconds=math.inf, max_steps=21, batch_size=4, config=SMALL)
    assert train_vqa(train, options, progress=True).steps == 21


@pytest.mark.parametrize(
    "guided, config, want",
    [
        # answers only: every token looks, through heads keyed on the patch centres and heads
        # keyed on the wide stem, whose features are every head's values
        (False, SMALL, ("mean", 0, "wide", "stem", 2, 0)),
        (True, SMALL, ("query", 1, "wide", "stem", 0, 0)),  # guided: patches see the outline
        (
            False,
            {**SMALL, "readout": "query", "stem": "linear", "local_heads": 1},
            ("query", 0, "linear", "stem", 1, 0),
        ),
        (True, {**SMALL, "stem": "cnn"}, ("query", 1, "cnn", "stem", 0, 0)),  # asked for
    ],
)
def test_answers_only_runs_default_to_their_own_config(guided, config, want):
    train = examples_from_scenes(generate_scenes(8, seed=0))
    options = VQAOptions(seconds=1e9, max_steps=1, batch_size=4, guided_grounding=guided,
                         config=config)  # fmt: skip
    got = train_vqa(train, options).model.config
    assert (got.readout, got.image_layers, got.stem, got.values, got.local_heads,
            got.centre_answer) == want  # fmt: skip
    assert got.local_stem == ("centre" if want[4] and not guided else "linear")
    assert (got.d_model, got.dim_ff) == (SMALL["d_model"], SMALL["dim_ff"])


@pytest.mark.parametrize("amx_bfloat16", [True, False])
def test_training_asks_for_bfloat16_convolutions_as_the_options_say(amx_bfloat16):
    from crossattn.models.vqa import _Convs

    train = examples_from_scenes(generate_scenes(8, seed=0))
    options = VQAOptions(seconds=1e9, max_steps=1, batch_size=4, amx_bfloat16=amx_bfloat16,
                         config={**SMALL, "stem": "wide", "values": "wide"})  # fmt: skip
    model = train_vqa(train, options).model
    flags = [m.bfloat16_training for m in model.modules() if isinstance(m, _Convs)]
    assert flags == [amx_bfloat16, amx_bfloat16]  # the key stem and the value stem
    assert VQAModel(model.config).patches.stem.convs.bfloat16_training is False  # off by default


def test_runs_side_by_side_in_threads_match_runs_one_after_the_other():
    from concurrent.futures import ThreadPoolExecutor

    train = examples_from_scenes(generate_scenes(8, seed=0))
    options = [
        VQAOptions(seconds=1e9, max_steps=3, batch_size=4, seed=seed, guided_grounding=guided,
                   config=SMALL)
        for seed, guided in ((0, False), (1, True))
    ]  # fmt: skip
    serial = [train_vqa(train, o).model.state_dict() for o in options]
    with ThreadPoolExecutor(max_workers=2) as pool:
        side_by_side = [
            r.model.state_dict() for r in pool.map(lambda o: train_vqa(train, o), options)
        ]
    assert serial[0]["answer_head.weight"].ne(serial[1]["answer_head.weight"]).any()
    for one, other in zip(serial, side_by_side):
        assert one.keys() == other.keys()
        for name in one:
            torch.testing.assert_close(other[name], one[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "config, grounding",
    [(SMALL, "guided"), ({**SMALL, "stem": "wide", "local_heads": 2, "centre_answer": 2},
                         "smoothed:2")],
)  # fmt: skip
def test_save_load_round_trip(tmp_path, config, grounding):
    train = examples_from_scenes(generate_scenes(8, seed=0))
    result = train_vqa(train, VQAOptions(seconds=0.0, config=config))
    assert result.steps == 1
    predictor = VQAPredictor(result.model, result.vocab, result.answers, grounding)
    save_vqa(tmp_path / "m", predictor, {"steps": 1})
    loaded = load_vqa(tmp_path / "m")
    assert loaded.answers == predictor.answers and loaded.grounding == grounding
    assert loaded.model.config == predictor.model.config
    assert loaded.predict(train) == predictor.predict(train)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "vqa.json"]
    with pytest.raises(FileNotFoundError, match="is missing"):
        load_vqa(tmp_path)


def test_points_are_in_original_pixels():
    train = examples_from_scenes(generate_scenes(4, seed=0))
    result = train_vqa(train, VQAOptions(seconds=0.0, config=SMALL))
    predictor = VQAPredictor(result.model, result.vocab, result.answers, "mean")
    train.original_sizes = [(640, 320)] * len(train)
    for p in predictor.predict(train):
        j = max(range(64), key=lambda c: p["map"][c // 8][c % 8])
        assert p["point"] == [(j % 8 + 0.5) * 80, (j // 8 + 0.5) * 40]


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "crossattn", "vqa", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_train_answer_score(tmp_path):
    write_vqa_jsonl(generate_scenes(12, seed=0), tmp_path / "train.jsonl")
    write_vqa_jsonl(generate_scenes(3, seed=1), tmp_path / "test.jsonl")
    out = tmp_path / "model"
    run = cli("train", "--data", str(tmp_path / "train.jsonl"), "--out", str(out),
              "--minutes", "0.1", "--guided-grounding", "--threads", "1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    again = cli("train", "--data", str(tmp_path / "train.jsonl"), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    answer = cli("answer", "--model", str(out), "--data", str(tmp_path / "test.jsonl"))
    assert answer.returncode == 0, answer.stderr
    lines = [json.loads(x) for x in answer.stdout.splitlines()]
    n = len((tmp_path / "test.jsonl").read_text().splitlines())
    assert len(lines) == n and set(lines[0]) == {"answer", "point", "map"}
    assert len(lines[0]["map"]) == 8 and len(lines[0]["map"][0]) == 8
    scored = cli("score", "--model", str(out), "--data", str(tmp_path / "test.jsonl"))
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["n"] == n and 0 <= result["accuracy"] <= 1 and 0 <= result["pointing_game"] <= 1
    assert json.loads((out / "vqa.json").read_text())["grounding"] == "guided"


@pytest.mark.slow
def test_cli_train_chooses_an_unsupervised_map(tmp_path):
    write_vqa_jsonl(generate_scenes(6, seed=0), tmp_path / "train.jsonl")
    out = tmp_path / "model"
    run = cli("train", "--data", str(tmp_path / "train.jsonl"), "--out", str(out),
              "--minutes", "0.05", "--threads", "1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / "vqa.json").read_text())
    assert meta["grounding"] == "smoothed"  # the answers-only map; the candidates' scores recorded
    assert "mean" in meta["map_information"] and "head:0:0" in meta["map_information"]


@pytest.mark.slow
def test_cli_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "nope.png", "question": "q ?", "answer": "a"}\n')
    run = cli("train", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "m"))
    assert run.returncode == 2 and f"{tmp_path / 'bad.jsonl'}:1:" in run.stderr
    assert "does not exist" in run.stderr and "Traceback" not in run.stderr
    run = cli("answer", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "bad.jsonl"))
    assert run.returncode == 2 and "no such directory" in run.stderr


def test_vqa_options_follow_the_argument_rules():
    opts = VQAOptions(max_steps=np.int64(3), batch_size=torch.tensor(8), seconds=math.inf)
    assert (opts.max_steps, opts.batch_size) == (3, 8)
    assert type(opts.max_steps) is int and type(opts.batch_size) is int
    assert VQAOptions().max_steps is None
    with pytest.raises(TypeError, match=r"VQAOptions.batch_size must be a positive int, got True"):
        VQAOptions(batch_size=True)
    with pytest.raises(
        ValueError, match=r"VQAOptions.lr must be a positive finite real number, got 0"
    ):
        VQAOptions(lr=0)
    with pytest.raises(ValueError, match=r"VQAOptions.label_smoothing must be in \[0, 1\)"):
        VQAOptions(label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"VQAOptions.seconds must be in \[0, inf\], got nan"):
        VQAOptions(seconds=float("nan"))
    with pytest.raises(TypeError, match=r"VQAOptions.guided_grounding must be a bool, got 1"):
        VQAOptions(guided_grounding=1)
    with pytest.raises(ValueError, match=r"VQAOptions.centre_weight must be"):
        VQAOptions(centre_weight=-1.0)
    with pytest.raises(TypeError, match=r"VQAOptions.amx_bfloat16 must be a bool, got 1"):
        VQAOptions(amx_bfloat16=1)
