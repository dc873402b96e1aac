"""Static pictures of attention maps with matplotlib (Agg, no pyplot state).

Shape legend: L target (query) length, S source (context) length, H heads. Rows of a map are
target tokens, columns are source tokens.

`heatmap` draws a labelled map, a grid of heads (H, L, S), or a grid of layers x heads
(layers, H, L, S), with gold and predicted alignment links on top. `image_overlay` draws the
attention of one text token over the patches of an image. Both return a
`matplotlib.figure.Figure` and, given `path`, save it as PNG, SVG or PDF (from the extension).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _checks
from ._colors import POSSIBLE_COLOR, PREDICTED_COLOR, SURE_COLOR, colormap
from ._record import (
    AttentionRecord,
    Link,
    _image_array,
    _tokens,
    as_record,
    check_grid,
    check_weight_values,
    to_numpy,
)
from .examples import check_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["heatmap", "image_overlay"]

_FORMATS = (".png", ".svg", ".pdf")


def _new_figure(figsize: tuple[float, float], dpi: int) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global figure manager, no GUI backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike | None) -> None:
    if path is None:
        return
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"path must end in .png, .svg or .pdf, got {os.fspath(path)!r}")
    fig.savefig(path, format=ext[1:])


def _check_figure_options(dpi: Any, title: Any) -> None:
    _checks.positive_real(dpi, "dpi")
    check_text(title, "title")


def _tick_step(n: int, max_labels: int) -> int:
    return max(1, math.ceil(n / max_labels))


def _draw_links(ax: Any, links: list[Link], predicted: list[Link], cell_pt: float) -> list:
    """Markers on the cells of links: open squares (sure), open circles (possible), dots
    (predicted). Returns legend handles."""
    size = max(2.0, 0.8 * cell_pt)
    sure = {"marker": "s", "s": size**2, "edgecolors": SURE_COLOR, "linewidths": 1.4}
    possible = {"marker": "o", "s": (0.75 * size) ** 2, "edgecolors": POSSIBLE_COLOR}
    possible.update(linewidths=1.1, linestyle="--")
    dot = {"marker": "o", "s": (0.3 * size) ** 2, "color": PREDICTED_COLOR, "linewidths": 0}
    groups = (
        ([k for k in links if k.sure], {**sure, "facecolors": "none"}, "gold (sure)"),
        ([k for k in links if not k.sure], {**possible, "facecolors": "none"}, "gold (possible)"),
        (predicted, dot, "predicted"),
    )
    return [
        ax.scatter([k.source for k in group], [k.target for k in group], label=label, **style)
        for group, style, label in groups
        if group
    ]


def _check_heatmap_options(
    heads: Any, vmax: Any, max_labels: Any, cell_size: Any, dpi: Any, title: Any
) -> tuple[list[int] | None, int]:
    """`heads` as a list of ints (or None) and `max_labels` as an int, once every option of
    `heatmap` that is not about the record is checked."""
    max_labels = _checks.positive_int(max_labels, "max_labels")
    if cell_size is not None:
        _checks.positive_real(cell_size, "cell_size (inches)")
    if vmax is not None:
        _checks.positive_real(vmax, "vmax")
    _check_figure_options(dpi, title)
    if heads is not None:
        one = getattr(heads, "ndim", None) == 0  # a NumPy or 0-d torch int
        if one or isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            try:
                heads = [_checks.integer(heads, "heads")]
            except _checks.ArgumentTypeError:
                raise _checks.ArgumentTypeError(
                    f"heads must be an int or a list of head indices, got {heads!r}"
                ) from None
        heads = [_checks.integer(h, f"heads[{k}]") for k, h in enumerate(heads)]
    return heads, max_labels


def _head_ids(heads: list[int] | None, n_heads: int) -> list[int]:
    """The heads to draw: `heads`, each checked against H = `n_heads`, or all of them."""
    head_ids = list(range(n_heads)) if heads is None else list(heads)
    bad = [h for h in head_ids if not 0 <= h < n_heads]
    if bad or not head_ids:
        raise ValueError(f"heads must be indices in [0, {n_heads}), got {list(heads or [])}")
    return head_ids


class _Layout:
    """The sizes of a heatmap figure: panels of (L, S) cells with token labels, the font, and
    the tick steps (at most `max_labels` labels an axis)."""

    def __init__(self, rec: AttentionRecord, cell_size: float | None, max_labels: int):
        _, _, self.length, self.source_length = rec.shape
        self.src = rec.source_tokens
        self.tgt = rec.target_tokens or [str(i) for i in range(self.length)]
        # Panel size: about 7 inches on the longer side, plus room for the labels.
        if cell_size is None:
            cell_size = min(0.3, 7.0 / max(self.length, self.source_length))
        labels = self.src + self.tgt
        longest = max(len(t) for t in labels) if labels else 1
        label_in = min(2.0, 0.09 * longest + 0.3)
        self.panel_w = self.source_length * cell_size + label_in
        self.panel_h = self.length * cell_size + label_in
        self.fontsize = float(np.clip(cell_size * 72 * 0.7, 5, 10))
        self.cell_pt = cell_size * 72
        self.step_s = _tick_step(self.source_length, max_labels)
        self.step_t = _tick_step(self.length, max_labels)
        self.cmap = colormap()

    def figsize(self, rows: int, cols: int, colorbar: bool, title: Any, legend: bool) -> tuple:
        """(width, height) in inches of `rows` x `cols` panels and what is drawn around them."""
        fig_w = cols * self.panel_w + (1.0 if colorbar else 0.3)
        fig_h = rows * self.panel_h + (0.6 if title else 0.2) + (0.4 if legend else 0)
        return fig_w, fig_h

    def panel(self, ax: Any, weights: np.ndarray, vmax: float) -> Any:
        """Draw one (L, S) map on `ax` with its token labels, every k-th on long sequences."""
        image = ax.imshow(
            weights, cmap=self.cmap, vmin=0.0, vmax=vmax, aspect="equal", interpolation="nearest"
        )
        ax.set_xticks(range(0, self.source_length, self.step_s))
        ax.set_yticks(range(0, self.length, self.step_t))
        ax.set_xticklabels(self.src[:: self.step_s], rotation=90, fontsize=self.fontsize)
        ax.set_yticklabels(self.tgt[:: self.step_t], fontsize=self.fontsize)
        ax.xaxis.tick_top()
        ax.tick_params(length=0, pad=2)
        for spine in ax.spines.values():
            spine.set_visible(False)
        return image


def heatmap(
    weights: Any,
    source_tokens: Sequence[str] | None,
    target_tokens: Sequence[str] | None,
    *,
    path: str | os.PathLike | None = None,
    links: Any = None,
    predicted: Any = None,
    title: str | None = None,
    layer_names: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    max_labels: int = 80,
    cell_size: float | None = None,
    dpi: int = 120,
    **record_options: Any,
) -> Figure:
    """Draw a labelled attention heatmap; rows are target tokens, columns are source tokens.

    Args:
        weights: (L, S) for one map, (H, L, S) for a grid of heads, (layers, H, L, S) for a grid
            of layers (rows) by heads (columns). A capture (an `AttentionRecorder`, its saved
            file or its `maps`) is accepted too; `record_options` (layers=, batch=, step=) pick
            from it (only from a capture: with a tensor they raise ValueError).
        source_tokens: S strings, drawn along the top, rotated; None numbers the columns.
        target_tokens: L strings, drawn down the left side; None numbers the rows.
        path: save to this file; the extension (.png, .svg, .pdf) picks the format.
        links: gold alignment links, drawn as open squares (sure) and open circles (possible).
            Pharaoh order, source index first: ``"0-0 1-2 3p4"``, pairs ``(source, target)``,
            triples ``(source, target, "sure" | "possible")``, ``{"sure": [...], "possible":
            [...]}`` or a bool (L, S) matrix.
        predicted: predicted links, same forms, drawn as small dots.
        title: figure title.
        layer_names: row titles of a (layers, H, L, S) grid.
        heads: draw only these heads (indices into H), or one head as an int.
        vmax: top of the colour scale; default the largest weight drawn (the scale starts at 0).
        colorbar: draw one colour bar shared by every panel.
        max_labels: at most this many tick labels per axis (longer sequences label every k-th);
            an int >= 1.
        cell_size: inches per cell, > 0 (default: fit the figure to about 7 inches per panel).
        dpi: resolution of raster output, > 0.

    Returns:
        The `matplotlib.figure.Figure` (on an Agg canvas; pyplot is never touched).
    """
    heads, max_labels = _check_heatmap_options(heads, vmax, max_labels, cell_size, dpi, title)
    rec = as_record(
        weights,
        source_tokens,
        target_tokens,
        links=links,
        predicted=predicted,
        layer_names=layer_names,
        **record_options,
    )
    n_layers, n_heads, length, source_length = rec.shape
    head_ids = _head_ids(heads, n_heads)
    arr = rec.weights[:, head_ids]  # (layers, heads drawn, L, S)
    if vmax is None:
        vmax = float(arr.max()) or 1.0
    layout = _Layout(rec, cell_size, max_labels)
    legend = bool(rec.links or rec.predicted)
    fig = _new_figure(layout.figsize(n_layers, len(head_ids), colorbar, title, legend), dpi)
    axes = fig.subplots(n_layers, len(head_ids), squeeze=False)
    image = None
    handles: list = []
    for i in range(n_layers):
        for j, head in enumerate(head_ids):
            ax = axes[i, j]
            image = layout.panel(ax, arr[i, j], vmax)
            hs = _draw_links(ax, rec.links, rec.predicted, layout.cell_pt)
            handles = handles or hs
            ax.set_xlim(-0.5, source_length - 0.5)
            ax.set_ylim(length - 0.5, -0.5)
            name = "head mean" if rec.head_mean else f"head {head}"
            if n_layers > 1 or len(head_ids) > 1:
                label = f"{rec.layer_names[i]} · {name}" if n_layers > 1 else name
                ax.set_xlabel(label, fontsize=9)
    if colorbar and image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.6, pad=0.02, aspect=30)
        bar.set_label("attention weight", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles),
            fontsize=8,
            frameon=False,
            markerscale=min(1.0, 10.0 / max(layout.cell_pt, 1e-6)),
        )
    _finish(fig, title, path)
    return fig


def _finish(fig: Figure, title: str | None, path: str | os.PathLike | None) -> None:
    """The figure's title, then the file at `path` (if any)."""
    if title:
        fig.suptitle(title, fontsize=12)
    _save(fig, path)


