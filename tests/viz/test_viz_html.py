"""The HTML viewer's page, payload and `crossattn view`, without a browser (see test_browser)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch

from crossattn import CrossAttention
from crossattn.cli import main as cli_main
from crossattn.viz import Viewer, to_html, view
from crossattn.viz._record import as_record
from crossattn.viz.html import MiB, dequantize, quantize, script_json
from tests.conftest import decode_view, page_data

SRC = ["le", "chat", "noir", "dort", "."]
TGT = ["the", "black", "cat", "sleeps", ".", "<eos>", "!"]
XSS = "</script><img src=x onerror=alert(1)>"


def _softmax(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2, dim=-1)


@pytest.mark.parametrize("bits", [8, 16])
def test_quantization_error_is_half_a_step(bits):
    w = _softmax((2, 3, 7, 5)).float().numpy()
    deq = dequantize(w, bits)
    step = w.reshape(6, -1).max(axis=1) / ((1 << bits) - 1)  # per (layer, head)
    err = np.abs(deq - w).reshape(6, -1).max(axis=1)
    assert np.all(err <= step / 2 * (1 + 1e-4) + 1e-7)
    raw, scales = quantize(w, bits)
    assert len(raw) == w.size * bits // 8
    assert scales == pytest.approx(w.reshape(6, -1).max(axis=1).tolist())


@pytest.mark.parametrize(
    "shape, layers, heads", [((7, 5), 1, 1), ((3, 7, 5), 1, 3), ((2, 3, 7, 5), 2, 3)]
)
def test_page_carries_the_weights_and_tokens(shape, layers, heads):
    w = _softmax(shape)
    html = to_html(w, SRC, TGT, links="0-0 1-2 2-1 4p4", predicted=[(3, 3)])
    assert html.startswith("<!DOCTYPE html>")
    data = page_data(html)
    assert (len(data["layers"]), data["heads"], data["L"], data["S"]) == (layers, heads, 7, 5)
    assert data["source"] == SRC and data["target"] == TGT
    decoded = decode_view(data)
    expected = w.reshape(layers, heads, 7, 5).numpy()
    assert np.abs(decoded - expected).max() <= 1.0 / 65535 * 1.01  # 16 bits, max 1
    # Links in (target, source, sure) order for the page.
    assert data["links"] == [[0, 0, 1], [1, 2, 1], [2, 1, 1], [4, 4, 0]]
    assert data["predicted"] == [[3, 3]]
    assert data["headMean"] is (heads == 1 and len(shape) == 2)


def test_page_is_self_contained():
    html = to_html(_softmax((2, 7, 5)), SRC, TGT)
    # No external resource: no src/href to anything, no @import, no url() but data URIs.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html
    assert not re.search(r"url\((?!data:)", html)
    assert "fetch(" not in html and "XMLHttpRequest" not in html
    assert "default-src 'none'" in html  # and the page forbids any fetch
    assert html.count("<script") == 2  # the data and the viewer, both inline
    assert "<script src" not in html


def test_tokens_are_escaped():
    tokens = [XSS, "a&b", "\u2028", "<!--", "x"]
    html = to_html(_softmax((2, 5)), tokens, ["</SCRIPT>", "\"'"])
    assert XSS not in html and "</SCRIPT>" not in html and "<!--" not in html
    assert html.count("</script>") == 2  # only the two real closing tags
    data = page_data(html)
    assert data["source"] == tokens and data["target"] == ["</SCRIPT>", "\"'"]
    assert "\\u003c/script\\u003e\\u003cimg" in script_json(tokens)
    # The title is escaped as HTML too.
    assert "<title>&lt;b&gt;</title>" in to_html(_softmax((2, 5)), title="<b>")


def test_view_object_for_jupyter_and_save(tmp_path):
    v = view(_softmax((7, 5)), SRC, TGT, title="demo")
    assert isinstance(v, Viewer)
    frag = v._repr_html_()
    assert "<html" not in frag and 'class="ca-viewer"' in frag and "<style>" in frag
    assert page_data(frag)["source"] == SRC
    path = v.save(tmp_path / "v.html")
    text = (tmp_path / "v.html").read_text(encoding="utf-8")
    assert path.endswith("v.html") and page_data(text)["target"] == TGT
    assert "Viewer(layers=1, heads=1, L=7 target, S=5 source)" == repr(v)
    out = tmp_path / "p.html"
    assert to_html(_softmax((7, 5)), SRC, TGT, path=out) == out.read_text(encoding="utf-8")


def test_initial_layer_head_and_threshold():
    w = _softmax((2, 3, 7, 5))
    data = page_data(to_html(w, SRC, TGT, layer_names=["enc", "dec"], layer="dec", head=2))
    assert (data["layer"], data["head"], data["threshold"]) == (1, 2, 0.1)
    data = page_data(to_html(w, SRC, TGT, layer="mean", threshold=0.25))
    assert (data["layer"], data["head"], data["threshold"]) == (-1, -1, 0.25)


@pytest.mark.slow
def test_large_record_is_compact():
    """1,000 x 1,000 tokens, 3 layers x 4 heads: under 40 MiB (8 bits past 16 MiB)."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(3, 4, 1000, 1000, generator=g)
    w = w / w.sum(-1, keepdim=True)
    tokens = [f"t{i}" for i in range(1000)]
    html = to_html(w, tokens, tokens)
    assert len(html.encode()) < 40 * MiB
    data = page_data(html)
    assert data["bits"] == 8
    assert np.abs(decode_view(data) - w.numpy()).max() <= w.amax().item() / 255 / 2 * 1.01


