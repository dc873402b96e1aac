"""The VQA model, its training loop, the model directory and `crossattn vqa`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from crossattn.data.toy_scenes import generate_scenes
from crossattn.data.vqa import write_vqa_jsonl
from crossattn.models.vqa import VQAConfig, VQAModel, patch_positions
from crossattn.vqa_training import (
    VQAOptions,
    VQAPredictor,
    box_share,
    examples_from_scenes,
    grounding_map,
    load_vqa,
    save_vqa,
    score,
    train_vqa,
)

SMALL = {"d_model": 32, "heads": 4, "dim_ff": 64}


def test_maps_are_the_attention_of_the_answer_call():
    torch.manual_seed(0)
    model = VQAModel(VQAConfig(vocab_size=10, n_answers=3, **SMALL)).eval()
    images = torch.rand(2, 3, 64, 64)
    ids = torch.tensor([[4, 5, 6], [7, 8, 0]])
    out = model(images, ids, ids != 0, return_maps=True)
    assert out.logits.shape == (2, 3) and len(out.maps) == 2
    for m in out.maps:
        assert m.shape == (2, 4, 3, 64)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 3))
    plain = model(images, ids, ids != 0)
    torch.testing.assert_close(plain.logits, out.logits)  # maps do not change the answer
    assert plain.maps is None
    # padding does not change the answer of the shorter question
    short = model(images[1:], ids[1:, :2], ids[1:, :2] != 0)
    torch.testing.assert_close(short.logits, out.logits[1:], atol=1e-5, rtol=1e-5)


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
        ({"cross_layers": 0}, "cross_layers"),
        ({"grid": True}, "grid"),
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
    maps = [torch.rand(2, 4, 3, 5).softmax(-1) for _ in range(2)]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    mean = grounding_map(maps, mask, "mean")
    want = torch.stack([m[0, :, :2].mean((0, 1)) for m in maps]).mean(0)
    torch.testing.assert_close(mean[0], want)
    guided = grounding_map(maps, mask, "guided")
    torch.testing.assert_close(guided[1], maps[-1][1, 0].mean(0))
    with pytest.raises(ValueError, match="grounding choice"):
        grounding_map(maps, mask, "max")


def test_box_share_hand_computed():
    share = box_share((0, 0, 16, 12), (64, 64), 8).reshape(8, 8)
    assert share.sum() == pytest.approx(1.0)
    # 16 x 12 pixels over two full columns of patches and one and a half rows
    assert share[0, 0] == pytest.approx(64 / 192) and share[1, 0] == pytest.approx(32 / 192)
    assert share[2:].sum() == 0 and share[:, 2:].sum() == 0


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


def test_save_load_round_trip(tmp_path):
    train = examples_from_scenes(generate_scenes(8, seed=0))
    result = train_vqa(train, VQAOptions(seconds=0.0, config=SMALL))
    assert result.steps == 1
    predictor = VQAPredictor(result.model, result.vocab, result.answers, "guided")
    save_vqa(tmp_path / "m", predictor, {"steps": 1})
    loaded = load_vqa(tmp_path / "m")
    assert loaded.answers == predictor.answers and loaded.grounding == "guided"
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


def test_cli_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "nope.png", "question": "q ?", "answer": "a"}\n')
    run = cli("train", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "m"))
    assert run.returncode == 2 and f"{tmp_path / 'bad.jsonl'}:1:" in run.stderr
    assert "does not exist" in run.stderr and "Traceback" not in run.stderr
    run = cli("answer", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "bad.jsonl"))
    assert run.returncode == 2 and "no such directory" in run.stderr
