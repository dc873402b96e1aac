"""Captioner training and the grounding scores of its object-naming words."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossattn.data.toy_scenes import generate_scenes
from crossattn.models.captioning import CaptionConfig, CaptionModel
from crossattn.training import captioning
from crossattn.training.captioning import (
    caption_grounding,
    caption_tensors,
    caption_vocabulary,
    train_captioner,
)

_SMALL = {"image_size": 32, "grid": 4, "d_model": 32, "heads": 2, "dim_ff": 64}


def test_caption_tensors_shift_the_caption():
    scenes = generate_scenes(3, seed=0, size=32)
    vocab = caption_vocabulary()
    data = caption_tensors(scenes, vocab)
    assert data.images.shape == (3, 3, 32, 32)
    for n, s in enumerate(scenes):
        words = [vocab[i] for i in data.targets[n].tolist() if i]
        assert words == [*s.caption, "<eos>"]
        assert [vocab[i] for i in data.inputs[n].tolist() if i] == ["<bos>", *s.caption]


def test_short_training_beats_the_majority_baseline(one_thread):
    scenes = generate_scenes(200, seed=0, size=32)
    result = train_captioner(scenes, _SMALL, steps=40, seed=0, batch_size=32, lr=5e-3)
    assert result.steps == 40
    report = caption_grounding(result.model, scenes[:40])
    assert report["token_accuracy"] > report["majority_token_accuracy"] + 0.05, report
    for kind in ("size", "colour", "shape", "all"):
        r = report[kind]
        assert 0.0 <= r["pointing_game"] <= 1.0
        assert set(r) >= {"uniform", "shuffled", "random_weights", "mass_over_area"}
    assert report["all"]["n"] == sum(r["n"] for k, r in report.items() if k in _KINDS)


_KINDS = ("size", "colour", "shape")


def test_grounding_on_hand_made_maps_hit_and_miss(monkeypatch):
    # 64-pixel scenes on an 8 x 8 grid: every object has a patch centre on it
    scenes = generate_scenes(2, seed=3, size=64, min_objects=2, max_objects=2)
    config = CaptionConfig(len(caption_vocabulary()), image_size=64, grid=8, d_model=16, heads=2)
    model = CaptionModel(config)
    g = config.grid

    def one_hot_maps(hit: bool):
        def fake(_model, data):
            n, t = data.targets.shape
            maps = torch.zeros(n, t, g, g)
            for k, s in enumerate(scenes):
                for i, obj in enumerate(s.caption_objects):
                    target = obj if hit or obj < 0 else 1 - obj  # the other object on a miss
                    mask = s.objects[max(target, 0)].mask
                    centres = mask[4::8, 4::8]  # the pixels of the patch centres, (g, g)
                    row, col = np.argwhere(centres)[0]
                    maps[k, i, row, col] = 1.0
            return data.targets.clone(), maps

        return fake

    monkeypatch.setattr(captioning, "word_maps", one_hot_maps(hit=True))
    report = caption_grounding(model, scenes)
    assert report["all"]["pointing_game"] == 1.0 and report["all"]["n"] == 12
    assert report["token_accuracy"] == 1.0
    monkeypatch.setattr(captioning, "word_maps", one_hot_maps(hit=False))
    report = caption_grounding(model, scenes)
    assert report["all"]["pointing_game"] == 0.0
    assert report["shape"]["mass"] == 0.0


def test_bad_arguments():
    scenes = generate_scenes(2, seed=0, size=32)
    with pytest.raises(ValueError, match="give steps, seconds or both"):
        train_captioner(scenes, _SMALL)
    with pytest.raises(ValueError, match="steps"):
        train_captioner(scenes, _SMALL, steps=0)
    with pytest.raises(ValueError, match="scenes must be a non-empty sequence"):
        train_captioner([], _SMALL, steps=1)
    with pytest.raises(TypeError, match="model must be a CaptionModel"):
        caption_grounding(object(), scenes)
    with pytest.raises(ValueError, match="vocab_size must be"):
        caption_grounding(CaptionModel(CaptionConfig(5, **_SMALL)), scenes)
