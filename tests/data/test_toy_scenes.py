"""The scene generator: determinism, exact masks and boxes, questions naming one object."""

from __future__ import annotations

import numpy as np
import pytest

from crossattn.data.toy_scenes import COLOURS, SHAPES, SIZES, generate_scenes


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(120, seed=3)


def test_same_seed_same_scenes_and_prefix_stable():
    a = generate_scenes(6, seed=11)
    b = generate_scenes(9, seed=11)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image)
        assert x.questions == y.questions and x.caption == y.caption
    c = generate_scenes(6, seed=12)
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_objects_are_exact_disjoint_and_painted(scenes):
    for s in scenes:
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert 2 <= len(s.objects) <= 5
        union = np.zeros((64, 64), dtype=int)
        for o in s.objects:
            assert o.shape in SHAPES and o.colour in COLOURS and o.size in SIZES
            union += o.mask
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # every mask pixel carries the object's colour exactly
            assert (s.image[o.mask] == np.array(COLOURS[o.colour], dtype=np.uint8)).all()
        assert union.max() == 1  # no two objects share a pixel
        boxes = [o.box for o in s.objects]
        for i, (a0, b0, a1, b1) in enumerate(boxes):
            for c0, d0, c1, d1 in boxes[i + 1 :]:
                assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0  # boxes do not overlap


def test_every_box_holds_a_patch_centre_of_the_default_grid(scenes):
    centres = np.arange(4, 64, 8)
    for s in scenes:
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert ((centres >= x0) & (centres < x1)).any()
            assert ((centres >= y0) & (centres < y1)).any()


def test_questions_name_exactly_one_object_and_answer_it(scenes):
    kinds = set()
    for s in scenes:
        assert s.questions
        for q in s.questions:
            kinds.add(q.kind)
            o = s.objects[q.object_index]
            assert len(q.word_objects) == len(q.words)
            named = [w for w, k in zip(q.words, q.word_objects) if k >= 0]
            assert named and set(q.word_objects) <= {-1, q.object_index}
            matching = [
                x
                for x in s.objects
                if all(w in (x.shape, x.colour) or w == "object" for w in named)
            ]
            assert matching == [o]
            assert q.answer == {"colour": o.colour, "shape": o.shape, "size": o.size}[q.kind]
    assert kinds == {"colour", "shape", "size"}


def test_caption_words_name_their_objects(scenes):
    for s in scenes:
        assert len(s.caption) == len(s.caption_objects)
        named = {k for k in s.caption_objects if k >= 0}
        assert len(named) == 2
        for w, k in zip(s.caption, s.caption_objects):
            if k >= 0:
                o = s.objects[k]
                assert w in (o.size, o.colour, o.shape)


def test_relation_matches_centres():
    for s in generate_scenes(40, seed=5):
        a, b = (k for k in dict.fromkeys(s.caption_objects) if k >= 0)
        (ax, ay), (bx, by) = s.objects[a].centre, s.objects[b].centre
        words = " ".join(s.caption)
        if "left of" in words:
            assert ax < bx
        elif "right of" in words:
            assert ax > bx
        elif "above" in words:
            assert ay < by
        else:
            assert "below" in words and ay > by


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n": -1}, ValueError),
        ({"n": 2.0}, TypeError),
        ({"n": True}, TypeError),
        ({"n": 1, "size": 16}, ValueError),
        ({"n": 1, "min_objects": 4, "max_objects": 3}, ValueError),
        ({"n": 1, "max_objects": 6}, ValueError),
    ],
)
def test_bad_arguments_are_named(kwargs, error):
    with pytest.raises(error, match=next(iter(k for k in kwargs if k != "n"), "n")):
        generate_scenes(**kwargs)


def test_numpy_ints_accepted():
    assert len(generate_scenes(np.int64(2), seed=np.int32(1))) == 2
