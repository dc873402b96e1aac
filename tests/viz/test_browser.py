"""The HTML viewer in a real headless Chromium (playwright): what a person sees and does.

Enable with ``apt-get install -y chromium`` (``make test`` does it when run as root); without
/usr/bin/chromium or playwright these tests skip. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crossattn.viz import to_html
from crossattn.viz._colors import COLOR_STOPS
from crossattn.viz._record import as_record
from crossattn.viz.html import choose_bits, dequantize

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
THRESHOLD = 0.1

SRC = ["Le", "chat", "noir", "dort", "sur", "le", "tapis", "."]
TGT = ["The", "black", "cat", "sleeps", "on", "the", "mat", "."]


class Session:
    """A page with every request, page error and dialog recorded."""

    def __init__(self, browser, tmp_path: Path):
        self.context = browser.new_context(viewport={"width": 1100, "height": 760})
        self.page = self.context.new_page()
        self.tmp_path = tmp_path
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = ""

    def open(self, html: str, name: str = "viewer.html") -> float:
        """Load the page from a file; seconds until the viewer is ready."""
        path = self.tmp_path / name
        path.write_text(html, encoding="utf-8")
        self.url = path.as_uri()
        start = time.perf_counter()
        self.page.goto(self.url)
        self.page.wait_for_selector(".ca-viewer[data-ready]", timeout=20_000)
        return time.perf_counter() - start

    def check_clean(self) -> None:
        """No script error, no dialog, and no request but the page itself (and inline data:)."""
        assert self.errors == []
        assert self.dialogs == []
        others = [u for u in self.requests if u != self.url and not u.startswith("data:")]
        assert others == [], f"the page made network requests: {others}"

    def tokens(self, side: str) -> list[dict]:
        return self.page.evaluate(
            """side => Array.from(document.querySelectorAll(`.ca-tok[data-side=${side}]`))
                .map(el => {
                    const cs = getComputedStyle(el);
                    const style = {};
                    for (const p of cs) style[p] = cs.getPropertyValue(p);
                    return {text: el.textContent, bg: cs.backgroundColor, w: el.dataset.w ?? null,
                            style: style};
                })""",
            side,
        )


@pytest.fixture
def session(browser, tmp_path):
    s = Session(browser, tmp_path)
    yield s
    s.context.close()


# ---------------------------------------------------------------- expectations


def _lut() -> np.ndarray:
    """The page's 256-colour table, computed as the script does."""
    stops = [(p, [int(c[i : i + 2], 16) for i in (1, 3, 5)]) for p, c in COLOR_STOPS]
    lut = np.zeros((256, 3))
    for i in range(256):
        x, k = i / 255, 0
        while k < len(stops) - 2 and x > stops[k + 1][0]:
            k += 1
        (p0, c0), (p1, c1) = stops[k], stops[k + 1]
        t = min(1.0, max(0.0, (x - p0) / (p1 - p0)))
        lut[i] = [round(a + t * (b - a)) for a, b in zip(c0, c1)]
    return lut


LUT = _lut()


def _rgb(css: str) -> np.ndarray:
    inside = css[css.index("(") + 1 : css.index(")")]
    return np.array([float(v) for v in inside.split(",")[:3]])


def _weights(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Softmax maps with no weight within 0.004 of the threshold (so the test is exact)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        w = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2.2, dim=-1)
        if not ((w - THRESHOLD).abs() < 0.004).any():
            return w


def _view(w: torch.Tensor, layer: int, head: int) -> np.ndarray:
    """The (L, S) map the page shows for a layer and head (-1: mean), from what it decodes."""
    rec = as_record(w)
    deq = dequantize(rec.weights, choose_bits(rec.weights)).astype(np.float64)
    deq = deq.mean(axis=0) if layer < 0 else deq[layer]
    return deq.mean(axis=0) if head < 0 else deq[head]


