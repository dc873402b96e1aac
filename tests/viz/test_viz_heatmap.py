"""Static pictures: `crossattn.viz.heatmap` and `image_overlay` (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from crossattn.viz import heatmap, image_overlay  # noqa: E402
from crossattn.viz._colors import colormap  # noqa: E402

SRC = ["le", "chat", "noir", "dort", "."]
TGT = ["the", "black", "cat", "sleeps", ".", "<eos>", "!"]  # L = 7 != S = 5


def _softmax(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2, dim=-1)


def _rgba(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def _pixel(fig, ax, x: float, y: float) -> np.ndarray:
    """The RGB pixel of the rendered figure at data coordinates (x, y) of `ax`."""
    img = _rgba(fig)
    px, py = ax.transData.transform((x, y))
    return img[img.shape[0] - int(round(py)), int(round(px))]


def _cmap_rgb(value: float) -> np.ndarray:
    return np.round(np.array(colormap()(value)[:3]) * 255).astype(int)


def test_single_map_cells_labels_and_colours():
    weights = torch.zeros(len(TGT), len(SRC), dtype=torch.float64)
    weights[2, 1] = 1.0  # "cat" attends to "chat" only
    weights[0, 0] = 0.5
    fig = heatmap(weights, SRC, TGT)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == SRC
    assert [t.get_text() for t in ax.get_yticklabels()] == TGT
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
    assert len(fig.axes) == 2  # the map and its colour bar
    # Colours are read back from the rendered pixels (vmax = the largest weight = 1).
    assert np.abs(_pixel(fig, ax, 1, 2) - _cmap_rgb(1.0)).max() <= 2
    assert np.abs(_pixel(fig, ax, 0, 0) - _cmap_rgb(0.5)).max() <= 2
    assert np.abs(_pixel(fig, ax, 3, 5) - _cmap_rgb(0.0)).max() <= 2


def test_head_and_layer_grids():
    fig = heatmap(_softmax((3, len(TGT), len(SRC))), SRC, TGT, colorbar=False)
    assert len(fig.axes) == 3
    assert [ax.get_xlabel() for ax in fig.axes] == ["head 0", "head 1", "head 2"]
    names = ["dec.0", "dec.1"]
    fig = heatmap(_softmax((2, 3, len(TGT), len(SRC))), SRC, TGT, layer_names=names, heads=[0, 2])
    maps = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(maps) == 4
    assert maps[3].get_xlabel() == "dec.1 · head 2"


def test_links_are_drawn_on_their_cells():
    links = "0-0 1-2 2-1 3-3 4p4"  # Pharaoh: source-target
    fig = heatmap(_softmax((len(TGT), len(SRC))), SRC, TGT, links=links, predicted=[(3, 3)])
    ax = fig.axes[0]
    by_label = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    # Offsets are (x = source, y = target).
    assert sorted(map(tuple, by_label["gold (sure)"])) == [(0, 0), (1, 2), (2, 1), (3, 3)]
    assert by_label["gold (possible)"] == [[4, 4]]
    assert by_label["predicted"] == [[3, 3]]
    matrix = np.zeros((len(TGT), len(SRC)), dtype=bool)
    matrix[2, 1] = True
    fig = heatmap(_softmax((len(TGT), len(SRC))), SRC, TGT, links=torch.from_numpy(matrix))
    sure = [c for c in fig.axes[0].collections if c.get_label() == "gold (sure)"][0]
    assert sure.get_offsets().tolist() == [[1, 2]]


@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_saves_by_extension(tmp_path, ext, magic):
    path = tmp_path / f"map.{ext}"
    heatmap(_softmax((len(TGT), len(SRC))), SRC, TGT, path=path)
    assert path.read_bytes().startswith(magic)


@pytest.mark.slow
def test_no_pyplot_and_lazy_matplotlib():
    code = (
        "import sys, torch\n"
        "import crossattn, crossattn.viz\n"
        "assert 'matplotlib' not in sys.modules, 'import crossattn.viz imported matplotlib'\n"
        "from crossattn.viz import heatmap\n"
        "heatmap(torch.rand(3, 4), list('abcd'), list('xyz'))\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'heatmap imported pyplot'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_heatmap_errors():
    w = _softmax((len(TGT), len(SRC)))
    with pytest.raises(ValueError, match=r"source_tokens has 4 tokens but weights have S = 5"):
        heatmap(w, SRC[:4], TGT)
    with pytest.raises(ValueError, match=r"target_tokens has 6 tokens but weights have L = 7"):
        heatmap(w, SRC, TGT[:6])
    with pytest.raises(ValueError, match=r"weights must be \(L, S\), \(H, L, S\) or"):
        heatmap(torch.rand(5), SRC, TGT)
    with pytest.raises(ValueError, match="NaN or infinite"):
        heatmap(w.masked_fill(w > 0.3, float("nan")), SRC, TGT)
    with pytest.raises(ValueError, match="non-negative"):
        heatmap(w - 1, SRC, TGT)
    with pytest.raises(ValueError, match=r"path must end in \.png, \.svg or \.pdf"):
        heatmap(w, SRC, TGT, path="map.jpeg")
    with pytest.raises(ValueError, match=r"link \(source 5, target 0\) is outside the map"):
        heatmap(w, SRC, TGT, links="5-0")
    with pytest.raises(ValueError, match="is not a Pharaoh link"):
        heatmap(w, SRC, TGT, links="0:0")
    with pytest.raises(ValueError, match=r"heads must be indices in \[0, 2\)"):
        heatmap(_softmax((2, len(TGT), len(SRC))), SRC, TGT, heads=[2])
    with pytest.raises(TypeError, match="source_tokens must be a list of strings"):
        heatmap(w, "le chat noir dort .", TGT)
    with pytest.raises(ValueError, match=r"layer_names has 1 names for weights with 2 layers"):
        heatmap(_softmax((2, 1, len(TGT), len(SRC))), SRC, TGT, layer_names=["a"])


def test_image_overlay_draws_the_token_over_its_patches():
    image = np.full((64, 48, 3), 255, dtype=np.uint8)  # white (height 64, width 48)
    grid = (4, 3)
    weights = torch.zeros(grid[0] * grid[1], 2)
    weights[:, 0] = 1.0 / 12
    weights[0, 1] = 1.0  # token 1 looks only at the top-left patch
    fig = image_overlay(weights, image, grid=grid, token="bird", tokens=["a", "bird"])
    ax = fig.axes[0]
    assert ax.get_title() == "bird"
    hot = _pixel(fig, ax, 4, 4)  # inside the top-left patch (16 x 16 pixels)
    cold = _pixel(fig, ax, 40, 60)  # bottom-right
    assert hot.sum() < cold.sum() - 150  # the attended patch is tinted dark
    assert np.abs(cold - np.array([255, 255, 255])).max() <= 8  # weight 0: the image shows


def test_image_overlay_layouts_and_panels(tmp_path):
    chw = torch.rand(3, 32, 32)  # (3, H, W) float tensor
    heads = torch.softmax(torch.randn(4, 16, 3), dim=-1)  # (H, L, S)
    fig = image_overlay(heads, chw, token=[0, 2], path=tmp_path / "o.png")
    assert sum(1 for ax in fig.axes if ax.get_title()) == 2
    assert (tmp_path / "o.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"grid \(3, 3\) must be \(h, w\) with h \* w == L = 16"):
        image_overlay(heads, chw, grid=(3, 3))
    with pytest.raises(ValueError, match="token='cat' is not among"):
        image_overlay(heads, chw, token="cat", tokens=["a", "b", "c"])
    with pytest.raises(ValueError, match="token=3 is out of range for S = 3"):
        image_overlay(heads, chw, token=3)
    with pytest.raises(ValueError, match=r"image must be \(height, width, 3\)"):
        image_overlay(heads, torch.rand(2, 5, 32, 32))
    with pytest.raises(ValueError, match="grid=\\(h, w\\) is needed: L = 12"):
        image_overlay(torch.rand(12, 3), chw)


def test_heatmap_link_matrices_must_be_bool_and_pairs_ints():
    w = _softmax((7, 5))
    with pytest.raises(TypeError, match="links as a matrix must be a bool"):
        heatmap(w, SRC, TGT, links=np.full((7, 5), np.nan))
    with pytest.raises(TypeError, match="links as a matrix must be a bool.*float"):
        heatmap(w, SRC, TGT, links=torch.full((7, 5), 0.01))
    with pytest.raises(TypeError, match=r"source index of a link must be an int, got 0\.9"):
        heatmap(w, SRC, TGT, predicted=[(0.9, 1.9)])
    with pytest.raises(ValueError, match="is not a Pharaoh link"):
        heatmap(w, SRC, TGT, links="\u0661-0")
    matrix = np.zeros((7, 5), bool)
    matrix[1, 2] = True
    heatmap(w, SRC, TGT, links=matrix, predicted=[(np.int64(2), np.int32(1))])


def test_heatmap_capture_options_refused_for_tensors():
    w = _softmax((7, 5))
    with pytest.raises(ValueError, match=r"layers=\['a'\] applies to captures"):
        heatmap(w, SRC, TGT, layers=["a"])
    with pytest.raises(ValueError, match="batch=1 applies to captures"):
        heatmap(w, SRC, TGT, batch=1)
    with pytest.raises(ValueError, match="batch=1, step=0 apply to captures"):
        heatmap(w, SRC, TGT, batch=1, step=0)


def test_heatmap_option_errors():
    w = _softmax((2, 7, 5))
    with pytest.raises(ValueError, match="max_labels must be a positive int, got 0"):
        heatmap(w, SRC, TGT, max_labels=0)
    with pytest.raises(
        ValueError, match=r"cell_size \(inches\) must be a positive finite real number, got -1"
    ):
        heatmap(w, SRC, TGT, cell_size=-1)
    with pytest.raises(ValueError, match="dpi must be a positive finite real number, got 0"):
        heatmap(w, SRC, TGT, dpi=0)
    with pytest.raises(TypeError, match="heads must be an int or a list"):
        heatmap(w, SRC, TGT, heads="0")
    with pytest.raises(TypeError, match=r"heads\[0\] must be an int, got 0.5"):
        heatmap(w, SRC, TGT, heads=[0.5])
    fig = heatmap(w, SRC, TGT, heads=np.int64(1), max_labels=np.int32(3), dpi=np.float32(50))
    assert len(fig.axes) == 2  # one panel and the colour bar


def test_image_overlay_input_errors():
    w = _softmax((16, 3))
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        image_overlay(-w, img)
    with pytest.raises(ValueError, match=r"weights must not be empty, got shape \(0, 3\)"):
        image_overlay(np.zeros((0, 3)), img)
    with pytest.raises(TypeError, match="tokens must be a list of strings"):
        image_overlay(w, img, tokens="abc")
    with pytest.raises(ValueError, match=r"token=\[\] chooses no token"):
        image_overlay(w, img, token=[])
    with pytest.raises(
        TypeError,
        match=r"token \(an int index, a text token or a list of them\) must be an int, got 1.5",
    ):
        image_overlay(w, img, token=1.5)
    with pytest.raises(TypeError, match=r"grid must be \(h, w\): two positive ints, got 4"):
        image_overlay(w, img, grid=4)
    with pytest.raises(
        ValueError, match=r"grid must be \(h, w\): two positive ints, got \(-4, -4\)"
    ):
        image_overlay(w, img, grid=(-4, -4))
    with pytest.raises(ValueError, match=r"grid \(2, 4\) must be \(h, w\) with h \* w == L = 16"):
        image_overlay(w, img, grid=(2, 4))
    with pytest.raises(ValueError, match=r"image must not be empty, got shape \(0, 0, 3\)"):
        image_overlay(w, np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image of dtype uint16 must hold values in 0\.\.255"):
        image_overlay(w, np.full((8, 8, 3), 300, np.uint16))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        image_overlay(w, img, alpha=2)
    fig = image_overlay(w, img, token=np.array([0, 1]), grid=(np.int64(4), 4))
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    image_overlay(w, np.full((8, 8, 3), 200, np.int64))  # integers in 0..255 are accepted
