"""The interactive viewer: one self-contained HTML page (inline JS and CSS, no network).

Shape legend: L target (query) length, S source (context) length, H heads. Rows of a map are
target tokens, columns source tokens.

Weights travel quantised: one scale per (layer, head) map, the map divided by its maximum and
rounded to 16 bits (8 bits past 16 MiB of weights), then base64. The page dequantises them and
computes head and layer means itself, so a 1,000 x 1,000 map with a few heads stays a few MiB.
Tokens are embedded as JSON with ``<``, ``>`` and ``&`` escaped and are only ever written to
the page as text, so a token cannot close the script or inject markup.
"""

from __future__ import annotations

import base64
import html as _html
import json
import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _checks
from ._assets import asset, viewer_script
from ._colors import COLOR_STOPS
from ._record import AttentionRecord, as_record
from .examples import check_text, is_example_list, normalize_examples

__all__ = ["Viewer", "to_html", "view"]

MiB = 1 << 20
_BITS_16_LIMIT = 16 * MiB  # raw bytes of 16-bit weights past which 8 bits are used


def quantize(weights: np.ndarray, bits: int) -> tuple[bytes, list[float]]:
    """(layers, H, L, S) weights as little-endian unsigned ints and one scale per (layer, head).

    A weight w of map m is stored as round(w / scale[m] * (2**bits - 1)), scale[m] = max of m.
    """
    bits = _check_bits(bits)
    n_layers, n_heads = weights.shape[:2]
    flat = weights.reshape(n_layers * n_heads, -1)  # (layers * H, L * S)
    scales = flat.max(axis=1).astype(np.float64)
    scales[scales == 0] = 1.0
    top = (1 << bits) - 1
    q = np.rint(flat / scales[:, None].astype(np.float32) * top)
    q = q.astype("<u2" if bits == 16 else np.uint8)
    return q.tobytes(), [float(s) for s in scales]


def _check_bits(bits: Any) -> int:
    bits = _checks.integer(bits, "bits")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    return bits


def dequantize(weights: np.ndarray, bits: int) -> np.ndarray:
    """The float32 weights the page works with, for (layers, H, L, S) `weights`."""
    bits = _check_bits(bits)
    raw, scales = quantize(weights, bits)
    q = np.frombuffer(raw, dtype="<u2" if bits == 16 else np.uint8).astype(np.float32)
    q = q.reshape(len(scales), -1) * (np.asarray(scales, np.float32)[:, None] / ((1 << bits) - 1))
    return q.reshape(weights.shape)


def choose_bits(weights: np.ndarray) -> int:
    """16 bits while the weights fit in 16 MiB at 16 bits, else 8."""
    return 16 if weights.size * 2 <= _BITS_16_LIMIT else 8


def png_bytes(image: np.ndarray) -> bytes:
    """A (height, width, 3) uint8 image as PNG (stdlib zlib; no imaging library needed)."""
    height, width, _ = image.shape
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1
    )  # (height, 1 + 3 * width): filter byte 0 before each row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _index(value: int | str | None, names: Sequence[str], what: str, default: int) -> int:
    """A layer or head choice as an index; -1 is the mean."""
    if value is None:
        return default
    if isinstance(value, str):
        if value == "mean":
            return -1
        if value not in names:
            raise ValueError(f"{what}={value!r} is not one of {list(names)} or 'mean'")
        return list(names).index(value)
    try:
        index = _checks.integer(value, what)
    except _checks.ArgumentTypeError:
        kinds = "an index, a layer name or 'mean'" if what == "layer" else "an index or 'mean'"
        raise _checks.ArgumentTypeError(f"{what} must be {kinds}, got {value!r}") from None
    if not -len(names) <= index < len(names):
        raise ValueError(f"{what}={index} is out of range for {len(names)} {what}s")
    return index % len(names)


