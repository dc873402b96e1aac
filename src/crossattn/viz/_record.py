"""Normalise what the viewers accept into one record: weights (layers, H, L, S) and tokens.

Shape legend: L target (query) length, S source (context) length, H heads. Rows are targets,
columns are sources, as in every attention map of crossattn.

Accepted in place of weights:
    (L, S), (H, L, S) or (layers, H, L, S) tensors or arrays;
    an `AttentionRecorder` (or the path of a file it saved), or its `maps` dict
    (layer name -> list with one tensor per call, each (B, L, S) or (B, heads, L, S)).

Alignment links are given in Pharaoh order, source index first: ``"0-0 1-2 3p4"``
(``p``, ``P`` or ``?`` marks a possible link), pairs ``(source, target)`` (a
`crossattn.data.pharaoh.PossibleLink` is possible), triples ``(source, target, "sure" |
"possible")``, ``{"sure": pairs, "possible": pairs}``, or a bool (L, S) matrix with True at each
link. The record holds them as `Link` / `PossibleLink` pairs ``(source, target)``, the one link
type of `crossattn.data.pharaoh`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from .. import _checks
from .._checks import integer as check_int  # noqa: F401  (the rule viz/examples.py uses)
from ..data.pharaoh import Link, PossibleLink, read_link
from ._image import check_box, patch_axis, square_grid
from ._image import image_array as _image_array

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AttentionRecord", "Link", "RecordOptions", "as_record", "normalize_links", "to_numpy"]


@dataclass
class AttentionRecord:
    """Everything a viewer draws.

    Attributes:
        weights: float32 (layers, H, L, S), finite, rows are target tokens.
        layer_names: one name per layer.
        head_mean: True when the record holds only the head mean (H == 1).
        source_tokens: S strings (the columns), or None when the columns are image patches.
        target_tokens: L strings (the rows), or None when the rows are image patches.
        links: gold links; predicted: predicted links.
        image: (height, width, 3) uint8 or None; grid: (h, w) patch grid of the image.
        patches: the side whose tokens are the image's patches, "target" (rows, h * w == L)
            or "source" (columns, h * w == S); None without an image.
        box: an object's [x0, y0, x1, y1] in the image's pixels (x1, y1 exclusive), or None.
    """

    weights: np.ndarray
    layer_names: list[str]
    head_mean: bool
    source_tokens: list[str] | None
    target_tokens: list[str] | None
    links: list[Link] = field(default_factory=list)
    predicted: list[Link] = field(default_factory=list)
    image: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    patches: str | None = None
    box: tuple[float, float, float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.weights.shape)  # type: ignore[return-value]


def check_grid(grid: Any, length: int, name: str = "grid", axis: str = "L") -> tuple[int, int]:
    """A (h, w) patch grid of positive ints with h * w == `length` (the map's `axis`, L or S)."""
    h, w = _checks.positive_int_pair(grid, name, "(h, w)")
    if h * w != length:
        raise ValueError(
            f"{name} {(h, w)} must be (h, w) with h * w == {axis} = {length} image patches "
            f"(the map's {'columns' if axis == 'S' else 'rows'}), h, w > 0"
        )
    return h, w


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A tensor, array or nested list as a float32 numpy array (on the CPU, detached)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(getattr(x, "layout", "torch.strided")) != "torch.strided":  # top-k map (CSR)
            x = x.to_dense()
        if hasattr(x, "float") and x.dtype.is_floating_point and x.dtype.itemsize < 4:
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a tensor or array of numbers, got {type(x).__name__}"
        ) from err
    return arr


def _is_capture(obj: Any) -> bool:
    if isinstance(obj, (str, os.PathLike)):
        return True
    if hasattr(obj, "maps") and isinstance(obj.maps, Mapping):
        return True
    if isinstance(obj, Mapping) and obj:
        first = next(iter(obj.values()))
        return isinstance(first, (list, tuple)) or hasattr(first, "shape")
    return False


