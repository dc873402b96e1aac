"""Small RGB scenes of coloured shapes with exact ground truth, for grounding and VQA.

``generate_scenes(n, seed)`` draws ``n`` scenes deterministically. Each scene is a ``size`` x
``size`` RGB image (uint8, ``(H, W, 3)``) with 2 to 5 non-overlapping objects on a noisy grey
background. An object is a shape (circle, square, triangle) x a colour (red, green, blue,
yellow, purple) x a size (small, large); its ``box`` ``(x0, y0, x1, y1)`` is in pixels with
``x1``/``y1`` exclusive and its ``mask`` ``(H, W)`` bool is exact: the pixels painted in the
object's colour are the pixels of the mask, and no two masks (or boxes) overlap.

Each scene comes with questions that refer to exactly one object of it, with one-word answers::

    what colour is the triangle ?        -> red      (the scene has one triangle)
    what shape is the red object ?       -> circle   (the scene has one red object)
    is the blue square small or large ?  -> large    (the scene has one blue square)

and a caption that names two of its objects and their relation::

    a small red circle left of a large blue square

Every question and every caption records, per word, the index of the object the word names
(``-1`` for words that name none): the colour and shape words of a question name its object;
the size, colour and shape words of a caption name theirs.

Example::

    scenes = generate_scenes(4, seed=0)
    s = scenes[0]
    s.image.shape, len(s.objects), s.questions[0].text, s.questions[0].answer
    s.objects[s.questions[0].object_index].box      # (x0, y0, x1, y1), exclusive ends
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import integer

__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "SceneObject",
    "SceneQuestion",
    "Scene",
    "generate_scenes",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
_BACKGROUND = 110
_NOISE = 12


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: what it is, and exactly where (box in pixels, mask ``(H, W)``)."""

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]
    mask: np.ndarray

    @property
    def centre(self) -> tuple[float, float]:
        """The centre of the box, ``(x, y)`` in pixels."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass(frozen=True)
class SceneQuestion:
    """A question about one object: its words, answer, and the object each word names."""

    words: tuple[str, ...]
    answer: str
    object_index: int
    word_objects: tuple[int, ...]
    kind: str

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Scene:
    """An image ``(H, W, 3)`` uint8, its objects, questions and a caption with word objects."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    questions: tuple[SceneQuestion, ...]
    caption: tuple[str, ...]
    caption_objects: tuple[int, ...]