def _upsample(patches: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) patch values resampled bilinearly to the image size (height, width)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def image_overlay(
    weights: Any,
    image: Any,
    grid: tuple[int, int] | None = None,
    token: int | str | Sequence[int | str] = 0,
    *,
    tokens: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    alpha: float = 0.55,
    normalize: bool = True,
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Draw one text token's attention over the patches of an image, on top of the image.

    Args:
        weights: (L, S) text-to-image attention with L = h * w image patches (queries) and S
            text tokens (context), or (H, L, S), whose head mean is drawn.
        image: (height, width, 3) or (3, height, width) array or tensor, uint8 or float in
            [0, 1]; (height, width) for grey. Other integer types must hold values in 0..255
            (scale a 16-bit image first).
        grid: (h, w) patch grid with h * w == L; default a square grid.
        token: the text token to draw, as an index into S or its text (matched in `tokens`);
            a list (or 1-D array) draws one panel per token.
        tokens: the S text tokens (titles, and lookup of `token` by text).
        path: save to this file (.png, .svg or .pdf).
        alpha: opacity of the attention layer, in [0, 1].
        normalize: stretch each panel's colours to its own maximum (else the scale is 0..1).
        title: figure title.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    _check_figure_options(dpi, title)
    alpha = _checks.unit_real(alpha, "alpha")
    arr, grid = _patch_weights(weights, grid)  # (L, S), (h, w)
    tokens = _tokens(tokens, "tokens")
    if tokens is not None and len(tokens) != arr.shape[1]:
        raise ValueError(
            f"tokens has {len(tokens)} tokens but weights have S = {arr.shape[1]} columns"
        )
    img = _image_array(image)
    indices = _token_indices(token, tokens, arr.shape[1])
    n = len(indices)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    height, width = img.shape[:2]
    panel = 3.2
    fig = _new_figure((cols * panel * width / max(height, width) + 0.8, rows * panel + 0.4), dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = colormap()
    shown = None
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        s = indices[k]
        heat = _upsample(arr[:, s].reshape(grid), (height, width))
        top = float(heat.max()) if normalize else 1.0
        ax.imshow(img, interpolation="bilinear")
        shown = ax.imshow(
            heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=top or 1.0, interpolation="bilinear"
        )
        ax.set_title(tokens[s] if tokens is not None else f"token {s}", fontsize=10)
    if shown is not None and not normalize:
        bar = fig.colorbar(shown, ax=axes, shrink=0.7, pad=0.02)
        bar.set_label("attention weight", fontsize=9)
    _finish(fig, title, path)
    return fig


def _patch_weights(weights: Any, grid: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """The (L, S) text-to-image map (the head mean of (H, L, S)) and its (h, w) patch grid."""
    arr = to_numpy(weights, "weights")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"weights must be (L, S) or (H, L, S) with L image patches, got shape "
            f"{tuple(np.shape(arr))}"
        )
    check_weight_values(arr)
    if arr.ndim == 3:  # (H, L, S) -> head mean
        arr = arr.mean(axis=0)
    length = arr.shape[0]
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"grid=(h, w) is needed: L = {length} patches is not a square number")
        grid = (side, side)
    h, w = check_grid(grid, length)
    return arr, (int(h), int(w))


def _token_indices(token: Any, tokens: list[str] | None, source_length: int) -> list[int]:
    """`token` (an index, a text token, or a list or 1-D array of them) as indices into S."""
    if hasattr(token, "tolist") and getattr(token, "ndim", 0) > 0:  # 1-D array or tensor
        token = token.tolist()
    elif hasattr(token, "item") and getattr(token, "ndim", None) == 0:  # 0-d array or tensor
        token = token.item()
    wanted = list(token) if isinstance(token, (list, tuple)) else [token]
    if not wanted:
        raise ValueError("token=[] chooses no token; give an index, a text token or a list")
    indices = []
    for t in wanted:
        if isinstance(t, str):
            if tokens is None or t not in tokens:
                raise ValueError(f"token={t!r} is not among tokens={tokens}")
            indices.append(tokens.index(t))
        else:
            t = _checks.integer(t, "token (an int index, a text token or a list of them)")
            if not -source_length <= t < source_length:
                raise ValueError(f"token={t} is out of range for S = {source_length} text tokens")
            indices.append(t % source_length)
    return indices