def _assert_highlight(got: list[dict], resting: list[dict], weights: np.ndarray) -> None:
    """Tokens >= threshold carry the colour of their weight; all others keep their resting style."""
    assert len(got) == len(weights)
    lit = []
    for i, (tok, rest, w) in enumerate(zip(got, resting, weights)):
        if w >= THRESHOLD:
            assert tok["w"] is not None, f"token {i} (weight {w:.3f}) is not highlighted"
            assert float(tok["w"]) == pytest.approx(w, abs=6e-4)
            expect = LUT[int(np.clip(round(w * 255), 0, 255))]
            assert np.abs(_rgb(tok["bg"]) - expect).max() <= 6, (i, tok["bg"], expect)
            lit.append((w, _rgb(tok["bg"]) @ np.array([0.2126, 0.7152, 0.0722])))
        else:
            assert tok["w"] is None, f"token {i} (weight {w:.3f}) is highlighted"
            assert tok["style"] == rest["style"], f"token {i} under the threshold changed style"
    lit.sort()
    lum = [v for _, v in lit]
    assert lum == sorted(lum, reverse=True), "intensity must follow the weight"


# ---------------------------------------------------------------- tests


def test_hover_highlights_what_each_token_attends_to(session):
    w = _weights(1, (2, 3, len(TGT), len(SRC)))
    session.open(to_html(w, SRC, TGT, title="fr-en"))
    page = session.page
    resting_src, resting_tgt = session.tokens("source"), session.tokens("target")
    assert [t["text"] for t in resting_src] == SRC and [t["text"] for t in resting_tgt] == TGT
    assert all(t["style"]["transition-duration"] == "0s" for t in resting_src)
    view = _view(w, 0, -1)  # on load: the first layer, mean of heads
    n_lit = 0
    for t in range(len(TGT)):
        page.hover(f".ca-tok[data-side=target][data-i='{t}']")
        _assert_highlight(session.tokens("source"), resting_src, view[t])  # at once
        n_lit += int((view[t] >= THRESHOLD).sum())
    assert 0 < n_lit < view.size  # both branches were exercised
    for s in (0, 3, 6):  # and the reverse: a source token lights the targets attending to it
        page.hover(f".ca-tok[data-side=source][data-i='{s}']")
        _assert_highlight(session.tokens("target"), resting_tgt, view[:, s])
    page.mouse.move(5, 700)
    assert session.tokens("source") == resting_src and session.tokens("target") == resting_tgt
    session.check_clean()


def test_pin_threshold_and_escape(session):
    w = _weights(2, (1, 2, len(TGT), len(SRC)))
    session.open(to_html(w, SRC, TGT))
    page = session.page
    resting = session.tokens("source")
    page.click(".ca-tok[data-side=target][data-i='2']")
    page.mouse.move(5, 5)  # leave: the pin holds
    view = _view(w, 0, -1)
    _assert_highlight(session.tokens("source"), resting, view[2])
    assert page.get_attribute(".ca-viewer", "data-active") == "target:2"
    page.fill(".ca-threshold", "0.3")
    got = session.tokens("source")
    assert [tok["w"] is not None for tok in got] == list(view[2] >= 0.3)
    assert float(page.input_value(".ca-threshold-range")) == pytest.approx(0.3)
    page.keyboard.press("Escape")
    assert session.tokens("source") == resting
    session.check_clean()