def test_image_record_embeds_a_png():
    matplotlib_image = pytest.importorskip("matplotlib.image")
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (24, 40, 3), generator=g, dtype=torch.uint8)
    w = torch.softmax(torch.randn(12, 3, generator=g), dim=-1)  # (L = 3 * 4 patches, S = 3)
    data = page_data(to_html(w, ["a", "red", "bird"], image=image, grid=(3, 4)))
    assert data["target"] is None and data["image"]["grid"] == [3, 4]
    uri = data["image"]["src"]
    assert uri.startswith("data:image/png;base64,")
    png = matplotlib_image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
    assert np.array_equal(np.round(png[..., :3] * 255).astype(np.uint8), image.numpy())


def test_html_errors():
    w = _softmax((7, 5))
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got 1.5"):
        to_html(w, SRC, TGT, threshold=1.5)
    with pytest.raises(ValueError, match=r"layer='dec' is not one of \['layer 0'\]"):
        to_html(w, SRC, TGT, layer="dec")
    with pytest.raises(ValueError, match="head=3 is out of range for 1 heads"):
        to_html(w, SRC, TGT, head=3)
    with pytest.raises(ValueError, match=r"over max_bytes=1000 bytes"):
        to_html(w, SRC, TGT, max_bytes=1000)
    with pytest.raises(ValueError, match="target_tokens has 6 tokens but weights have L = 7"):
        to_html(w, SRC, TGT[:6])
    with pytest.raises(ValueError, match=r"grid=\(h, w\) is needed: L = 7 image patches"):
        to_html(w, SRC, image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        to_html(w, SRC, TGT, bits=4)


# ---------------------------------------------------------------- captures


class _Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = CrossAttention(16, 12, heads=2, dim_head=8)
        self.second = CrossAttention(16, 12, heads=2, dim_head=8)

    def forward(self, queries, context):
        return self.second(self.first(queries, context), context)


def _record(heads="mean", steps=1, length=7, tokens=True):
    capture = pytest.importorskip("crossattn.capture")
    torch.manual_seed(0)
    model = _Decoder()
    context = torch.randn(2, 5, 12)
    kwargs = {"source_tokens": SRC, "target_tokens": TGT[:length]} if tokens else {}
    with capture.AttentionRecorder(model, heads=heads, **kwargs) as rec, torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, length, 16), context)
    return rec


def test_capture_in_place_of_weights(tmp_path):
    rec = _record(heads="all")
    data = page_data(to_html(rec, batch=1))
    assert data["layers"] == ["first", "second"] and data["heads"] == 2
    assert data["source"] == SRC and data["target"] == TGT
    expected = torch.stack([rec.maps["first"][0][1], rec.maps["second"][0][1]])  # (2, 2, 7, 5)
    assert np.abs(decode_view(data) - expected.numpy()).max() <= 1.0 / 65535 * 1.01
    # The saved file gives the same page data.
    path = tmp_path / "cap.safetensors"
    rec.save(path)
    again = page_data(to_html(str(path), batch=1))
    assert again["data"] == data["data"] and again["source"] == SRC


def test_top_k_capture_shows_its_dense_map():
    capture = pytest.importorskip("crossattn.capture")
    torch.manual_seed(0)
    model = _Decoder()
    with capture.AttentionRecorder(model, top_k=2, source_tokens=SRC, target_tokens=TGT) as rec:
        with torch.no_grad():
            model(torch.randn(2, 7, 16), torch.randn(2, 5, 12))
    data = page_data(to_html(rec, batch=1))
    dense = torch.stack([capture.to_dense(rec.maps[n][0])[1] for n in ("first", "second")])
    assert int((dense[0] > 0).sum(-1).max()) == 2  # only the top 2 keys per query survive
    assert np.abs(decode_view(data)[:, 0] - dense.numpy()).max() <= 1.0 / 65535 * 1.01