def payload(
    rec: AttentionRecord,
    *,
    title: str | None = None,
    caption: str | None = None,
    threshold: float = 0.1,
    layer: int | str | None = None,
    head: int | str | None = None,
    bits: int | None = None,
) -> dict[str, Any]:
    """The JSON object the viewer script draws (also what `crossattn serve` answers)."""
    threshold = _checks.unit_real(threshold, "threshold")
    check_text(title, "title")
    check_text(caption, "caption")
    n_layers, n_heads, length, source_length = rec.shape
    bits = choose_bits(rec.weights) if bits is None else _check_bits(bits)
    raw, scales = quantize(rec.weights, bits)
    image = None
    if rec.image is not None:
        uri = "data:image/png;base64," + base64.b64encode(png_bytes(rec.image)).decode("ascii")
        image = {
            "src": uri,
            "grid": list(rec.grid),  # type: ignore[arg-type]
            "patches": rec.patches,  # "target": the rows are patches; "source": the columns
            "size": [int(rec.image.shape[1]), int(rec.image.shape[0])],  # (width, height)
            "box": None if rec.box is None else list(rec.box),
        }
    return {
        "v": 1,
        "title": title or "Cross-attention",
        "caption": caption,
        "L": length,
        "S": source_length,
        "layers": rec.layer_names,
        "heads": n_heads,
        "headMean": rec.head_mean,
        "source": rec.source_tokens,
        "target": rec.target_tokens,
        "bits": bits,
        "scales": scales,
        "data": base64.b64encode(raw).decode("ascii"),
        "links": [[k.target, k.source, int(k.sure)] for k in rec.links],
        "predicted": [[k.target, k.source] for k in rec.predicted],
        "image": image,
        "threshold": float(threshold),
        "layer": _index(layer, rec.layer_names, "layer", 0),
        "head": _index(head, [str(h) for h in range(n_heads)], "head", -1),
        "colors": [[pos, color] for pos, color in COLOR_STOPS],
    }


def _fragment(data: dict[str, Any], *, with_assets: bool = True) -> str:
    """The viewer's markup: its root, its data, and (optionally) its style and script."""
    root_id = "ca-" + uuid.uuid4().hex[:12]
    parts = []
    if with_assets:
        parts.append(f"<style>\n{asset('viewer.css')}</style>")
    parts.append(
        f'<div class="ca-viewer" id="{root_id}" data-ca-auto="1">'
        f'<script type="application/json" class="ca-data">{script_json(data)}</script></div>'
    )
    if with_assets:
        parts.append(f"<script>\n{viewer_script()}</script>")
    return "\n".join(parts)


def page(data: dict[str, Any]) -> str:
    """A whole HTML document around one viewer."""
    title = _html.escape(data.get("title") or "Cross-attention")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Forbid every fetch: the page is self-contained, and data: images are all it loads.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        f"<title>{title}</title>\n"
        "<style>html,body{margin:0;background:#fff}</style>\n"
        f"</head>\n<body>\n{_fragment(data)}\n</body>\n</html>\n"
    )


def _size(n: int) -> str:
    """A byte count for people: bytes below 1 KiB, KiB below 1 MiB, else MiB."""
    if n < 1024:
        return f"{n} bytes"
    if n < MiB:
        return f"{n / 1024:.1f} KiB"
    return f"{n / MiB:.1f} MiB"


def _check_max_bytes(max_bytes: Any) -> int | None:
    return None if max_bytes is None else _checks.positive_int(max_bytes, "max_bytes (bytes)")