def test_selectors_switch_layer_and_head(session):
    w = _weights(3, (2, 3, len(TGT), len(SRC)))
    session.open(to_html(w, SRC, TGT, layer_names=["decoder.0", "decoder.1"]))
    page = session.page
    resting = session.tokens("source")
    options = page.eval_on_selector_all(".ca-layer option", "os => os.map(o => o.textContent)")
    assert options == ["decoder.0", "decoder.1", "mean of layers"]
    heads = page.eval_on_selector_all(".ca-head option", "os => os.map(o => o.textContent)")
    assert heads == ["mean of heads", "head 0", "head 1", "head 2"]
    seen = []
    for layer, head in [(0, -1), (1, -1), (1, 2), (-1, 0), (-1, -1)]:
        page.select_option(".ca-layer", str(layer))
        page.select_option(".ca-head", str(head))
        lit = []
        for t in (1, 4):
            page.hover(f".ca-tok[data-side=target][data-i='{t}']")
            got = session.tokens("source")
            _assert_highlight(got, resting, _view(w, layer, head)[t])
            lit.append(tuple(tok["w"] for tok in got))
        seen.append(tuple(lit))
    assert len(set(seen)) == len(seen), "every layer/head choice shows a different highlight"
    session.check_clean()


def test_matrix_view_and_links(session):
    w = _weights(4, (1, 1, len(TGT), len(SRC)))
    links = "0-0 1-2 2-1 3-3 4-4 5-5 6-6 7-7 4p3"  # Pharaoh: source-target
    session.open(to_html(w, SRC, TGT, links=links, predicted=[(1, 2), (2, 2)]))
    page = session.page
    # Token view: the links of the hovered token are drawn, all of them on demand.
    page.hover(".ca-tok[data-side=target][data-i='3']")  # gold 3-3 (sure), 4p3; predicted none
    assert page.eval_on_selector_all(
        ".ca-links path", "ps => ps.map(p => p.getAttribute('class'))"
    ) == [
        "ca-link-sure",
        "ca-link-possible",
    ]
    page.check(".ca-all-links")
    assert page.locator(".ca-links path").count() == 9 + 2
    # Matrix view: a canvas; the tokens stay, one element each.
    page.click(".ca-view-btn[data-view=matrix]")
    assert page.is_visible("canvas.ca-matrix") and not page.is_visible(".ca-token-view")
    assert page.locator(".ca-tok").count() == len(SRC) + len(TGT)
    texts = page.eval_on_selector_all(".ca-tok", "es => es.map(e => e.textContent)")
    assert texts == SRC + TGT
    geom = page.evaluate(
        "() => { const c = document.querySelector('canvas.ca-matrix');"
        " return {x0: +c.dataset.x0, y0: +c.dataset.y0, cell: +c.dataset.cell,"
        " dpr: c.width / parseFloat(c.style.width)}; }"
    )
    assert geom["cell"] >= 9  # large enough for labels at this size
    view = _view(w, 0, -1)
    for t, s in [(0, 5), (3, 1), (6, 7), (7, 2)]:
        # Cell centres off the link markers' strokes: a quarter into the cell.
        x = (geom["x0"] + (s + 0.25) * geom["cell"]) * geom["dpr"]
        y = (geom["y0"] + (t + 0.25) * geom["cell"]) * geom["dpr"]
        px = page.evaluate(
            "([x, y]) => Array.from(document.querySelector('canvas.ca-matrix')"
            ".getContext('2d').getImageData(x, y, 1, 1).data)",
            [int(x), int(y)],
        )
        expect = LUT[int(round(view[t, s] * 255))]
        assert np.abs(np.array(px[:3]) - expect).max() <= 6, (t, s, px, expect)
    session.check_clean()


def test_tokens_are_text_and_scripts_do_not_run(session):
    xss = "</script><img src=x onerror=alert(1)>"
    src = [xss, "<b>bold</b>", "a & b", "  ", "\u2028", "日本", "'\""]
    tgt = ["<script>alert(2)</script>", "x"]
    session.open(to_html(torch.full((2, len(src)), 1 / len(src)), src, tgt, title=xss))
    page = session.page
    page.hover(".ca-tok[data-side=target][data-i='0']")
    page.hover(".ca-tok[data-side=source][data-i='0']")
    assert (
        page.eval_on_selector_all(".ca-tok[data-side=source]", "es => es.map(e => e.textContent)")
        == src
    )
    assert (
        page.eval_on_selector_all(".ca-tok[data-side=target]", "es => es.map(e => e.textContent)")
        == tgt
    )
    assert page.locator("img").count() == 0 and page.locator(".ca-viewer b").count() == 0
    assert page.title() == xss
    # Every token is visible: one box each, none collapsed.
    boxes = page.eval_on_selector_all(
        ".ca-tok",
        "es => es.map(e => { const r = e.getBoundingClientRect(); return r.width * r.height; })",
    )
    assert len(boxes) == len(src) + len(tgt) and min(boxes) > 0
    session.check_clean()  # no dialog fired


