"""Visual question answering data in JSONL: the user's images, questions, answers and boxes.

One JSON object a line::

    {"image": "img/0001.png", "question": "what colour is the cup ?", "answer": "red",
     "box": [12, 30, 41, 58]}

* ``image``: a path relative to the JSONL file's folder, read with Pillow (any size and mode;
  converted to RGB and, with ``size=``, resized to ``size`` x ``size``).
* ``question``: words separated by spaces (tokens as the text readers split them).
* ``answer``: one answer string; optional unless ``require_answer=True`` (training, scoring).
* ``box``: optional ``[x0, y0, x1, y1]`` in the original image's pixels, ``x1``/``y1``
  exclusive (a point ``(x, y)`` is inside when ``x0 <= x < x1`` and ``y0 <= y < y1``);
  ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``.

Every error is a `VQAFormatError` (a `ValueError`) whose message starts with ``FILE:LINE:``: bad
JSON, a missing or mistyped field, a missing or unreadable image, a box outside the image, a
missing answer where one is required. Blank lines are skipped.

`write_vqa_jsonl` writes generated scenes (`crossattn.data.toy_scenes`) in this format, PNG images
beside the JSONL file, so the reader can be tried on files it did not make itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _checks
from .parallel import tokenize
from .toy_scenes import Scene

__all__ = ["VQAFormatError", "VQARecord", "read_vqa_jsonl", "write_vqa_jsonl"]


class VQAFormatError(ValueError):
    """A malformed VQA JSONL line or image; the message starts with ``FILE:LINE:``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class VQARecord:
    """One question about one image.

    ``image`` is ``(H, W, 3)`` uint8 (resized when the reader was given ``size``);
    ``original_size`` is the file's ``(width, height)``; ``box`` is in the original pixels.
    """

    image: np.ndarray
    original_size: tuple[int, int]
    question: tuple[str, ...]
    answer: str | None
    box: tuple[float, float, float, float] | None
    image_path: Path
    line: int


def _load_image(path: Path, size: int | None, where: tuple[Path, int]) -> tuple[np.ndarray, tuple]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise VQAFormatError(*where, f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            original = im.size
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(im, dtype=np.uint8).copy()
            array.setflags(write=False)  # shared by every line that names this file
            return array, original
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VQAFormatError(*where, f"cannot read image {str(path)!r}: {err}") from None


def _box(value: Any, width: int, height: int, where: tuple[Path, int]) -> tuple:
    try:
        return _checks.box(value, "box", width=width, height=height)
    except ValueError as err:  # ArgumentTypeError included
        raise VQAFormatError(*where, str(err)) from None


def _text(item: dict, key: str, where: tuple[Path, int], required: bool) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            raise VQAFormatError(*where, f"the line has no {key!r}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise VQAFormatError(*where, f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _record(item: Any, folder: Path, size: int | None, where: tuple, need_answer: bool,
            images: dict[Path, tuple[np.ndarray, tuple]]):  # fmt: skip
    """One line's record; ``images`` holds the images read so far, by path (read once each)."""
    if not isinstance(item, dict):
        raise VQAFormatError(*where, f"expected a JSON object, got {type(item).__name__}")
    image_name = _text(item, "image", where, True)
    question = tokenize(_text(item, "question", where, True))
    answer = _text(item, "answer", where, need_answer)
    image_path = folder / image_name
    if image_path not in images:
        images[image_path] = _load_image(image_path, size, where)
    image, original = images[image_path]
    box = item.get("box")
    box = None if box is None else _box(box, original[0], original[1], where)
    return VQARecord(image, original, question, answer, box, image_path, where[1])


def read_vqa_jsonl(
    path: str | os.PathLike[str], *, size: int | None = None, require_answer: bool = False
) -> list[VQARecord]:
    """Read a VQA JSONL file (see the module docstring) into `VQARecord` objects, in order.

    An image file named by several lines is read once: their records share one (read-only) array.

    Args:
        path: the JSONL file; image paths are relative to its folder.
        size: resize every image to ``size`` x ``size`` pixels (the model's input), or None.
        require_answer: refuse lines without an ``answer`` (training and scoring data).
    """
    path = Path(path)
    size = None if size is None else _checks.positive_int(size, "size")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VQAFormatError(path, None, "no such file") from None
    except IsADirectoryError:
        raise VQAFormatError(path, None, "is a directory, not a file") from None
    records: list[VQARecord] = []
    images: dict[Path, tuple[np.ndarray, tuple]] = {}
    for k, raw in enumerate(data.split(b"\n"), 1):
        where = (path, k)
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as err:
            raise VQAFormatError(*where, f"not UTF-8 ({err.reason} at byte {err.start})") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise VQAFormatError(
                *where, f"not valid JSON: {err.msg} (column {err.colno})"
            ) from None
        records.append(_record(item, path.parent, size, where, require_answer, images))
    return records


def write_vqa_jsonl(
    scenes: Sequence[Scene], path: str | os.PathLike[str], *, questions_per_scene: int | None = None
) -> Path:
    """Write scenes as PNG files in ``<path stem>-images/`` and one JSONL line per question.

    Each line's ``box`` is the object's box; returns the JSONL path.
    """
    from PIL import Image

    path = Path(path)
    images = path.parent / f"{path.stem}-images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(scenes):
        name = f"{images.name}/{i:06d}.png"
        Image.fromarray(np.asarray(scene.image)).save(path.parent / name)
        for q in scene.questions[:questions_per_scene]:
            box = list(scene.objects[q.object_index].box)
            lines.append(
                json.dumps({"image": name, "question": q.text, "answer": q.answer, "box": box})
            )
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
