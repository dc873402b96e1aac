"""Images for the viewers: pixels as (height, width, 3) uint8, the axis of a map that holds the
image's patches, and an object's box.

A map is (L, S): rows are target (query) tokens, columns source (context) tokens. Its image
patches are either the rows (text-to-image attention: a diffusion UNet's patches read the
prompt) or the columns (image-to-text grounding: a question's tokens read the image patches).
Boxes are ``[x0, y0, x1, y1]`` in the image's pixels, x1 and y1 exclusive.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _checks

__all__ = ["check_box", "image_array", "patch_axis", "square_grid"]


def square_grid(length: int) -> tuple[int, int] | None:
    """(side, side) when `length` is a square number, else None."""
    side = math.isqrt(length)
    return (side, side) if side * side == length else None


def patch_axis(
    grid: Any, length: int, source_length: int, *, source_known: bool, target_known: bool
) -> str:
    """Which side of an (L, S) map holds the image's patches: "target" (rows) or "source".

    Tokens on one side only put the patches on the other side. Otherwise (no tokens, or both)
    the grid decides, rows first: the side whose length is h * w (or a square number)."""
    if source_known != target_known:
        return "target" if source_known else "source"
    if isinstance(grid, Sequence) and len(grid) == 2 and not isinstance(grid, (str, bytes)):
        h, w = grid
        if isinstance(h, numbers.Integral) and isinstance(w, numbers.Integral):
            if h * w != length and h * w == source_length:
                return "source"
        return "target"
    if square_grid(length) is None and square_grid(source_length) is not None:
        return "source"
    return "target"


def check_box(box: Any, image_shape: tuple[int, ...], name: str = "box") -> tuple[float, ...]:
    """`box` [x0, y0, x1, y1] as four floats inside an image of shape (height, width, ...)."""
    return _checks.box(box, name, width=image_shape[1], height=image_shape[0])


def image_array(image: Any, name: str = "image") -> np.ndarray:
    """An image as (height, width, 3) uint8: accepts (H, W, 3|4), (3, H, W) or (H, W), uint8,
    float in [0, 1] (or 0..255), or another integer type holding values in 0..255 (a 16-bit
    image must be scaled to 0..255 or [0, 1] first: its values are not guessed)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    raw = image
    if hasattr(raw, "detach"):
        raw = raw.detach().cpu().numpy()
    arr = np.asarray(raw)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"{name} must be (height, width, 3), (3, height, width) or (height, width), got "
            f"shape {tuple(np.shape(raw))}"
        )
    arr = arr[..., :3]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(np.shape(raw))}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold uint8, integer or float values, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name} of dtype {arr.dtype} must hold values in 0..255, got {lo}..{hi}; "
                "scale it to uint8 (e.g. a 16-bit image // 257) or to floats in [0, 1]"
            )
        return np.ascontiguousarray(arr.astype(np.uint8))
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if arr.max() > 1.0 + 1e-6:  # 0..255 floats
        arr = arr / 255.0
    return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