def test_image_record_overlay(session):
    g = torch.Generator().manual_seed(5)
    image = torch.randint(60, 200, (3, 48, 64), generator=g, dtype=torch.uint8)  # (3, H, W)
    words = ["a", "bird", "on", "a", "branch"]
    w = torch.zeros(12, len(words))  # grid 3 x 4 patches
    w[:, 0] = 0.05
    w[:, 2:] = 0.95 / 3
    w[5, 1] = 1.0  # "bird" lives in patch (1, 1)
    w[5, 2:] = 0.0
    w[:, 0] = 1 - w[:, 1:].sum(-1)
    session.open(to_html(w, words, image=image, grid=(3, 4), title="text to image"))
    page = session.page
    canvas = page.locator("canvas.ca-image-canvas")
    assert canvas.is_visible()

    def pixels():
        return np.array(
            page.evaluate(
                "() => { const c = document.querySelector('canvas.ca-image-canvas');"
                " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"
            )
        )

    plain = pixels()
    page.hover(".ca-tok[data-side=source][data-i='1']")  # "bird"
    tinted = pixels()
    assert not np.array_equal(plain, tinted)
    box = canvas.bounding_box()
    # Hover patch (1, 1): the tokens it attends to light up ("bird" only).
    page.mouse.move(box["x"] + box["width"] * 1.5 / 4, box["y"] + box["height"] * 1.5 / 3)
    lit = [tok["w"] is not None for tok in session.tokens("source")]
    assert lit == [False, True, False, False, False]
    session.check_clean()


@pytest.mark.slow
def test_thousand_tokens_load_quickly(session):
    """1,000 x 1,000 tokens, 2 heads: loads within 10 s (a responsiveness bound, not a benchmark)."""
    n = 1000
    g = torch.Generator().manual_seed(6)
    w = torch.softmax(torch.randn(2, n, n, generator=g) * 3.0, dim=-1)
    tokens = [f"w{i}" for i in range(n)]
    seconds = session.open(to_html(w, tokens, tokens), name="big.html")
    assert seconds < 10.0, f"the 1,000-token page took {seconds:.1f} s to load"
    page = session.page
    assert page.locator(".ca-tok").count() == 2 * n
    page.hover(".ca-tok[data-side=target][data-i='500']")
    expected = int((_view(w, 0, -1)[500] >= THRESHOLD).sum())
    assert page.locator(".ca-tok[data-side=source][data-w]").count() == expected
    page.click(".ca-view-btn[data-view=matrix]")
    assert page.locator("canvas.ca-matrix").bounding_box()["width"] >= n
    session.check_clean()


def test_screenshot(session):
    g = torch.Generator().manual_seed(7)
    src = "Le petit chat noir dort sur le tapis rouge près de la fenêtre .".split()
    tgt = "The little black cat sleeps on the red mat by the window .".split()
    order = [0, 1, 3, 2, 4, 5, 6, 8, 7, 9, 11, 12, 13]  # target -> source, with fr/en swaps
    logits = torch.randn(len(tgt), len(src), generator=g) * 0.8
    for t, s in enumerate(order[: len(tgt)]):
        logits[t, s] += 3.5
    w = torch.softmax(logits, dim=-1)
    links = " ".join(f"{s}-{t}" for t, s in enumerate(order[: len(tgt)]))
    session.open(to_html(w, src, tgt, links=links, title="Le petit chat → The little cat"))
    session.page.hover(".ca-tok[data-side=target][data-i='3']")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "viewer.png"
    session.page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    session.check_clean()


