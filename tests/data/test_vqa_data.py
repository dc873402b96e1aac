"""The VQA JSONL reader: round trip of generated scenes, resizing, and line-numbered errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossattn.data.toy_scenes import generate_scenes
from crossattn.data.vqa import VQAFormatError, read_vqa_jsonl, write_vqa_jsonl


@pytest.fixture()
def written(tmp_path):
    scenes = generate_scenes(3, seed=2)
    path = write_vqa_jsonl(scenes, tmp_path / "train.jsonl", questions_per_scene=2)
    return scenes, path


def test_round_trip(written):
    scenes, path = written
    records = read_vqa_jsonl(path, require_answer=True)
    expected = [(s, q) for s in scenes for q in s.questions[:2]]
    assert len(records) == len(expected)
    for r, (s, q) in zip(records, expected):
        assert np.array_equal(r.image, s.image)  # PNG is lossless
        assert r.question == q.words and r.answer == q.answer
        assert r.box == tuple(float(v) for v in s.objects[q.object_index].box)
        assert r.original_size == (64, 64)


def test_lines_naming_one_image_share_it(written):
    from crossattn.training.vqa import examples_from_records

    scenes, path = written
    records = read_vqa_jsonl(path, require_answer=True)
    assert len(records) == 6 and records[0].image is records[1].image  # two questions a scene
    assert records[1].image is not records[2].image and not records[0].image.flags.writeable
    examples = examples_from_records(records)
    assert examples.images.shape == (3, 3, 64, 64)  # one row per distinct image
    assert examples.image_index.tolist() == [0, 0, 1, 1, 2, 2]
    for k, r in enumerate(records):
        got = examples.images[examples.image_index[k]].permute(1, 2, 0).numpy()
        assert np.array_equal(got, r.image)


def test_resize_keeps_original_size(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((30, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    line = {"image": "a.png", "question": "where is it ?", "box": [0, 0, 50, 30]}
    (tmp_path / "d.jsonl").write_text(json.dumps(line) + "\r\n\n")
    (r,) = read_vqa_jsonl(tmp_path / "d.jsonl", size=16)
    assert r.image.shape == (16, 16, 3) and r.original_size == (50, 30)
    assert r.answer is None and r.line == 1


def write(tmp_path, lines):
    from PIL import Image

    Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    path = tmp_path / "data.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


GOOD = {"image": "ok.png", "question": "what ?", "answer": "red", "box": [0, 0, 10, 10]}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**GOOD, "image": "missing.png"}, "does not exist"),
        ({**GOOD, "image": "bad.png"}, "cannot read image"),
        (
            {**GOOD, "box": [0, 0, 41, 10]},
            r"box \[0, 0, 41, 10\] must lie inside the image of width 40 and height 20",
        ),
        (
            {**GOOD, "box": [5, 0, 5, 10]},
            r"inside the image of width 40 and height 20 and not be empty",
        ),
        ({**GOOD, "box": [0, 0, 10]}, r"box must be \[x0, y0, x1, y1\]: four finite real numbers"),
        (
            {**GOOD, "box": [0, 0, True, 10]},
            r"box must be \[x0, y0, x1, y1\]: four finite real numbers",
        ),
        ({k: v for k, v in GOOD.items() if k != "answer"}, "no 'answer'"),
        ({k: v for k, v in GOOD.items() if k != "question"}, "no 'question'"),
        ({**GOOD, "question": 3}, "'question' must be a non-empty string"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_errors_name_file_and_line(tmp_path, bad, message):
    path = write(tmp_path, [GOOD, bad])
    with pytest.raises(VQAFormatError, match=message) as info:
        read_vqa_jsonl(path, require_answer=True)
    assert str(info.value).startswith(f"{path}:2: ")
    assert info.value.line == 2


def test_missing_file_and_bad_size(tmp_path):
    with pytest.raises(VQAFormatError, match="no such file"):
        read_vqa_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="size"):
        read_vqa_jsonl(tmp_path / "nope.jsonl", size=0)


def test_pillow_drawn_scenes_of_the_jsonl_benchmark_match_their_answers(tmp_path):
    """benchmarks/vqa_jsonl.py draws scenes of its own: each box's centre pixel has the colour
    its questions name, and the reader takes every line."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "vqa_jsonl.py"
    spec = importlib.util.spec_from_file_location("vqa_jsonl", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    written = bench.write_split(tmp_path, "train", 40, seed=3)
    records = read_vqa_jsonl(written, size=64, require_answer=True)
    assert len(records) == 40 and all(r.original_size == (96, 96) for r in records)
    assert all(r.image.shape == (64, 64, 3) for r in records)
    palette = {name: np.array(rgb) for name, rgb in bench.PALETTE.items()}
    for r in records:  # every question names a colour, or asks for one
        named = [w for w in r.question if w in palette] or [r.answer]
        x0, y0, x1, y1 = r.box  # a point inside circles, squares and upward triangles alike
        with Image.open(r.image_path) as im:
            point = (int((x0 + x1) / 2), int(y0 + (y1 - y0) * 0.7))
            centre = np.array(im.convert("RGB").getpixel(point))
        nearest = min(palette, key=lambda c: np.abs(palette[c] - centre).sum())
        assert nearest == named[0], (r.question, r.answer, centre)