def test_capture_steps():
    rec = _record(steps=3, length=1, tokens=False)  # three one-token decoding steps
    record = as_record(rec)
    assert record.shape == (2, 1, 3, 5) and record.head_mean
    expected = torch.cat([m[0] for m in rec.maps["first"]], dim=0)  # (3, 5)
    assert np.allclose(record.weights[0, 0], expected.numpy())
    assert as_record(rec, step=1).shape == (2, 1, 1, 5)
    rec = _record(steps=2, length=7)  # repeated full calls: averaged
    mean = (rec.maps["second"][0][0] + rec.maps["second"][1][0]) / 2
    assert np.allclose(as_record(rec).weights[1, 0], mean.numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="step=5 is out of range for layer 'first'"):
        as_record(rec, step=5)
    with pytest.raises(ValueError, match=r"layers \['third'\] are not in the capture"):
        as_record(rec, layers=["third"])
    with pytest.raises(ValueError, match="batch=2 is out of range"):
        as_record(rec, batch=2)


def test_capture_maps_dict_at_several_resolutions():
    """Text-to-image layers at 4x4 and 2x2 are resampled to the finer grid."""
    maps = {"down": [torch.rand(1, 16, 3)], "mid": [torch.rand(1, 4, 3)]}
    record = as_record(maps, ["a", "b", "c"], image=np.zeros((8, 8, 3), np.uint8))
    assert record.shape == (2, 1, 16, 3) and record.grid == (4, 4)
    assert record.layer_names == ["down", "mid"]
    assert np.allclose(record.weights[0, 0], maps["down"][0][0].numpy())
    # The 2 x 2 layer is resampled bilinearly (half-pixel centres, edges clamped) to 4 x 4:
    # along each axis the rows are r0, 3/4 r0 + 1/4 r1, 1/4 r0 + 3/4 r1, r1. By hand, float64.
    axis = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # (4, 2)
    mid = maps["mid"][0][0].double().numpy().reshape(2, 2, 3)  # (h, w, S)
    want = np.einsum("ia,jb,abs->ijs", axis, axis, mid).reshape(16, 3)
    # Two passes, each a convex combination of 2 float32 values rounded to float32.
    tol = 4 * np.finfo(np.float32).eps * np.abs(want).max()
    assert record.weights.shape[2:] == want.shape
    assert np.abs(record.weights[1, 0] - want).max() <= tol
    heads = {"a": [torch.rand(1, 2, 4, 3)], "b": [torch.rand(1, 3, 4, 3)]}
    with pytest.raises(ValueError, match="keep different numbers of heads"):
        as_record(heads, layers=["a", "b"])
    with pytest.warns(UserWarning, match=r"left out \['b'\]"):
        assert as_record(heads).layer_names == ["a"]


# ---------------------------------------------------------------- crossattn view


def test_view_command_on_a_capture(tmp_path, capsys):
    rec = _record()
    path = tmp_path / "run.safetensors"
    rec.save(path)
    assert cli_main(["view", str(path)]) == 0
    out = tmp_path / "run.html"
    assert capsys.readouterr().out.strip() == str(out)
    data = page_data(out.read_text(encoding="utf-8"))
    assert data["layers"] == ["first", "second"] and data["target"] == TGT