def test_two_notebook_outputs_on_one_page(session):
    """Jupyter shows `_repr_html_` fragments side by side: each mounts and works on its own."""
    from crossattn.viz import view

    w = _weights(8, (1, 1, len(TGT), len(SRC)))
    first = view(w, SRC, TGT)._repr_html_()
    second = view(w.flip(-1), SRC, TGT)._repr_html_()
    session.open(f"<!DOCTYPE html><html><body>{first}<hr>{second}</body></html>", "nb.html")
    page = session.page
    page.wait_for_function("document.querySelectorAll('.ca-viewer[data-ready]').length === 2")
    page.hover(".ca-viewer >> nth=1 >> .ca-tok[data-side=target][data-i='0']")
    lit = page.evaluate(
        "() => Array.from(document.querySelectorAll('.ca-viewer')).map(v =>"
        " Array.from(v.querySelectorAll('.ca-tok[data-side=source]')).map(e => e.dataset.w != null))"
    )
    flipped = _view(w.flip(-1), 0, -1)[0]
    assert lit[0] == [False] * len(SRC)  # the other viewer is untouched
    assert lit[1] == [bool(v >= THRESHOLD) for v in flipped] and any(lit[1])
    session.check_clean()


# ---------------------------------------------------------------- image mode, examples, overview

QUESTION = ["what", "colour", "is", "the", "square", "?"]
GREY = 128  # a uniform image: every pixel of the canvas is known


def _grey_example(seed: int, tokens=QUESTION, box=(10, 8, 40, 30), heads=3) -> dict:
    g = torch.Generator().manual_seed(seed)
    maps = torch.softmax(torch.randn(2, heads, len(tokens), 64, generator=g) * 2.5, dim=-1)
    image = np.full((64, 64, 3), GREY, np.uint8)
    ex = {"tokens": tokens, "maps": maps, "image": image, "grid": (8, 8), "title": f"q{seed}"}
    if box is not None:
        ex["box"] = list(box)
    return ex


def _canvas(page, selector: str = "canvas.ca-image-canvas") -> np.ndarray:
    """The canvas's pixels as (height, width, 4)."""
    got = page.evaluate(
        """sel => { const c = document.querySelector(sel);
            return [c.width, c.height,
                    Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }""",
        selector,
    )
    return np.array(got[2], dtype=np.float64).reshape(got[1], got[0], 4)


def _page_map(maps: torch.Tensor, layer: int, head: int) -> np.ndarray:
    """The (T, P) map the page draws for a layer and head (-1: mean), from what it decodes."""
    rec = as_record(maps)
    deq = dequantize(rec.weights, choose_bits(rec.weights)).astype(np.float64)
    deq = deq.mean(axis=0) if layer < 0 else deq[layer]
    return deq.mean(axis=0) if head < 0 else deq[head]