def _shape_mask(shape: str, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """The exact pixel mask ``(size, size)`` of a shape inscribed in a ``side`` square at x0, y0."""
    ys, xs = np.mgrid[0:size, 0:size]
    u = (xs - x0 + 0.5) / side  # pixel centres in the unit square of the box
    v = (ys - y0 + 0.5) / side
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    if shape == "square":
        return inside
    if shape == "circle":
        return inside & ((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25)
    # an upward triangle: apex at the top centre, base along the bottom edge
    return inside & (v >= 2 * np.abs(u - 0.5))


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _place(rng: np.random.Generator, count: int, size: int) -> list[tuple[str, int, int, int]]:
    """Non-overlapping squares (with a one-pixel gap): ``(size_word, x0, y0, side)``."""
    small, large = max(5, round(size * 0.17)), max(8, round(size * 0.3))
    placed: list[tuple[str, int, int, int]] = []
    for _ in range(200 * count):
        if len(placed) == count:
            break
        word = SIZES[int(rng.integers(2))]
        side = small if word == "small" else large
        x0, y0 = (int(c) for c in rng.integers(1, size - side, size=2))
        if all(
            x0 + side + 1 <= px or px + ps + 1 <= x0 or y0 + side + 1 <= py or py + ps + 1 <= y0
            for _, px, py, ps in placed
        ):
            placed.append((word, x0, y0, side))
    return placed


def _questions(objects: list[SceneObject], rng: np.random.Generator) -> list[SceneQuestion]:
    """Every question whose referring words name exactly one object, in a seeded order."""
    out: list[SceneQuestion] = []
    for k, obj in enumerate(objects):
        same_shape = sum(o.shape == obj.shape for o in objects)
        same_colour = sum(o.colour == obj.colour for o in objects)
        same_both = sum(o.shape == obj.shape and o.colour == obj.colour for o in objects)
        if same_shape == 1:
            words = ("what", "colour", "is", "the", obj.shape, "?")
            out.append(SceneQuestion(words, obj.colour, k, (-1, -1, -1, -1, k, -1), "colour"))
        if same_colour == 1:
            words = ("what", "shape", "is", "the", obj.colour, "object", "?")
            marks = (-1, -1, -1, -1, k, k, -1)
            out.append(SceneQuestion(words, obj.shape, k, marks, "shape"))
        if same_both == 1:
            words = ("is", "the", obj.colour, obj.shape, "small", "or", "large", "?")
            marks = (-1, -1, k, k, -1, -1, -1, -1)
            out.append(SceneQuestion(words, obj.size, k, marks, "size"))
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]


def _caption(objects: list[SceneObject], rng: np.random.Generator) -> tuple[tuple, tuple]:
    """``a SIZE COLOUR SHAPE RELATION a SIZE COLOUR SHAPE`` about two objects, with word objects."""
    a, b = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
    (ax, ay), (bx, by) = objects[a].centre, objects[b].centre
    if abs(ax - bx) >= abs(ay - by):
        relation = ("left", "of") if ax < bx else ("right", "of")
    else:
        relation = ("above",) if ay < by else ("below",)
    words, marks = [], []
    for k, tail in ((a, relation), (b, ())):
        o = objects[k]
        words += ["a", o.size, o.colour, o.shape, *tail]
        marks += [-1, k, k, k] + [-1] * len(tail)
    return tuple(words), tuple(marks)


def _scene(rng: np.random.Generator, size: int, min_objects: int, max_objects: int) -> Scene:
    count = int(rng.integers(min_objects, max_objects + 1))
    image = rng.normal(_BACKGROUND, _NOISE, size=(size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    objects: list[SceneObject] = []
    for word, x0, y0, side in _place(rng, count, size):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        mask = _shape_mask(shape, x0, y0, side, size)
        image[mask] = COLOURS[colour]
        mask.setflags(write=False)
        objects.append(SceneObject(shape, colour, word, _tight_box(mask), mask))
    image.setflags(write=False)
    questions = _questions(objects, rng)
    caption, marks = _caption(objects, rng)
    return Scene(image, tuple(objects), tuple(questions), caption, marks)


def generate_scenes(
    n: int,
    seed: int = 0,
    *,
    size: int = 64,
    min_objects: int = 2,
    max_objects: int = 5,
) -> list[Scene]:
    """Draw ``n`` scenes deterministically from ``seed``.

    Args:
        n: number of scenes (an int >= 0).
        seed: an int >= 0; scene ``i`` depends only on ``(seed, i)`` and the sizes, so a longer
            list starts with the shorter one.
        size: image side in pixels, at least 32 (the default 64 gives every object a patch
            centre of an 8 x 8 grid inside it).
        min_objects, max_objects: objects per scene, ``2 <= min_objects <= max_objects <= 5``.

    Returns:
        ``n`` `Scene` objects, each with at least one question.
    """
    n = integer(n, "n", minimum=0)
    seed = integer(seed, "seed", minimum=0)
    size = integer(size, "size", minimum=32)
    min_objects = integer(min_objects, "min_objects", minimum=2)
    max_objects = integer(max_objects, "max_objects", minimum=2)
    if not min_objects <= max_objects <= 5:
        raise ValueError(
            f"need 2 <= min_objects <= max_objects <= 5, got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )
    scenes: list[Scene] = []
    for i in range(n):
        for attempt in range(1000):
            rng = np.random.default_rng([seed, i, attempt])
            scene = _scene(rng, size, min_objects, max_objects)
            if len(scene.objects) >= min_objects and scene.questions:
                scenes.append(scene)
                break
        else:  # pragma: no cover - needs a pathological size
            raise RuntimeError(f"could not draw scene {i} of size {size}")
    return scenes