def _load_capture(obj: Any) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """(maps, metadata) of a recorder, a saved capture file, or a bare maps dict.

    The metadata also carries the recorder's ``image`` and ``grid`` under those keys."""
    if isinstance(obj, (str, os.PathLike)):
        from ..capture import AttentionRecorder

        obj = AttentionRecorder.load(obj)
    if hasattr(obj, "maps"):
        meta: dict[str, Any] = {}
        for attr in ("metadata", "meta", "info"):
            value = getattr(obj, attr, None)
            if isinstance(value, Mapping):
                meta.update(value)
        for attr in ("tokens", "source_tokens", "target_tokens", "image", "grid"):
            value = getattr(obj, attr, None)
            if value is not None and attr not in meta:
                meta[attr] = value
        return obj.maps, meta
    return obj, {}


def _combine_calls(name: str, calls: Sequence[np.ndarray], step: int | str | None) -> np.ndarray:
    """One (H, L, S) map per layer from its calls (each (H, L_i, S), batch already chosen)."""
    if isinstance(step, int):
        if not -len(calls) <= step < len(calls):
            raise ValueError(
                f"step={step} is out of range for layer {name!r}, which recorded {len(calls)} calls"
            )
        return calls[step]
    if step not in (None, "concat", "mean", "last"):
        raise ValueError(f"step must be an int, 'concat', 'mean', 'last' or None, got {step!r}")
    if len(calls) == 1:
        return calls[0]
    lengths = [c.shape[1] for c in calls]
    if step is None:
        if all(n == 1 for n in lengths):
            step = "concat"  # one target token per decoding step (with a key/value cache)
        elif lengths == list(range(lengths[0], lengths[0] + len(lengths))):
            step = "last"  # decoding without a cache: the last call holds every row
        elif len(set(lengths)) == 1:
            step = "mean"  # timesteps of a diffusion model, or repeated forward calls
        else:
            raise ValueError(
                f"layer {name!r} recorded calls with target lengths {lengths}; pass step= to "
                "choose one call (an int), or step='concat'"
            )
    if step == "last":
        return calls[-1]
    if step == "concat":
        return np.concatenate(list(calls), axis=1)
    if len(set(lengths)) != 1:
        raise ValueError(
            f"step='mean' needs calls of equal target length; layer {name!r} has {lengths}"
        )
    return np.mean(np.stack(list(calls)), axis=0)


