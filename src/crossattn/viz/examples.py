"""Several examples in one viewer page: each its own tokens, maps, and optional image and box.

Shape legend: L target (query) length, S source (context) length, H heads, B batch, T question
tokens, P = h * w image patches.

An example is an `AttentionRecord` or a dict with the keys

    weights (or maps)   (L, S), (H, L, S) or (layers, H, L, S), or a capture, as `to_html` takes
    tokens              the L query tokens (rows): a question's or a caption's words
    source, target      the S source tokens and the L target tokens (text to text)
    image, grid, box    the image whose patches are the columns (with `tokens`) or the rows,
                        its (h, w) patch grid, and an object's [x0, y0, x1, y1] in its pixels
    links, predicted    alignment links (see `crossattn.viz.to_html`)
    layer_names         names of the layers
    title, caption      the example's name in the picker, and a line under it

`batch_examples` cuts a batch of a model's maps (one (B, heads, T, P) tensor per layer, as
`crossattn.models.vqa.VQAModel(..., return_maps=True)` returns) into such dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._record import AttentionRecord, as_record, check_int, to_numpy

__all__ = ["batch_examples", "is_example_list", "normalize_examples"]

_KEYS = {
    "weights", "maps", "tokens", "source", "target", "source_tokens", "target_tokens", "image",
    "grid", "box", "links", "predicted", "layer_names", "title", "caption",
}  # fmt: skip


def is_example_list(obj: Any) -> bool:
    """True for a non-empty list or tuple of examples: records or dicts (a list of dicts is
    never a tensor of weights, so a dict with a wrong key is named as an example's error)."""
    return (
        isinstance(obj, (list, tuple))
        and len(obj) > 0
        and all(isinstance(i, (AttentionRecord, Mapping)) for i in obj)
    )


def check_text(value: Any, name: str) -> str | None:
    """`value` if it is a string or None; TypeError naming `name` otherwise."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {value!r} ({type(value).__name__})")
    return value


def _one(item: Any, k: int) -> tuple[AttentionRecord, str | None, str | None]:
    """One example as (record, title, caption); errors name the example."""
    if isinstance(item, AttentionRecord):
        return item, None, None
    where = f"examples[{k}]"
    if not isinstance(item, Mapping):
        raise TypeError(f"{where} must be an AttentionRecord or a dict, got {type(item).__name__}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known keys: {sorted(_KEYS)}")
    if ("weights" in item) == ("maps" in item):
        raise ValueError(f"{where} must hold one of 'weights' and 'maps' (the same thing)")
    source = item.get("source", item.get("source_tokens"))
    target = item.get("target", item.get("target_tokens"))
    if item.get("tokens") is not None:
        if target is not None:
            raise ValueError(f"{where}: give 'tokens' or 'target' (the L query tokens), not both")
        target = item["tokens"]
    try:
        rec = as_record(
            item.get("weights", item.get("maps")),
            source,
            target,
            links=item.get("links"),
            predicted=item.get("predicted"),
            image=item.get("image"),
            grid=item.get("grid"),
            box=item.get("box"),
            layer_names=item.get("layer_names"),
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from err
    return (
        rec,
        check_text(item.get("title"), f"{where}['title']"),
        check_text(item.get("caption"), f"{where}['caption']"),
    )


def normalize_examples(
    examples: Sequence[Any],
) -> list[tuple[AttentionRecord, str | None, str | None]]:
    """Each example checked, as (record, title, caption). Every example holds the same layers
    and heads (the page's layer and head choices apply to all); lengths and images may differ."""
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError(f"examples must be a non-empty list of examples, got {examples!r}")
    out = [_one(item, k) for k, item in enumerate(examples)]
    first = out[0][0]
    for k, (rec, _, _) in enumerate(out[1:], start=1):
        if rec.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"examples[{k}] has {rec.shape[0]} layers x {rec.shape[1]} heads but examples[0] "
                f"has {first.shape[0]} x {first.shape[1]}; every example needs the same layers "
                "and heads (their token counts may differ)"
            )
    return out


def _per_layer(maps: Any) -> list[np.ndarray]:
    """One (B, heads, T, P) array per layer from a list of them, a dict of them, or one
    (layers, B, heads, T, P) array."""
    if isinstance(maps, Mapping):
        maps = list(maps.values())
    if isinstance(maps, (list, tuple)):
        arrays = [to_numpy(m, f"maps[{i}]") for i, m in enumerate(maps)]
    else:
        arrays = list(to_numpy(maps, "maps"))
    if not arrays:
        raise ValueError("maps must hold at least one layer's (B, heads, T, P) maps")
    for i, a in enumerate(arrays):
        if a.ndim != 4 or a.shape != arrays[0].shape:
            raise ValueError(
                f"maps must be one (B, heads, T, P) map per layer, all of one shape; layer {i} "
                f"has shape {tuple(a.shape)}, layer 0 {tuple(arrays[0].shape)}"
            )
    return arrays


def _scaled_box(box: Any, sizes: Any, b: int, image: Any) -> Any:
    """Item b's box, scaled from the (width, height) it was measured on to `image`'s pixels."""
    if sizes is None:
        return box
    if image is None:
        raise ValueError("box_sizes scales boxes to the images: pass images= with it")
    width, height = sizes[b]
    if not (width > 0 and height > 0):
        raise ValueError(f"box_sizes[{b}] must be a positive (width, height), got {sizes[b]!r}")
    shape = image.shape  # (3, H, W) or (H, W, 3)
    h, w = (shape[1], shape[2]) if shape[0] in (1, 3, 4) and shape[-1] not in (3, 4) else shape[:2]
    values = box.tolist() if hasattr(box, "tolist") else list(box)
    if len(values) != 4:
        raise TypeError(f"boxes[{b}] must be [x0, y0, x1, y1] (four numbers), got {box!r}")
    kx, ky = w / width, h / height
    return [values[0] * kx, values[1] * ky, values[2] * kx, values[3] * ky]


def batch_examples(
    maps: Any,
    tokens: Sequence[Sequence[str]],
    *,
    images: Any = None,
    image_index: Any = None,
    boxes: Sequence[Any] | None = None,
    box_sizes: Sequence[tuple[float, float]] | None = None,
    grid: tuple[int, int] | None = None,
    titles: Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
    layer_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """A batch of question-to-image maps as examples for `to_html` (one dict per batch item).

    Args:
        maps: one (B, heads, T, P) map per cross layer (a list, a dict name -> map, or one
            (layers, B, heads, T, P) array), rows the T question tokens (padding included),
            columns the P patches; e.g. ``VQAModel(..., return_maps=True).maps``.
        tokens: B token lists; item b keeps the first len(tokens[b]) rows (the rest is padding).
        images: (N, 3, H, W) or (N, H, W, 3) images (uint8, or floats in [0, 1]).
        image_index: (B,) the row of `images` of each item (default: row b for item b).
        boxes: B boxes [x0, y0, x1, y1] in the images' pixels, or None for an item without one.
        box_sizes: B (width, height) of the image each box was measured on (e.g. the original
            image, before it was resized for the model: ``VQAExamples.original_sizes``); the
            box is scaled to the image given. Default: the boxes are in its pixels already.
        grid: (h, w) patch grid, h * w == P (default square).
        titles, captions: B strings (default "example b" and none).
        layer_names: one name per layer (default "layer 0", ...).
    """
    layers = _per_layer(maps)
    n = layers[0].shape[0]
    if isinstance(tokens, str) or len(tokens) != n:
        raise ValueError(f"tokens must be {n} token lists (one per batch item), got {tokens!r}")
    named = (("boxes", boxes), ("box_sizes", box_sizes), ("titles", titles), ("captions", captions))
    for name, seq in named:
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} must hold {n} items (one per batch item), got {len(seq)}")
    if images is not None:
        images = images.detach().cpu().numpy() if hasattr(images, "detach") else images
        images = np.asarray(images)
        rows = np.arange(n) if image_index is None else to_numpy(image_index, "image_index")
        if rows.shape != (n,) or not np.all(rows == np.round(rows)):
            raise ValueError(f"image_index must be {n} ints (one per batch item), got {rows!r}")
        if rows.min() < 0 or rows.max() >= len(images):
            raise ValueError(f"image_index holds rows outside the {len(images)} images")
    examples = []
    for b in range(n):
        length = len(tokens[b])
        check_int(length, f"len(tokens[{b}])", minimum=1)
        ex: dict[str, Any] = {
            "weights": np.stack([m[b, :, :length] for m in layers]),  # (layers, heads, T_b, P)
            "tokens": list(tokens[b]),
            "title": titles[b] if titles is not None else f"example {b}",
            "layer_names": layer_names,
        }
        if images is not None:
            ex.update(image=images[int(rows[b])], grid=grid)
        if boxes is not None and boxes[b] is not None:
            ex["box"] = _scaled_box(boxes[b], box_sizes, b, ex.get("image"))
        if captions is not None:
            ex["caption"] = captions[b]
        examples.append(ex)
    return examples