def test_image_mode_hover_and_focus_draw_the_token_map(session):
    ex = _grey_example(11)
    session.open(to_html([ex]))
    page = session.page
    canvas = "canvas.ca-image-canvas"
    page.wait_for_function(f"document.querySelector('{canvas}').width > 0")
    resting = _canvas(page)
    assert page.get_attribute(canvas, "data-overlay") == ""
    assert resting.shape[:2] == (320, 320)  # 64 px shown at 320: 40 px a patch, 5 px a pixel
    view = _page_map(ex["maps"], 0, -1)  # on load: layer 0, mean of heads
    for t in (4, 1):
        page.hover(f".ca-tok[data-side=target][data-i='{t}']")
        assert page.get_attribute(canvas, "data-overlay") == f"target:{t}"
        peak = int(page.get_attribute(canvas, "data-peak"))
        assert peak == int(np.argmax(view[t]))
        tinted = _canvas(page)
        assert np.abs(tinted - resting).max() > 50
        # The peak patch's centre: the image faded to half over white, under the top colour.
        r, c = divmod(peak, 8)
        alpha = 215 / 255
        want = alpha * LUT[255] + (1 - alpha) * (0.5 * GREY + 0.5 * 255)
        assert np.abs(tinted[r * 40 + 20, c * 40 + 20, :3] - want).max() <= 8
    # Another head draws another map.
    page.select_option(".ca-head", "1")
    page.hover(".ca-tok[data-side=target][data-i='4']")
    assert int(page.get_attribute(canvas, "data-peak")) == int(
        np.argmax(_page_map(ex["maps"], 0, 1)[4])
    )
    page.mouse.move(900, 700)
    assert page.get_attribute(canvas, "data-overlay") == ""
    assert np.array_equal(_canvas(page), resting)
    # Keyboard: focus shows a token's map, Enter pins it, Escape lets go.
    page.focus(".ca-tok[data-side=target][data-i='2']")
    assert page.get_attribute(canvas, "data-overlay") == "target:2"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # focus moves on: the pin holds
    assert page.get_attribute(canvas, "data-overlay") == "target:2"
    page.keyboard.press("Escape")
    page.mouse.move(900, 700)
    page.focus(".ca-head")
    assert page.get_attribute(canvas, "data-overlay") == ""
    session.check_clean()


def test_image_mode_draws_the_box(session):
    session.open(to_html([_grey_example(12)]), "box.html")
    page = session.page
    page.wait_for_function("document.querySelector('canvas.ca-image-canvas').width > 0")
    assert page.get_attribute("canvas.ca-image-canvas", "data-box") == "10,8,40,30"
    boxed = _canvas(page)[..., :3]
    session.check_clean()
    session.requests.clear()
    session.open(to_html([_grey_example(12, box=None)]), "plain.html")
    page.wait_for_function("document.querySelector('canvas.ca-image-canvas').width > 0")
    assert page.get_attribute("canvas.ca-image-canvas", "data-box") == ""
    plain = _canvas(page)[..., :3]
    assert np.abs(plain - GREY).max() <= 1  # no overlay, no box: the image alone
    # Box [10, 8, 40, 30] in image pixels is [50, 40, 200, 150] on the canvas, a 2 px line.
    changed = np.abs(boxed - plain).max(axis=-1) > 40
    on_line = np.zeros_like(changed)
    on_line[39:41, 48:202] = on_line[149:151, 48:202] = True
    on_line[38:152, 49:51] = on_line[38:152, 199:201] = True
    assert changed[on_line].mean() > 0.9  # a dashed line, black on white
    assert not changed[~np.pad(on_line[1:-1, 1:-1], 1, constant_values=False)].any()
    top = boxed[40, 52:198]
    assert (top.max(axis=-1) < 40).any() and (top.min(axis=-1) > 230).any()
    session.check_clean()


