"""The viewer's image mode and its pages of several examples, without a browser (see
test_browser for what a person sees): payload contents, escaping, size limits, bad input."""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pytest
import torch

from crossattn.viz import batch_examples, to_html, view
from crossattn.viz._assets import JS_MODULES, viewer_script
from crossattn.viz._record import as_record
from crossattn.viz.html import MiB
from crossattn.viz.server import serve_page
from tests.conftest import decode_view, page_data

XSS = "</script><img src=x onerror=alert(1)>"
QUESTION = ["what", "colour", "is", "the", "square", "?"]


def _maps(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2, dim=-1)


def _image(height=40, width=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy()


def _example(tokens=QUESTION, layers=2, heads=3, grid=(4, 6), seed=0, **extra):
    ex = {
        "tokens": list(tokens),
        "maps": _maps((layers, heads, len(tokens), grid[0] * grid[1]), seed),
        "image": _image(seed=seed),
        "grid": grid,
    }
    ex.update(extra)
    return ex


# ---------------------------------------------------------------- image mode


def test_image_mode_puts_the_patches_on_the_columns():
    """Question tokens over image patches: (layers, H, T, P), patches the S columns."""
    w = _maps((2, 3, len(QUESTION), 24))
    image = _image()
    data = page_data(
        to_html(w, target_tokens=QUESTION, image=image, grid=(4, 6), box=[6, 4, 30, 20])
    )
    assert data["target"] == QUESTION and data["source"] is None
    assert (data["L"], data["S"]) == (len(QUESTION), 24)
    assert data["image"]["patches"] == "source" and data["image"]["grid"] == [4, 6]
    assert data["image"]["size"] == [48, 40] and data["image"]["box"] == [6, 4, 30, 20]
    assert np.abs(decode_view(data) - w.numpy()).max() <= 1.0 / 65535 * 1.01
    # Without tokens on either side, a square S (and non-square L) puts the patches there too.
    rec = as_record(_maps((5, 16)), image=_image())
    assert rec.patches == "source" and rec.grid == (4, 4) and rec.source_tokens is None
    # Text-to-image records keep their rows as patches.
    rec = as_record(_maps((16, 3)), ["a", "b", "c"], image=_image())
    assert rec.patches == "target" and rec.target_tokens is None and rec.box is None


def test_image_mode_bad_input_is_named():
    w = _maps((len(QUESTION), 24))
    image = _image()  # 48 wide, 40 high
    with pytest.raises(ValueError, match=r"grid \(5, 5\) must be \(h, w\) with h \* w == S = 24"):
        to_html(w, target_tokens=QUESTION, image=image, grid=(5, 5))
    with pytest.raises(ValueError, match=r"grid=\(h, w\) is needed: S = 24 image patches"):
        to_html(w, target_tokens=QUESTION, image=image)
    with pytest.raises(ValueError, match=r"box \[40, 4, 50, 20\] must lie inside the image of "
                       r"width 48 and height 40"):  # fmt: skip
        to_html(w, target_tokens=QUESTION, image=image, grid=(4, 6), box=[40, 4, 50, 20])
    with pytest.raises(ValueError, match=r"box \[10, 30, 20, 30\] must lie inside"):  # empty
        to_html(w, target_tokens=QUESTION, image=image, grid=(4, 6), box=[10, 30, 20, 30])
    with pytest.raises(
        TypeError, match=r"box must be \[x0, y0, x1, y1\]: four finite real numbers"
    ):
        to_html(w, target_tokens=QUESTION, image=image, grid=(4, 6), box=[1, 2, 3])
    with pytest.raises(TypeError, match="box must be .*: four finite real numbers"):
        to_html(w, target_tokens=QUESTION, image=image, grid=(4, 6), box=[0, 0, float("nan"), 4])
    with pytest.raises(ValueError, match="box is drawn on an image: pass image="):
        to_html(w, target_tokens=QUESTION, box=[0, 0, 4, 4])
    # A tensor box is accepted (as the data readers hand them).
    data = page_data(to_html(w, target_tokens=QUESTION, image=image, grid=(4, 6),
                         box=torch.tensor([0.5, 1.0, 47.5, 40.0])))  # fmt: skip
    assert data["image"]["box"] == [0.5, 1.0, 47.5, 40.0]


# ---------------------------------------------------------------- several examples


def test_examples_page_carries_each_example():
    first = _example(box=[6, 4, 30, 20], title="the square", caption="answer: red")
    second = _example(tokens=["is", "it", "big", "?"], grid=(4, 6), seed=1)
    text = {  # a text example among image ones, with its own links
        "source": ["le", "chat"],
        "target": ["the", "cat", "."],
        "weights": _maps((2, 3, 3, 2), seed=2),
        "links": "0-0 1-1",
    }
    html = to_html([first, second, text], title="VQA")
    data = page_data(html)
    assert data["title"] == "VQA" and data["example"] == 0 and len(data["examples"]) == 3
    ex0, ex1, ex2 = data["examples"]
    assert ex0["title"] == "the square" and ex0["caption"] == "answer: red"
    assert ex1["title"] == "example 1" and ex1["caption"] is None
    assert ex0["target"] == QUESTION and ex1["target"] == ["is", "it", "big", "?"]
    assert ex0["image"]["box"] == [6, 4, 30, 20] and ex1["image"]["box"] is None
    assert ex2["image"] is None and ex2["source"] == ["le", "chat"]
    assert ex2["links"] == [[0, 0, 1], [1, 1, 1]]
    assert {ex["bits"] for ex in data["examples"]} == {16}
    for ex, src in zip(data["examples"], (first, second, text)):
        want = src.get("maps", src.get("weights")).numpy()
        assert np.abs(decode_view(ex) - want).max() <= 1.0 / 65535 * 1.01
    assert "<title>VQA</title>" in html


def test_examples_path_and_viewer_object(tmp_path):
    examples = [_example(), _example(seed=1)]
    out = tmp_path / "vqa.html"
    text = to_html(examples, out)  # the path as the second argument
    assert out.read_text(encoding="utf-8") == text
    v = view(examples)
    assert repr(v) == "Viewer(2 examples, layers=2, heads=3)" and len(v.records) == 2
    assert len(page_data(v._repr_html_())["examples"]) == 2
    with pytest.raises(ValueError, match="path is given twice"):
        to_html(examples, out, path=out)


def test_examples_escape_tokens_and_titles():
    ex = _example(tokens=[XSS, "a&b", "\u2028", "<!--"], title=XSS, caption="</SCRIPT>")
    html = to_html([ex, ex], title=XSS)
    assert XSS not in html and "</SCRIPT>" not in html and "<!--" not in html
    assert html.count("</script>") == 2  # only the two real closing tags
    data = page_data(html)
    assert data["examples"][0]["target"] == [XSS, "a&b", "\u2028", "<!--"]
    assert data["examples"][1]["title"] == XSS and data["title"] == XSS
    assert "<title>&lt;/script&gt;&lt;img" in html


def test_examples_size_limit_and_bits():
    examples = [_example(), _example(seed=1)]
    with pytest.raises(ValueError, match=r"over max_bytes=.*keep fewer examples, layers or heads"):
        to_html(examples, max_bytes=20_000)
    data = page_data(to_html(examples, bits=8))
    assert {ex["bits"] for ex in data["examples"]} == {8}
    # Past 16 MiB of 16-bit weights over all examples together, the page uses 8 bits.
    big = {"weights": torch.rand(1, 1, 1500, 1500), "source": None, "target": None}
    data = page_data(to_html([big] * 4, max_bytes=100 * MiB))
    assert {ex["bits"] for ex in data["examples"]} == {8}


def test_examples_bad_input_is_named():
    good = _example()
    with pytest.raises(ValueError, match=r"examples\[1\] has 1 layers x 3 heads but examples\[0\] "
                       r"has 2 x 3"):  # fmt: skip
        to_html([good, _example(layers=1)])
    with pytest.raises(ValueError, match=r"examples\[1\]: grid \(4, 4\) must be \(h, w\) with "
                       r"h \* w == S = 24"):  # fmt: skip
        to_html([good, dict(_example(), grid=(4, 4))])
    with pytest.raises(ValueError, match=r"examples\[0\]: box \[0, 0, 60, 10\] must lie inside"):
        to_html([dict(good, box=[0, 0, 60, 10])])
    short = dict(_example(), tokens=QUESTION[:5])
    with pytest.raises(ValueError, match=r"examples\[1\]: target_tokens has 5 tokens but weights "
                       r"have L = 6"):  # fmt: skip
        to_html([good, short])
    with pytest.raises(ValueError, match=r"examples\[0\] has unknown keys \['answer'\]"):
        to_html([dict(good, answer="red")])
    typo = {k: v for k, v in good.items() if k != "maps"} | {"map": good["maps"]}
    with pytest.raises(ValueError, match=r"examples\[0\] has unknown keys \['map'\]"):
        to_html([typo])
    with pytest.raises(ValueError, match=r"examples\[0\] must hold one of 'weights' and 'maps'"):
        to_html([dict(good, weights=good["maps"])])
    with pytest.raises(ValueError, match=r"give 'tokens' or 'target'"):
        to_html([dict(good, target=QUESTION)])
    with pytest.raises(TypeError, match=r"examples\[0\]\['title'\] must be a string"):
        to_html([dict(good, title=3)])
    with pytest.raises(ValueError, match="image, box apply to one record"):
        to_html([good], image=_image(), box=[0, 0, 1, 1])


def test_single_record_calls_keep_working():
    w = _maps((7, 5))
    data = page_data(to_html(w, list("abcde"), list("ABCDEFG")))
    assert "examples" not in data and data["source"] == list("abcde")
    # A list of numbers is still weights, not examples.
    assert page_data(to_html(w.tolist()))["L"] == 7


# ---------------------------------------------------------------- a model's batch


def test_batch_examples_from_a_vqa_model():
    from crossattn.models.vqa import VQAConfig, VQAModel

    torch.manual_seed(0)
    cfg = VQAConfig(vocab_size=9, n_answers=3, image_size=32, grid=4, d_model=16, heads=2,
                    dim_ff=16, cross_layers=2, readout="mean")  # fmt: skip
    model = VQAModel(cfg).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    with torch.no_grad():
        out = model(images.float() / 255, ids, ids != 0, return_maps=True)
    tokens = [["what", "colour", "is", "it"], ["how", "big"]]
    examples = batch_examples(
        out.maps, tokens, images=images, image_index=[1, 0], boxes=[[0, 0, 8, 8], None],
        titles=["q0", "q1"],
    )  # fmt: skip
    assert [ex["title"] for ex in examples] == ["q0", "q1"]
    assert examples[0]["weights"].shape == (2, 2, 4, 16) and examples[1]["weights"].shape[2] == 2
    data = page_data(to_html(examples))
    ex0, ex1 = data["examples"]
    assert ex0["target"] == tokens[0] and ex1["target"] == tokens[1]
    assert ex0["image"]["grid"] == [4, 4] and ex0["image"]["box"] == [0, 0, 8, 8]
    assert ex1["image"]["box"] is None and ex1["image"]["patches"] == "source"
    want = torch.stack([m[1, :, :2] for m in out.maps]).numpy()  # item 1: its 2 real tokens
    assert np.abs(decode_view(ex1) - want).max() <= float(want.max()) / 65535 * 1.01
    assert (ex0["image"]["ref"], ex1["image"]["ref"]) == (0, 1)  # image rows 1 and 0
    assert data["images"][0] != data["images"][1]
    assert all(uri.startswith("data:image/png;base64,") for uri in data["images"])
    # Items about one image share its picture: it travels once.
    same = page_data(to_html(batch_examples(out.maps, tokens, images=images, image_index=[1, 1])))
    assert len(same["images"]) == 1 and [ex["image"]["ref"] for ex in same["examples"]] == [0, 0]
    # Boxes measured on the original images (200 x 100 here) are scaled to the 32 x 32 shown.
    scaled = batch_examples(out.maps, tokens, images=images, boxes=[[50, 25, 100, 50], None],
                            box_sizes=[(200, 100), (64, 64)])  # fmt: skip
    assert scaled[0]["box"] == [8.0, 8.0, 16.0, 16.0] and "box" not in scaled[1]
    with pytest.raises(ValueError, match="box_sizes scales boxes to the images"):
        batch_examples(out.maps, tokens, boxes=[[0, 0, 1, 1], None], box_sizes=[(2, 2)] * 2)
    with pytest.raises(ValueError, match="tokens must be 2 token lists"):
        batch_examples(out.maps, tokens[:1])
    with pytest.raises(ValueError, match="boxes must hold 2 items"):
        batch_examples(out.maps, tokens, images=images, boxes=[None])
    with pytest.raises(ValueError, match=r"image_index holds rows outside the 2 images"):
        batch_examples(out.maps, tokens, images=images, image_index=[0, 2])
    with pytest.raises(ValueError, match=r"layer 1 has shape \(2, 2, 4, 9\)"):
        batch_examples([out.maps[0], torch.rand(2, 2, 4, 9)], tokens)


# ---------------------------------------------------------------- the script's modules


def _function_lengths(text: str) -> list[tuple[str, int]]:
    """Every JS function of `text` (nested ones and immediately invoked ones too) as (its first
    line, the number of lines between its braces); strings and comments are skipped."""
    out = []
    for m in re.finditer(r"\bfunction\b[^(]*\(", text):
        j = text.index("{", m.end())
        start, depth = j, 0
        while True:
            c = text[j]
            if c in "\"'":
                j += 1
                while text[j] != c:
                    j += 2 if text[j] == "\\" else 1
            elif text.startswith("//", j):
                j = text.index("\n", j)
            elif text.startswith("/*", j):
                j = text.index("*/", j) + 1
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        first = text[m.start() : text.index("\n", m.start())]
        out.append((first, text.count("\n", start, j) - 1))
    return out


def test_script_modules_stay_small():
    """The page inlines the modules in one scope; each file, and each function (nested ones and
    closures too), stays small; every script of the assets is inlined by a page."""
    giant = "(function () {\n" + "  x();\n" * 100 + "})();\n"
    assert _function_lengths(giant) == [("function () {", 100)]  # the check can fail
    bundle = viewer_script()
    scripts = resources.files("crossattn.viz").joinpath("assets")
    names = sorted(f.name for f in scripts.iterdir() if f.name.endswith(".js"))
    assert sorted([*JS_MODULES, "serve.js"]) == names
    served = serve_page()
    for name in names:
        text = scripts.joinpath(name).read_text("utf-8")
        assert text in (bundle if name in JS_MODULES else served)
        lines = text.splitlines()
        assert len(lines) < 650, f"{name} has {len(lines)} lines"
        for first, length in _function_lengths(text):
            assert length <= 90, f"{name}: {first} has {length} lines"
    assert bundle.count("function mount(") == 1 and "window.crossattnViewer" in bundle
    assert bundle in served and "<script src" not in served  # one offline page