def test_view_command_on_weights_files(tmp_path, capsys, monkeypatch):
    w = _softmax((3, 7, 5)).float()
    torch.save({"weights": w, "source_tokens": SRC, "target_tokens": TGT}, tmp_path / "a.pt")
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url))
    assert cli_main(["view", str(tmp_path / "a.pt"), "--open", "--links", "0-0"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a.html")
    assert opened == [(tmp_path / "a.html").as_uri()]
    assert page_data((tmp_path / "a.html").read_text(encoding="utf-8"))["links"] == [[0, 0, 1]]

    from safetensors.torch import save_file

    save_file({"weights": w}, tmp_path / "b.safetensors", {"source_tokens": json.dumps(SRC)})
    out = tmp_path / "elsewhere.html"
    assert (
        cli_main(
            ["view", str(tmp_path / "b.safetensors"), "-o", str(out), "--target"] + [" ".join(TGT)]
        )
        == 0
    )
    data = page_data(out.read_text(encoding="utf-8"))
    assert data["source"] == SRC and data["target"] == TGT

    assert cli_main(["view", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    torch.save({"weights": w, "tokens": SRC}, tmp_path / "bad.pt")
    assert cli_main(["view", str(tmp_path / "bad.pt")]) == 2
    assert "unknown keys ['tokens']" in capsys.readouterr().err
    torch.save({"weights": w}, tmp_path / "c.pt")
    assert cli_main(["view", str(tmp_path / "c.pt"), "--source", "a b"]) == 2
    assert "source_tokens has 2 tokens but weights have S = 5" in capsys.readouterr().err


class _DecoderWithSelfAttention(_Decoder):
    def __init__(self):
        super().__init__()
        self.self_attn = CrossAttention(16, 16, heads=2, dim_head=8)

    def forward(self, queries, context):
        return super().forward(self.self_attn(queries, queries), context)


def test_capture_leaves_out_layers_that_do_not_fit():
    capture = pytest.importorskip("crossattn.capture")
    torch.manual_seed(0)
    model = _DecoderWithSelfAttention()
    with capture.AttentionRecorder(model, source_tokens=SRC) as rec, torch.no_grad():
        model(torch.randn(1, 7, 16), torch.randn(1, 5, 12))
    with pytest.warns(UserWarning, match=r"left out \['self_attn'\]"):
        record = as_record(rec)
    assert record.layer_names == ["first", "second"] and record.shape == (2, 1, 7, 5)
    assert np.allclose(record.weights[1, 0], rec.maps["second"][0][0].numpy())
    with pytest.raises(ValueError, match=r"source_tokens has 5 tokens but weights have S = 7"):
        as_record(rec, layers=["self_attn"])
    # Calls over growing sources (self-attention with a cache) cannot be joined.
    growing = {"cached": [torch.rand(1, 1, n) for n in (1, 2, 3)]}
    with pytest.raises(ValueError, match=r"different source lengths \[1, 2, 3\]"):
        as_record(growing)
    assert as_record(growing, step=2).shape == (1, 1, 1, 3)


def test_html_argument_types():
    w = _softmax((7, 5))
    with pytest.raises(TypeError, match=r"bits must be an int, got 16\.0"):
        to_html(w, SRC, TGT, bits=16.0)
    with pytest.raises(TypeError, match=r"max_bytes \(bytes\) must be a positive int, got '1e6'"):
        to_html(w, SRC, TGT, max_bytes="1e6")
    with pytest.raises(ValueError, match=r"max_bytes \(bytes\) must be a positive int, got -1"):
        to_html(w, SRC, TGT, max_bytes=-1)
    with pytest.raises(TypeError, match=r"head must be an index or 'mean', got \[0\]"):
        to_html(w, SRC, TGT, head=[0])
    with pytest.raises(TypeError, match="title must be a string or None, got 123"):
        to_html(w, SRC, TGT, title=123)
    with pytest.raises(TypeError, match=r"threshold must be a real number in \[0, 1\], got '0.2'"):
        to_html(w, SRC, TGT, threshold="0.2")
    with pytest.raises(TypeError, match="links as a matrix must be a bool"):
        to_html(w, SRC, TGT, links=np.full((7, 5), np.nan))
    data = page_data(
        to_html(w, SRC, TGT, threshold=np.float32(0.25), bits=np.int64(8), head=np.int8(0))
    )
    assert data["threshold"] == 0.25 and data["bits"] == 8 and data["head"] == 0


def test_html_size_message_in_readable_units():
    w = _softmax((7, 5))
    with pytest.raises(ValueError, match=r"would be \d+\.\d KiB, over max_bytes=2048 \(2\.0 KiB\)"):
        to_html(w, SRC, TGT, max_bytes=2048)


def test_html_capture_options():
    w = _softmax((7, 5))
    with pytest.raises(ValueError, match="step=0 applies to captures"):
        to_html(w, SRC, TGT, step=0)
    with pytest.raises(ValueError, match=r"layers=\['x'\] applies to captures"):
        view(w, SRC, TGT, layers=["x"])
    maps = {"first": [torch.rand(2, 7, 5)]}
    with pytest.raises(TypeError, match="batch must be an int, got True"):
        to_html(maps, SRC, TGT, batch=True)
    with pytest.raises(TypeError, match=r"batch must be an int, got 1\.5"):
        to_html(maps, SRC, TGT, batch=1.5)
    with pytest.raises(TypeError, match="layers must be a list of layer names"):
        to_html(maps, SRC, TGT, layers="first")
    assert page_data(to_html(maps, SRC, TGT, batch=np.int64(1)))["L"] == 7