def _resize_rows(w: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """(H, src_h * src_w, S) patch maps resampled bilinearly to (H, dst_h * dst_w, S)."""
    import torch
    import torch.nn.functional as F

    h, _, s = w.shape
    grid = torch.from_numpy(w).reshape(h, src[0], src[1], s).permute(0, 3, 1, 2)  # (H, S, h, w)
    out = F.interpolate(grid, size=dst, mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(h, dst[0] * dst[1], s).numpy()  # (H, L, S)


def _layer_map(
    name: str, calls: Any, batch: int, step: int | str | None
) -> tuple[np.ndarray, bool]:
    """One layer's (heads, L, S) map for batch item `batch`, and whether it is a head mean."""
    if hasattr(calls, "shape"):
        calls = [calls]
    if len(calls) == 0:
        raise ValueError(f"layer {name!r} of the capture recorded no calls")
    chosen = []
    head_mean = True
    for i, call in enumerate(calls):
        arr = to_numpy(call, f"capture map {name!r}[{i}]")
        if arr.ndim == 3:  # (B, L, S) head mean
            arr = arr[:, None]  # (B, 1, L, S)
        elif arr.ndim == 4:  # (B, heads, L, S)
            head_mean = False
        else:
            raise ValueError(
                f"capture map {name!r}[{i}] must be (B, L, S) or (B, heads, L, S), got shape "
                f"{tuple(arr.shape)}"
            )
        if not -arr.shape[0] <= batch < arr.shape[0]:
            raise ValueError(
                f"batch={batch} is out of range: capture map {name!r}[{i}] has batch size "
                f"{arr.shape[0]}"
            )
        chosen.append(arr[batch])  # (heads, L, S)
    sources = {c.shape[2] for c in chosen}
    if len(sources) != 1 and not isinstance(step, int):
        raise ValueError(
            f"layer {name!r} recorded calls over different source lengths {sorted(sources)} "
            "(self-attention with a cache?); pass step= to choose one call"
        )
    return _combine_calls(name, chosen, step), head_mean


def _pick_layers(
    combined: dict[str, tuple[np.ndarray, bool]],
    source_length: int | None,
    target_length: int | None,
) -> list[str]:
    """The layers that make one map: same heads and S (and L unless they are image grids),
    preferring the shape of the tokens, else the most layers."""

    def fits(key: tuple[int, int], length: int | None) -> tuple[bool, bool, int]:
        members = [n for n, (w, _) in combined.items() if (w.shape[0], w.shape[2]) == key]
        lengths = [combined[n][0].shape[1] for n in members]
        return (
            source_length is None or key[1] == source_length,
            length is None or length in lengths,
            len(members),
        )

    keys = list(dict.fromkeys((w.shape[0], w.shape[2]) for w, _ in combined.values()))
    best = max(keys, key=lambda k: fits(k, target_length))  # first of equals: recording order
    names = [n for n, (w, _) in combined.items() if (w.shape[0], w.shape[2]) == best]
    lengths = [combined[n][0].shape[1] for n in names]
    if len(set(lengths)) > 1 and (
        target_length in lengths or any(square_grid(n) is None for n in lengths)
    ):
        keep = target_length if target_length in lengths else max(lengths, key=lengths.count)
        names = [n for n, length in zip(names, lengths) if length == keep]
    return names


def _capture_to_array(
    maps: Mapping[str, Any],
    *,
    batch: int,
    step: int | str | None,
    layers: Sequence[str] | None,
    grid: tuple[int, int] | None,
    source_length: int | None = None,
    target_length: int | None = None,
) -> tuple[np.ndarray, list[str], bool, tuple[int, int] | None]:
    if not maps:
        raise ValueError("the capture holds no maps: record at least one call first")
    if layers is not None:
        names = list(layers)
        missing = [n for n in names if n not in maps]
        if missing:
            raise ValueError(f"layers {missing} are not in the capture; it has {list(maps.keys())}")
        if not names:
            raise ValueError("layers=[] chooses no layer; leave it None for every layer")
        combined = {n: _layer_map(n, maps[n], batch, step) for n in names}
    else:
        # Every layer that makes a map; those that cannot be drawn with the others (the
        # self-attention layers of a model, other resolutions) are left out, with a warning.
        combined, errors = {}, {}
        for n in maps:
            try:
                combined[n] = _layer_map(n, maps[n], batch, step)
            except ValueError as err:
                errors[n] = err
        if not combined:
            raise next(iter(errors.values()))
        names = _pick_layers(combined, source_length, target_length)
        left_out = [n for n in maps if n not in names]
        if left_out:
            warnings.warn(
                f"showing {len(names)} layers of the capture ({names[0]!r}...); left out "
                f"{left_out}, whose maps do not match theirs in heads, source length or "
                "target length (self-attention?). Choose with layers=[...]",
                stacklevel=4,
            )
        combined = {n: combined[n] for n in names}
    per_layer = [combined[n][0] for n in names]
    head_mean = all(combined[n][1] for n in names)
    heads = {w.shape[0] for w in per_layer}
    if len(heads) != 1:
        raise ValueError(
            f"the chosen layers keep different numbers of heads {[w.shape[0] for w in per_layer]}; "
            "record the head mean (heads='mean') or choose layers with layers=[...]"
        )
    sources = {w.shape[2] for w in per_layer}
    if len(sources) != 1:
        raise ValueError(
            f"the chosen layers attend to different source lengths {[w.shape[2] for w in per_layer]}"
            "; choose layers with layers=[...]"
        )
    lengths = [w.shape[1] for w in per_layer]
    if len(set(lengths)) != 1:
        # Text-to-image layers at several resolutions: resample every map to the finest grid.
        grids = [square_grid(n) for n in lengths]
        if grid is not None or any(g is None for g in grids):
            raise ValueError(
                f"the chosen layers have different target lengths {lengths}; choose layers of "
                "one resolution with layers=[...]"
            )
        finest = max(grids, key=lambda g: g[0] * g[1])  # type: ignore[index]
        per_layer = [
            w if g == finest else _resize_rows(w, g, finest)  # type: ignore[arg-type]
            for w, g in zip(per_layer, grids)
        ]
        grid = finest
    return np.stack(per_layer), names, head_mean, grid


def _tokens(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"{name} must be a list of strings (one per token), got a single string")
    try:
        return [str(t) for t in value]
    except TypeError as err:
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}") from err


def _meta_tokens(meta: Mapping[str, Any], batch: int) -> tuple[Any, Any]:
    src = meta.get("source_tokens")
    tgt = meta.get("target_tokens")
    tokens = meta.get("tokens")
    if isinstance(tokens, Mapping):
        src = src if src is not None else tokens.get("source", tokens.get("source_tokens"))
        tgt = tgt if tgt is not None else tokens.get("target", tokens.get("target_tokens"))
    elif tokens is not None and src is None:
        src = tokens

    def pick(v: Any) -> Any:  # a per-batch list of token lists -> the chosen batch item
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
            return v[batch]
        return v

    return pick(src), pick(tgt)


def _pair(item: Any, name: str) -> tuple[int, int, bool]:
    if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
        raise ValueError(
            f"{name} items must be (source, target) or (source, target, 'sure'|'possible'), "
            f"got {item!r}"
        )
    kind = item[2] if len(item) == 3 else getattr(item, "sure", "sure")
    if kind not in ("sure", "possible", True, False):
        raise ValueError(f"{name}: the kind of a link must be 'sure' or 'possible', got {kind!r}")
    source = _checks.integer(item[0], f"{name}: in {item!r}, the source index of a link")
    target = _checks.integer(item[1], f"{name}: in {item!r}, the target index of a link")
    return source, target, kind in ("sure", True)


def normalize_links(links: Any, length: int, source_length: int, name: str = "links") -> list[Link]:
    """Links in any accepted form (see the module docstring) as a checked list of `Link`."""
    if links is None:
        return []
    triples: list[tuple[int, int, bool]] = []
    if isinstance(links, str):
        for item in links.split():
            link = read_link(item, possible="pP?")
            if link is None:
                raise ValueError(
                    f"{name}: {item!r} is not a Pharaoh link 'source-target' (or 'sourcePtarget' "
                    "for a possible link)"
                )
            triples.append((link.source, link.target, link.sure))
    elif isinstance(links, Mapping):
        unknown = set(links) - {"sure", "possible"}
        if unknown:
            raise ValueError(f"{name} keys must be 'sure' and 'possible', got {sorted(unknown)}")
        for kind in ("sure", "possible"):
            for item in links.get(kind, ()):
                s, t, _ = _pair(item, name)
                triples.append((s, t, kind == "sure"))
    elif hasattr(links, "shape") and hasattr(links, "dtype"):
        raw = links.detach().cpu().numpy() if hasattr(links, "detach") else np.asarray(links)
        if raw.dtype != np.bool_:
            raise TypeError(
                f"{name} as a matrix must be a bool (L, S) matrix with True at each link, got "
                f"dtype {raw.dtype}"
            )
        arr = raw
        if arr.shape != (length, source_length):
            raise ValueError(
                f"{name} as a matrix must be (L, S) = ({length}, {source_length}), got "
                f"{tuple(arr.shape)}"
            )
        targets, sources = np.nonzero(arr)
        triples = [(int(s), int(t), True) for t, s in zip(targets, sources)]
    elif isinstance(links, Iterable):
        triples = [_pair(item, name) for item in links]
    else:
        raise TypeError(
            f"{name} must be a Pharaoh string, pairs, a dict or a matrix, got {links!r}"
        )
    out = []
    for s, t, sure in triples:
        if not (0 <= s < source_length and 0 <= t < length):
            raise ValueError(
                f"{name}: link (source {s}, target {t}) is outside the map of {length} target x "
                f"{source_length} source tokens"
            )
        out.append(Link(s, t) if sure else PossibleLink(s, t))
    # by target, then source; a link given as sure and as possible is sure
    return list(dict.fromkeys(sorted(out, key=lambda k: (k.target, k.source, not k.sure))))


def check_weight_values(arr: np.ndarray) -> None:
    """Attention weights to draw: not empty, finite and non-negative (ValueError otherwise)."""
    if min(arr.shape) == 0:
        raise ValueError(f"weights must not be empty, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("weights hold NaN or infinite values; attention weights must be finite")
    if arr.min() < 0:
        raise ValueError(f"weights must be non-negative, got a minimum of {float(arr.min()):.3g}")


class RecordOptions(TypedDict, total=False):
    """What `as_record` takes by keyword beside the weights and tokens (see there for each),
    declared once for the viewers that pass it on."""

    links: Any
    predicted: Any
    image: Any
    grid: tuple[int, int] | None
    box: Any
    layer_names: Sequence[str] | None
    layers: Sequence[str] | None
    batch: int
    step: int | str | None


RECORD_OPTIONS = tuple(RecordOptions.__annotations__)  # the keywords, in the order above


def as_record(
    weights: Any,
    source_tokens: Sequence[str] | None = None,
    target_tokens: Sequence[str] | None = None,
    **options: Unpack[RecordOptions],
) -> AttentionRecord:
    """Check and normalise viewer input into an `AttentionRecord`.

    Keyword arguments are those of `RecordOptions`, all optional (None, and batch 0, by
    default); another keyword raises a TypeError.

    Args:
        weights: (L, S), (H, L, S) or (layers, H, L, S); or a capture (see the module docstring).
        source_tokens: S strings; defaults to the capture's tokens, else "0", "1", ...
        target_tokens: L strings; defaults likewise.
        links, predicted: gold and predicted alignment links (see the module docstring).
        image: the image whose patches are one side of the map: the L rows (text-to-image
            attention; leave target_tokens None) or the S columns (a question's tokens over
            the image; give target_tokens and leave source_tokens None). See `patch_axis`.
        grid: (h, w) patch grid of the image, h * w == L or S; defaults to a square grid.
        box: an object's [x0, y0, x1, y1] in the image's pixels (x1, y1 exclusive), drawn for
            reference.
        layer_names: names of the layers of a (layers, H, L, S) tensor.
        layers: for a capture, the layer names to keep (default all, in recording order).
        batch: for a capture, the batch item to show.
        step: for a capture, how to combine a layer's calls: an int picks one call, 'concat'
            joins one-token decoding steps, 'mean' averages timesteps, 'last' keeps the last
            call; None decides from the shapes.
    """
    unknown = [k for k in options if k not in RECORD_OPTIONS]
    if unknown:
        raise TypeError(
            f"as_record() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(RECORD_OPTIONS)}"
        )
    meta: dict[str, Any] = {}
    head_mean = False
    image, grid, layers, step = (options.get(k) for k in ("image", "grid", "layers", "step"))
    layer_names = options.get("layer_names")
    batch = _checks.integer(options.get("batch", 0), "batch")
    if step is not None and not isinstance(step, str):
        step = _checks.integer(step, "step")
    if layers is not None and (isinstance(layers, str) or not isinstance(layers, Iterable)):
        raise TypeError(f"layers must be a list of layer names, got {layers!r}")
    if _is_capture(weights):
        maps, meta = _load_capture(weights)
        if image is None and meta.get("image") is not None:
            image = meta["image"]
            if grid is None and meta.get("grid") is not None:
                grid = tuple(meta["grid"])  # type: ignore[assignment]
        meta_src, meta_tgt = _meta_tokens(meta, batch)
        src_known = source_tokens if source_tokens is not None else meta_src
        tgt_known = target_tokens if target_tokens is not None else meta_tgt
        arr, names, head_mean, grid = _capture_to_array(
            maps,
            batch=batch,
            step=step,
            layers=layers,
            grid=grid,
            source_length=None if src_known is None else len(src_known),
            target_length=None if tgt_known is None else len(tgt_known),
        )
        if layer_names is not None:
            raise ValueError("layer_names applies to tensors; a capture names its own layers")
    else:
        chosen = [
            f"{k}={v!r}"
            for k, v, unset in (("layers", layers, None), ("batch", batch, 0), ("step", step, None))
            if v != unset
        ]
        if chosen:
            raise ValueError(
                f"{', '.join(chosen)} {'apply' if len(chosen) > 1 else 'applies'} to captures (an AttentionRecorder, its saved file or "
                f"its maps), not to a tensor of weights; index the tensor instead"
            )
        arr, names, head_mean = _tensor_weights(weights, layer_names)
    n_layers, n_heads, length, source_length = arr.shape
    check_weight_values(arr)

    meta_src, meta_tgt = _meta_tokens(meta, batch)
    src = _tokens(source_tokens if source_tokens is not None else meta_src, "source_tokens")
    tgt = _tokens(target_tokens if target_tokens is not None else meta_tgt, "target_tokens")
    img, grid, patches, box = _image_part(image, grid, options.get("box"), src, tgt, arr.shape)
    if src is None and patches != "source":
        src = [str(i) for i in range(source_length)]
    if tgt is None and patches != "target":
        tgt = [str(i) for i in range(length)]
    for what, toks, n, axis in (("source", src, source_length, "S"), ("target", tgt, length, "L")):
        if toks is not None and len(toks) != n:
            side = "source columns" if axis == "S" else "target rows"
            raise ValueError(
                f"{what}_tokens has {len(toks)} tokens but weights have {axis} = {n} {side} "
                f"(shape {tuple(arr.shape)})"
            )
    if n_heads > 1:
        head_mean = False
    return AttentionRecord(
        weights=np.ascontiguousarray(arr, dtype=np.float32),
        layer_names=names,
        head_mean=head_mean,
        source_tokens=src,
        target_tokens=tgt,
        links=normalize_links(options.get("links"), length, source_length, "links"),
        predicted=normalize_links(options.get("predicted"), length, source_length, "predicted"),
        image=img,
        grid=grid,
        patches=patches,
        box=box,
    )


def _tensor_weights(
    weights: Any, layer_names: Sequence[str] | None
) -> tuple[np.ndarray, list[str], bool]:
    """(layers, H, L, S) weights from an (L, S), (H, L, S) or (layers, H, L, S) tensor, the
    layers' names, and whether it is a head mean."""
    head_mean = False
    arr = to_numpy(weights, "weights")
    if arr.ndim == 2:  # (L, S)
        arr = arr[None, None]
        head_mean = True
    elif arr.ndim == 3:  # (H, L, S)
        arr = arr[None]
    elif arr.ndim != 4:
        raise ValueError(
            f"weights must be (L, S), (H, L, S) or (layers, H, L, S), got shape {tuple(arr.shape)}"
        )
    if layer_names is None:
        names = [f"layer {i}" for i in range(arr.shape[0])]
    else:
        names = [str(n) for n in layer_names]
        if len(names) != arr.shape[0]:
            raise ValueError(
                f"layer_names has {len(names)} names for weights with {arr.shape[0]} layers "
                f"(shape {tuple(arr.shape)})"
            )
    return arr, names, head_mean


def _image_part(
    image: Any,
    grid: Any,
    box: Any,
    src: list[str] | None,
    tgt: list[str] | None,
    shape: tuple[int, ...],
) -> tuple[np.ndarray | None, tuple[int, int] | None, str | None, tuple[float, ...] | None]:
    """(image, grid, patches, box) of a record of (layers, H, L, S) weights: the image as
    (height, width, 3) uint8, the grid checked against the side that holds its patches."""
    length, source_length = shape[2], shape[3]
    if image is None:
        if box is not None:
            raise ValueError("box is drawn on an image: pass image= with it, or leave box None")
        return None, None if grid is None else check_grid(grid, length), None, None
    img = _image_array(image)
    patches = patch_axis(
        grid, length, source_length, source_known=src is not None, target_known=tgt is not None
    )
    n, axis = (length, "L") if patches == "target" else (source_length, "S")
    if grid is None:
        grid = square_grid(n)
        if grid is None:
            raise ValueError(
                f"grid=(h, w) is needed: {axis} = {n} image patches is not a square number"
            )
    grid = check_grid(grid, n, axis=axis)
    return img, grid, patches, None if box is None else check_box(box, img.shape)
