"""Where does a text token look in an image? Grounding scores for attention maps over a grid.

A map is an ``(h, w)`` grid of non-negative attention weights over an image's patches (the
head-mean of a recorded cross-attention map, a diffusers UNet's map at one resolution, ...): cell
``(i, j)`` covers the pixels ``[j * W / w, (j + 1) * W / w) x [i * H / h, (i + 1) * H / h)`` of a
``W`` x ``H`` image. The scores:

* **pointing game** (Zhang et al. 2016): the centre of the map's largest cell, in pixels, falls
  inside the object's box ``(x0, y0, x1, y1)`` (``x0 <= x < x1`` and ``y0 <= y < y1``) or, given
  a mask, on a pixel of the mask. Ties go to the first cell in row-major order.
* **mass in the object**: the share of the map's mass on the object's pixels (each cell's mass
  spread evenly over its pixels); ``mass / area`` (the share over the object's share of the image)
  is 1 for a uniform map and grows as the map concentrates on the object.

And the baselines every score is read against: **uniform** (a uniformly random cell: the share
of cell centres inside the object; mass over area exactly 1), **shuffled** (each map scored
against another example's object, a fixed derangement). A random-weights baseline is the same
scores on the maps of an untrained model, which the caller records.

Example::

    maps = torch.rand(10, 8, 8)                     # (N, h, w), e.g. head-mean over tokens
    boxes = [(8, 8, 24, 24)] * 10                   # (x0, y0, x1, y1) in pixels
    report = grounding_report(maps, boxes, image_size=(64, 64))
    report["pointing_game"], report["uniform"]["pointing_game"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _checks

__all__ = [
    "grounding_report",
    "mass_in_region",
    "map_point",
    "pointing_game",
    "region_mask",
    "uniform_pointing",
]

Box = tuple[float, float, float, float]


def _as_maps(maps: Any, name: str = "maps") -> list[np.ndarray]:
    """A list of ``(h, w)`` float64 arrays from a tensor ``(N, h, w)`` or a sequence of grids."""
    if hasattr(maps, "detach"):
        maps = maps.detach().to("cpu").double().numpy()
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise ValueError(f"{name} must be (N, h, w), got shape {tuple(maps.shape)}")
        items = list(maps)
    else:
        items = [m.detach().to("cpu").double().numpy() if hasattr(m, "detach") else m for m in maps]
    out = []
    for k, m in enumerate(items):
        m = np.asarray(m, dtype=np.float64)
        if m.ndim != 2 or m.size == 0:
            raise ValueError(f"{name}[{k}] must be a non-empty (h, w) grid, got shape {m.shape}")
        if not np.isfinite(m).all() or (m < 0).any():
            raise ValueError(f"{name}[{k}] must hold finite, non-negative weights")
        out.append(m)
    return out


def _per_item(value: Any, n: int, name: str, single: Any) -> list:
    """One value per map: ``value`` itself when ``single(value)`` (one for all), else n values."""
    if single(value):
        return [value] * n
    if not isinstance(value, Sequence | np.ndarray) or len(value) != n:
        got = len(value) if isinstance(value, Sequence | np.ndarray) else type(value).__name__
        raise ValueError(f"{name} must be one value for all maps or one per map ({n}), got {got}")
    return list(value)


def _is_one(value: Any, count: int) -> bool:
    """Whether `value` is one item of `count` scalars (one size, one box) rather than a list of
    them, one per map (its items are then checked by `_size` / `crossattn._checks.box`)."""
    return (
        isinstance(value, Sequence | np.ndarray)
        and len(value) == count
        and not any(isinstance(v, Sequence | np.ndarray) and np.ndim(v) > 0 for v in value)
    )


def _size(value: Any, name: str) -> tuple[int, int]:
    return _checks.positive_int_pair(value, name, "(width, height) in pixels")


def map_point(grid: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float]:
    """The centre ``(x, y)`` in pixels of the largest cell of ``grid`` ``(h, w)``."""
    h, w = grid.shape
    i, j = divmod(int(np.argmax(grid)), w)
    width, height = image_size
    return ((j + 0.5) * width / w, (i + 0.5) * height / h)


def _inside(point: tuple[float, float], box: Box | None, mask: np.ndarray | None) -> bool:
    x, y = point
    if mask is not None:
        row = min(int(math.floor(y)), mask.shape[0] - 1)
        col = min(int(math.floor(x)), mask.shape[1] - 1)
        return bool(mask[row, col])
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def region_mask(box: Box, image_size: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` bool mask of the pixels whose centres lie inside ``box``."""
    width, height = image_size
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    x0, y0, x1, y1 = box
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def _pixel_mass(grid: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The map's mass per pixel ``(H, W)``, each cell's share spread over the pixels it covers."""
    width, height = image_size
    h, w = grid.shape
    rows = np.minimum((np.arange(height) + 0.5) * h // height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w // width, w - 1).astype(int)
    counts = np.zeros((h, w))
    np.add.at(counts, (rows[:, None].repeat(width, 1), cols[None, :].repeat(height, 0)), 1.0)
    total = grid.sum()
    share = grid / total if total > 0 else np.full_like(grid, 1.0 / grid.size)
    return (share / np.maximum(counts, 1.0))[rows[:, None], cols[None, :]]


class _Regions:
    """Per map: the image size ``(W, H)``, and the box or the mask that the scores read."""

    def __init__(self, n: int, boxes: Any, masks: Any, image_size: Any):
        if boxes is None and masks is None:
            raise ValueError("give boxes or masks (or both)")
        sizes = _per_item(image_size, n, "image_size", lambda v: _is_one(v, 2))
        self.sizes = [_size(s, f"image_size[{k}]") for k, s in enumerate(sizes)]
        self.boxes: list[Box | None] = [None] * n
        self.masks: list[np.ndarray | None] = [None] * n
        if masks is not None:
            is_one = lambda v: isinstance(v, np.ndarray) and v.ndim == 2  # noqa: E731
            for k, m in enumerate(_per_item(masks, n, "masks", is_one)):
                m = np.asarray(m, dtype=bool)
                w, h = self.sizes[k]
                if m.shape != (h, w):
                    raise ValueError(f"masks[{k}] must be (H, W) = ({h}, {w}), got {m.shape}")
                self.masks[k] = m
        elif boxes is not None:
            for k, b in enumerate(_per_item(boxes, n, "boxes", lambda v: _is_one(v, 4))):
                self.boxes[k] = _checks.box(b, f"boxes[{k}]")

    def hit(self, k: int, point: tuple[float, float]) -> bool:
        return _inside(point, self.boxes[k], self.masks[k])

    def pixels(self, k: int) -> np.ndarray:
        if self.masks[k] is not None:
            return self.masks[k]
        return region_mask(self.boxes[k], self.sizes[k])


def pointing_game(
    maps: Any, boxes: Any = None, *, image_size: Any, masks: Any = None
) -> list[bool]:
    """A hit per map: does the centre of its largest cell fall inside the object?

    Args:
        maps: ``(N, h, w)`` tensor or array, or N grids ``(h, w)`` (sizes may differ).
        boxes: N boxes ``(x0, y0, x1, y1)`` in pixels (or one for all); x1, y1 exclusive.
        image_size: ``(width, height)`` in pixels, one for all or N of them.
        masks: N bool masks ``(H, W)`` (or one for all); when given they decide, not the boxes.
    """
    grids = _as_maps(maps)
    regions = _Regions(len(grids), boxes, masks, image_size)
    return [regions.hit(k, map_point(g, regions.sizes[k])) for k, g in enumerate(grids)]


def mass_in_region(
    maps: Any, boxes: Any = None, *, image_size: Any, masks: Any = None
) -> list[tuple[float, float]]:
    """``(mass, area)`` per map: its share of mass on the object and the object's share of pixels.

    Same arguments as `pointing_game`; ``mass / area`` is 1 for a uniform map.
    """
    grids = _as_maps(maps)
    regions = _Regions(len(grids), boxes, masks, image_size)
    out = []
    for k, g in enumerate(grids):
        pixels = regions.pixels(k)
        out.append((float(_pixel_mass(g, regions.sizes[k])[pixels].sum()), float(pixels.mean())))
    return out


def uniform_pointing(
    grid_shape: tuple[int, int], boxes: Any = None, *, image_size: Any, masks: Any = None, n: int
) -> list[float]:
    """The pointing game of a uniformly random cell of an ``(h, w)`` grid, for each of n objects:
    the share of cell centres that fall on the object."""
    h, w = grid_shape
    regions = _Regions(n, boxes, masks, image_size)
    out = []
    for k, (width, height) in enumerate(regions.sizes):
        centres = [
            ((j + 0.5) * width / w, (i + 0.5) * height / h) for i in range(h) for j in range(w)
        ]
        out.append(float(np.mean([regions.hit(k, c) for c in centres])))
    return out


def _derangement(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if n < 2:
        return np.arange(n)
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm


def _summary(grids: list[np.ndarray], regions: _Regions) -> dict[str, float]:
    hits = [regions.hit(k, map_point(g, regions.sizes[k])) for k, g in enumerate(grids)]
    mass, ratio = [], []
    for k, g in enumerate(grids):
        pixels = regions.pixels(k)
        m, area = float(_pixel_mass(g, regions.sizes[k])[pixels].sum()), float(pixels.mean())
        mass.append(m)
        ratio.append(m / area if area > 0 else 0.0)
    return {
        "pointing_game": float(np.mean(hits)),
        "mass": float(np.mean(mass)),
        "mass_over_area": float(np.mean(ratio)),
    }


def grounding_report(
    maps: Any, boxes: Any = None, *, image_size: Any, masks: Any = None, seed: int = 0
) -> dict[str, Any]:
    """Pointing game and mass in the object, with the uniform and shuffled baselines.

    Returns ``{"n", "pointing_game", "mass", "mass_over_area", "uniform": {...},
    "shuffled": {...}}``; rates are fractions in [0, 1]. Arguments as for `pointing_game`; the
    shuffled baseline scores each object with another example's map (a seeded derangement).
    """
    grids = _as_maps(maps)
    n = len(grids)
    if n == 0:
        raise ValueError("maps is empty: nothing to score")
    regions = _Regions(n, boxes, masks, image_size)
    report: dict[str, Any] = {"n": n, **_summary(grids, regions)}
    uniform = [
        uniform_pointing(
            g.shape, regions.boxes[k], image_size=regions.sizes[k], masks=regions.masks[k], n=1
        )[0]
        for k, g in enumerate(grids)
    ]
    report["uniform"] = {"pointing_game": float(np.mean(uniform)), "mass_over_area": 1.0}
    shuffled = [grids[int(p)] for p in _derangement(n, seed)]
    report["shuffled"] = _summary(shuffled, regions)
    return report