def _check_size(text: str, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        limit = f"{max_bytes} bytes" if max_bytes < 1024 else f"{max_bytes} ({_size(max_bytes)})"
        raise ValueError(
            f"the page would be {_size(size)}, over max_bytes={limit}; "
            "keep fewer examples, layers or heads (layers=[...], the head mean), or raise "
            "max_bytes"
        )


def examples_payload(
    examples: list[tuple[AttentionRecord, str | None, str | None]],
    *,
    title: str | None = None,
    bits: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The JSON object of a page that browses several examples: one `payload` per example
    (its title the example's name in the picker), all quantised with the same bits. Each
    distinct image is stored once in ``images``; an example's ``image["ref"]`` indexes it."""
    if bits is None:
        total = sum(rec.weights.size for rec, _, _ in examples)
        bits = 16 if total * 2 <= _BITS_16_LIMIT else 8
    pages = [
        payload(rec, title=name or f"example {k}", caption=caption, bits=bits, **options)
        for k, (rec, name, caption) in enumerate(examples)
    ]
    check_text(title, "title")
    # Questions about one image share its picture: each image travels once, examples name it.
    images: dict[str, int] = {}
    for p in pages:
        if p["image"] is not None:
            p["image"]["ref"] = images.setdefault(p["image"].pop("src"), len(images))
    return {
        "v": 1,
        "title": title or "Cross-attention",
        "examples": pages,
        "images": list(images),
        "example": 0,
    }


class Viewer:
    """An attention viewer: shows inline in Jupyter (`_repr_html_`) and saves as one HTML file.

    Attributes:
        record: the normalised `AttentionRecord` (weights (layers, H, L, S) and tokens) of the
            first example; records: every example's.
        data: the JSON object the page draws.
    """

    def __init__(
        self,
        record: AttentionRecord,
        data: dict[str, Any],
        max_bytes: int | None,
        records: list[AttentionRecord] | None = None,
    ):
        self.record = record
        self.records = records if records is not None else [record]
        self.data = data
        self.max_bytes = max_bytes

    @property
    def html(self) -> str:
        """The whole self-contained HTML document."""
        text = page(self.data)
        _check_size(text, self.max_bytes)
        return text

    def save(self, path: str | os.PathLike) -> str:
        """Write the page to `path` (UTF-8) and return the path as a string."""
        return _write(path, self.html)

    def _repr_html_(self) -> str:
        text = _fragment(self.data)
        _check_size(text, self.max_bytes)
        return text

    def __repr__(self) -> str:
        layers, heads, length, source_length = self.record.shape
        if len(self.records) > 1:
            return f"Viewer({len(self.records)} examples, layers={layers}, heads={heads})"
        return (
            f"Viewer(layers={layers}, heads={heads}, L={length} target, S={source_length} source)"
        )


def _examples_viewer(examples: Any, options: dict[str, Any], per_record: dict[str, Any]) -> Viewer:
    """The viewer of a list of examples; arguments that belong to one record are refused."""
    given = [
        k
        for k, v in per_record.items()
        if (v is not None if k != "batch" else not (isinstance(v, int) and v == 0))
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)} apply to one record; with a list of examples give them in each "
            "example's dict"
        )
    max_bytes = _check_max_bytes(options.pop("max_bytes"))
    checked = normalize_examples(examples)
    data = examples_payload(checked, **options)
    return Viewer(checked[0][0], data, max_bytes, [rec for rec, _, _ in checked])


def view(
    weights: Any,
    source_tokens: Sequence[str] | None = None,
    target_tokens: Sequence[str] | None = None,
    *,
    title: str | None = None,
    caption: str | None = None,
    threshold: float = 0.1,
    layer: int | str | None = None,
    head: int | str | None = None,
    links: Any = None,
    predicted: Any = None,
    image: Any = None,
    grid: tuple[int, int] | None = None,
    box: Any = None,
    layer_names: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    batch: int = 0,
    step: int | str | None = None,
    bits: int | None = None,
    max_bytes: int | None = 40 * MiB,
) -> Viewer:
    """The interactive viewer of attention maps, as an object for Jupyter or `.save(path)`.

    Args:
        weights: (L, S), (H, L, S) or (layers, H, L, S), rows target tokens, columns source
            tokens; or a capture in place of weights: an `AttentionRecorder`, the path of a file
            it saved, or its `maps` (layer name -> list of (B, L, S) or (B, heads, L, S)).
            Or a list of examples, each an `AttentionRecord` or a dict with its own weights,
            tokens, image, box and links (see `crossattn.viz.examples`): the page browses
            them.
        source_tokens: S strings (default: the capture's tokens, else their indices).
        target_tokens: L strings (default likewise).
        title: page title; caption: a line under it (e.g. the translation).
        threshold: initial highlight threshold in [0, 1] (adjustable on the page).
        layer: initial layer (index, name or "mean"); head: initial head (index or "mean",
            the default).
        links: gold alignment links, Pharaoh order (source index first): ``"0-0 1-2 3p4"``,
            pairs ``(source, target)``, triples ``(source, target, "sure" | "possible")``,
            ``{"sure": [...], "possible": [...]}`` or a bool (L, S) matrix.
        predicted: predicted links, same forms.
        image: an image whose patches are one side of the map, (height, width, 3) or (3,
            height, width), uint8 or float in [0, 1]: the L rows (text-to-image attention,
            with source_tokens and no target_tokens) or the S columns (a question's or a
            caption's tokens over the image, with target_tokens and no source_tokens).
        grid: (h, w) patch grid with h * w == L or S (default square).
        box: an object's [x0, y0, x1, y1] in the image's pixels (x1, y1 exclusive), drawn over
            the image for reference.
        layer_names: names of the layers of a (layers, H, L, S) tensor.
        layers, batch, step: choose from a capture (layer names, batch item, and how to
            combine a layer's calls: an int picks one, "concat" joins one-token decoding steps,
            "mean" averages timesteps; None decides from the shapes). They apply to captures
            only: with a tensor they raise ValueError (index the tensor instead).
        bits: 8 or 16 bits per weight (default 16, or 8 past 16 MiB of weights).
        max_bytes: refuse to make a page larger than this many bytes, a positive int (None: no
            limit).

    Returns:
        The `Viewer`; its ``html`` is the page.
    """
    tokens = dict(source_tokens=source_tokens, target_tokens=target_tokens)
    record_args = dict(
        links=links, predicted=predicted, image=image, grid=grid, box=box,
        layer_names=layer_names, layers=layers, batch=batch, step=step,
    )  # fmt: skip
    options = dict(title=title, threshold=threshold, layer=layer, head=head, bits=bits)
    if is_example_list(weights):
        per_record = {**tokens, "caption": caption, **record_args}
        return _examples_viewer(weights, {**options, "max_bytes": max_bytes}, per_record)
    max_bytes = _check_max_bytes(max_bytes)
    rec = as_record(weights, **tokens, **record_args)
    return Viewer(rec, payload(rec, caption=caption, **options), max_bytes)


def to_html(
    weights: Any,
    source_tokens: Sequence[str] | None = None,
    target_tokens: Sequence[str] | None = None,
    *,
    path: str | os.PathLike | None = None,
    **options: Any,
) -> str:
    """One self-contained HTML page (inline JS and CSS, no network) to explore attention maps.

    Args:
        weights: (L, S), (H, L, S) or (layers, H, L, S) maps, a capture, or a list of examples,
            as `view` takes them. With a list, the second argument may be the path:
            ``to_html(examples, path)``.
        source_tokens: S strings (default: the capture's tokens, else their indices).
        target_tokens: L strings (default likewise).
        path: also write the page to this file.
        **options: the keyword arguments of `view` (title, caption, threshold, layer, head,
            links, predicted, image, grid, box, layer_names, layers, batch, step, bits,
            max_bytes); see there.

    Returns:
        The HTML document as a string.
    """
    if is_example_list(weights) and isinstance(source_tokens, (str, os.PathLike)):
        if path is not None:
            raise ValueError("path is given twice: as the second argument and as path=")
        source_tokens, path = None, source_tokens
    text = view(weights, source_tokens, target_tokens, **options).html
    if path is not None:
        _write(path, text)
    return text


def _write(path: str | os.PathLike, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return os.fspath(path)