def test_picker_switches_examples(session):
    second = QUESTION[:4] + ["circle", "?"]
    text = {"source": SRC, "target": TGT, "weights": _weights(13, (2, 3, len(TGT), len(SRC)))}
    examples = [_grey_example(14), _grey_example(15, tokens=second), text]
    session.open(to_html(examples, title="three"))
    page = session.page

    def shown():
        return page.eval_on_selector_all(
            ".ca-tok[data-side=target]", "es => es.map(e => e.textContent)"
        )

    assert page.get_attribute(".ca-viewer", "data-example") == "0" and shown() == QUESTION
    assert page.is_disabled(".ca-prev") and not page.is_disabled(".ca-next")
    options = page.eval_on_selector_all(".ca-example option", "os => os.map(o => o.textContent)")
    assert options == ["1. q14", "2. q15", "3. example 2"]
    assert page.inner_text(".ca-picker-count") == "1 / 3"
    page.select_option(".ca-head", "2")  # the reader's choice carries over
    page.click(".ca-next")
    assert page.get_attribute(".ca-viewer", "data-example") == "1" and shown() == second
    assert page.input_value(".ca-head") == "2" and page.inner_text(".ca-title") == "q15"
    page.hover(".ca-tok[data-side=target][data-i='4']")
    peak = int(page.get_attribute("canvas.ca-image-canvas", "data-peak"))
    assert peak == int(np.argmax(_page_map(examples[1]["maps"], 0, 2)[4]))
    page.select_option(".ca-example", "2")  # the list: a text example
    assert shown() == TGT and page.locator("canvas.ca-image-canvas").count() == 0
    assert page.is_disabled(".ca-next") and page.inner_text(".ca-picker-count") == "3 / 3"
    resting = session.tokens("source")
    page.hover(".ca-tok[data-side=target][data-i='3']")
    _assert_highlight(session.tokens("source"), resting, _view(text["weights"], 0, 2)[3])
    page.click(".ca-prev")
    assert page.get_attribute(".ca-viewer", "data-example") == "1"
    session.check_clean()


def test_overview_click_opens_that_head(session):
    w = _weights(16, (2, 3, len(TGT), len(SRC)))
    session.open(to_html(w, SRC, TGT, layer_names=["dec.0", "dec.1"]))
    page = session.page
    page.click(".ca-view-btn[data-view=overview]")
    assert page.is_visible(".ca-overview") and not page.is_visible(".ca-token-view")
    thumbs = page.locator(".ca-thumb")
    assert thumbs.count() == 2 * 3
    pictures = {}
    for layer in range(2):
        for head in range(3):
            px = _canvas(page, f".ca-thumb[data-layer='{layer}'][data-head='{head}'] canvas")
            assert px.shape[:2] == (len(TGT) * 12, len(SRC) * 12)  # 96 px / 8 tokens
            # Each thumbnail is its own map, scaled to its maximum: compare a cell's colour.
            m = _view(w, layer, head)
            t, s = np.unravel_index(np.argmin(m), m.shape)
            expect = LUT[int(round(m[t, s] / m.max() * 255))]
            assert np.abs(px[t * 12 + 6, s * 12 + 6, :3] - expect).max() <= 6
            pictures[layer, head] = px.tobytes()
    assert len(set(pictures.values())) == 6
    page.click(".ca-thumb[data-layer='1'][data-head='2']")
    assert page.is_visible(".ca-token-view") and not page.is_visible(".ca-overview")
    assert page.input_value(".ca-layer") == "1" and page.input_value(".ca-head") == "2"
    resting = session.tokens("source")
    page.hover(".ca-tok[data-side=target][data-i='5']")
    _assert_highlight(session.tokens("source"), resting, _view(w, 1, 2)[5])
    page.click(".ca-view-btn[data-view=overview]")
    on = page.eval_on_selector_all(
        ".ca-thumb.ca-on", "bs => bs.map(b => b.dataset.layer + ':' + b.dataset.head)"
    )
    assert on == ["1:2"]
    # In image mode the thumbnails show a word's map over the image; a click opens the head.
    session.check_clean()
    session.requests.clear()
    ex = _grey_example(17)
    session.open(to_html([ex]), "image.html")
    page.click(".ca-tok[data-side=target][data-i='4']")  # pin "square"
    page.click(".ca-view-btn[data-view=overview]")
    assert "Shown: square." in page.inner_text(".ca-overview-note")
    page.click(".ca-thumb[data-layer='0'][data-head='1']")
    canvas = "canvas.ca-image-canvas"
    assert page.get_attribute(canvas, "data-overlay") == "target:4"
    assert int(page.get_attribute(canvas, "data-peak")) == int(
        np.argmax(_page_map(ex["maps"], 0, 1)[4])
    )
    session.check_clean()
