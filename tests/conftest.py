"""Shared test helpers: the backends to test, a float64 reference in plain math, derived tolerances.

- `backend` fixture: every name in `crossattn.available_backends()`, plus ``None`` (automatic
  dispatch), plus ``"chunked"`` with tiny tiles (4 keys wide) so that small test shapes cross
  many tiles. Request it and a new backend is tested without editing any test.
- `reference(q, k, v, **kw)`: attention written out in plain math, independent of the library,
  computed in float64 (or in the `dtype` asked for: the low-precision yardstick).
- `expected(q, k, v, dtype, **kw)`: the float64 result for inputs rounded to `dtype`, and the
  tolerance derived from it (see `TOLERANCE_FACTOR`).
- `assert_matches(actual, exp)`: an output, or an ``(out, weights)`` tuple, against an
  `Expected`; `assert_within(actual, ref, tol)`: shapes equal, finite, max abs error <= tol.
- `backend_reasons(name, q, k, v, ...)`: what a backend says against a call ([] = it runs it).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

import crossattn
from crossattn.backends import AttentionInputs, ChunkedBackend, get_backend, register_backend

BACKENDS: list[str] = [
    name
    for name in crossattn.available_backends()
    if not getattr(get_backend(name), "quantized_inputs", False)
]
"""The registered backends usable on this machine (the registry decides, not the tests), except
those that take only quantised keys and values (int8: tests/backends/test_backend_int8.py)."""

TINY_CHUNKED = "chunked@tiny-blocks"
"""Backend case: the chunked backend with tiny tiles (many tiles on small shapes)."""

DTYPES: list[torch.dtype] = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

TOLERANCE_FACTOR = 3.0
"""k in ``|backend - exact| <= k * |plain math in dtype - exact| + rounding_floor`` (the rule of
flash-attention's tests). The backends keep softmax statistics in float32 for low-precision
inputs, so they are at least as accurate as plain math done entirely in the low dtype; k = 3
leaves room for a different summation order and for the final rounding to the dtype. Measured:
the largest ratio |backend - exact| / |plain math in dtype - exact| over every backend (tiny
tiles included), float32, bfloat16 and float16, masks and 5 seeds was 1.43 (chunked, float32).
"""


def float64_floor(reference_value: Tensor) -> float:
    """64 float64 ulps of the result's scale: the floor where float64 plain math is exact."""
    scale = reference_value.detach().abs().max().item() if reference_value.numel() else 0.0
    return 64 * torch.finfo(torch.float64).eps * (1.0 + scale)


def rounding_floor(reference_value: Tensor, dtype: torch.dtype) -> float:
    """The small epsilon of every derived tolerance: one ulp of `dtype` at the result's scale
    (every backend rounds its result to `dtype`; the yardstick may round luckily), and never
    less than `float64_floor` (for float64 inputs the yardstick is the exact math itself)."""
    scale = reference_value.detach().abs().max().item() if reference_value.numel() else 0.0
    return max(torch.finfo(dtype).eps * scale, float64_floor(reference_value))


def backend_ids(value: object) -> str:
    return "dispatch" if value is None else str(value)


def backend_cases() -> list[str | None]:
    """``None`` (dispatch), every available backend, and the tiny-block chunked case."""
    cases: list[str | None] = [None, *BACKENDS]
    if "chunked" in BACKENDS:
        cases.append(TINY_CHUNKED)
    return cases


@contextmanager
def backend_case(case: str | None) -> Iterator[str | None]:
    """Resolve a case of `backend_cases()` to a ``backend=`` value for the duration of a block."""
    if case != TINY_CHUNKED:
        yield case
        return
    original = get_backend("chunked")
    register_backend(tiny_chunked(), replace=True)
    try:
        yield "chunked"
    finally:
        register_backend(original, replace=True)


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """Give every test the thread count the session started with: training (``choose_threads``)
    lowers it on a busy machine, and a later test must not depend on which ran before it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(params=backend_cases(), ids=backend_ids)
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A backend name to pass as ``backend=`` (None = dispatch); see the module docstring."""
    with backend_case(request.param) as name:
        yield name


def tiny_chunked() -> ChunkedBackend:
    """The chunked backend cut into tiles of a few queries x 4 keys (online softmax throughout)."""
    return ChunkedBackend(tile_elements=12, k_block=4)


def _allowed_and_bias(
    attn_mask: Tensor | None, key_mask: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    allowed = None
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask
        else:
            bias = attn_mask.to(dtype)
    if key_mask is not None:
        km = key_mask[:, None, None, :]  # (B, 1, 1, S)
        allowed = km if allowed is None else allowed & km
    return allowed, bias


def reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool | str = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention in plain math, computed entirely in `dtype` (float64 by default).

    query (B, H, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev); attn_mask bool (True = may
    attend) or additive float, broadcastable to (B, H, L, S); key_mask (B, S) bool. A row with
    no allowed key gives output 0 and weights 0. Differentiable (gradients of float masks too).
    Returns out (B, H, L, Ev) in `dtype`, or (out, weights) with weights (B, H, L, S) / (B, L, S).
    """
    q, k, v = (t.to(dtype) for t in (query, key, value))
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, S, E)
    v = v.repeat_interleave(groups, dim=1)  # (B, H, S, Ev)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, L, S)
    allowed, bias = _allowed_and_bias(attn_mask, key_mask, dtype)
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    row_ok = (scores.detach() > float("-inf")).any(dim=-1, keepdim=True)  # (B, H, L, 1)
    probs = torch.softmax(scores.masked_fill(~row_ok, 0.0), dim=-1) * row_ok  # (B, H, L, S)
    out = torch.matmul(probs, v)  # (B, H, L, Ev)
    if not return_weights:
        return out
    return out, probs.mean(dim=1) if return_weights == "mean" else probs


@dataclass
class Expected:
    """float64 result of inputs rounded to `dtype`, and the tolerances derived for that dtype."""

    out: Tensor
    out_tol: float
    weights: Tensor | None = None
    weights_tol: float | None = None


def rounded(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """`t` rounded to `dtype` if it is floating, unchanged otherwise (bool masks)."""
    if t is None or not t.is_floating_point():
        return t
    return t.to(dtype)


def expected(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    dtype: torch.dtype,
    *,
    attn_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool | str = False,
    factor: float = TOLERANCE_FACTOR,
) -> Expected:
    """The float64 reference of the inputs rounded to `dtype`, with derived tolerances.

    The yardstick is the same plain math run entirely in `dtype` on the same rounded inputs;
    the tolerance is ``factor * |yardstick - exact| + rounding_floor(exact, dtype)``.
    """
    args = [rounded(t, dtype) for t in (query, key, value)]
    kw = dict(
        attn_mask=rounded(attn_mask, dtype),
        key_mask=key_mask,
        scale=scale,
        return_weights=return_weights,
    )
    with torch.no_grad():
        exact = reference(*args, **kw)
        low = reference(*args, **kw, dtype=dtype)
    if not return_weights:
        exact, low = (exact, None), (low, None)
    (out, weights), (low_out, low_weights) = exact, low

    def tol(ref: Tensor, yardstick: Tensor) -> float:
        err = (yardstick.double() - ref).abs().max().item() if ref.numel() else 0.0
        return factor * err + rounding_floor(ref, dtype)

    return Expected(
        out=out,
        out_tol=tol(out, low_out),
        weights=weights,
        weights_tol=None if weights is None else tol(weights, low_weights),
    )


def assert_within(actual: Tensor, ref: Tensor, tol: float, what: str = "output") -> None:
    """``max |actual - ref| <= tol`` with shapes equal and no NaN/Inf in `actual`."""
    assert tuple(actual.shape) == tuple(ref.shape), f"{what}: shape {actual.shape} != {ref.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual.detach().double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3e} > derived tolerance {tol:.3e}"


def assert_matches(actual: Tensor, exp: Expected, what: str = "output") -> None:
    """Compare an output (or an ``(out, weights)`` tuple) with an `Expected`."""
    if isinstance(actual, tuple):
        out, weights = actual
        assert exp.weights is not None, f"{what}: got weights that were not expected"
        assert_within(out, exp.out, exp.out_tol, what)
        assert_within(weights, exp.weights, exp.weights_tol, f"{what} weights")
    else:
        assert_within(actual, exp.out, exp.out_tol, what)


def randn(*shape: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard normal values (float64 by default), from an explicit generator."""
    return torch.randn(*shape, generator=generator, dtype=dtype)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, fresh per test."""
    return torch.Generator().manual_seed(1234)


def backend_reasons(
    name: str | None,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None = None,
    return_weights: bool | str = False,
    dropout_p: float = 0.0,
) -> list[str]:
    """What the backend `name` says against such a call ([] for None: dispatch finds one)."""
    if name is None:
        return []
    inputs = AttentionInputs(
        query=query,
        key=key,
        value=value,
        mask=mask,
        scale=1.0,
        dropout_p=dropout_p,
        return_weights=return_weights,
    )
    return get_backend(name).not_supported_reasons(inputs)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny shapes: one intra-op thread avoids thread wake-ups on a busy machine.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through playwright; the test skips, saying how to enable it, without."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"headless Chromium not found at {CHROMIUM}; enable the browser tests with "
            "`apt-get install -y chromium` (make test installs it when run as root)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="install playwright (pip install 'crossattn[browser]')"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def write_tiny_translator(
    directory, source_words: list[str], target_words: list[str], seed: int = 0, **config
):
    """A random Seq2SeqTransformer over these words, saved as `crossattn train` writes a model
    directory (model.safetensors, config.json, both vocabularies). `config` overrides the tiny
    Seq2SeqConfig defaults (d_model 16, 2 heads, 1 + 2 layers, dim_ff 32, no dropout)."""
    import json

    from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer, Vocabulary
    from crossattn.training import CONFIG_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE, save_model

    src, tgt = Vocabulary.build([source_words]), Vocabulary.build([target_words])
    options = dict(d_model=16, heads=2, encoder_layers=1, decoder_layers=2, dim_ff=32, dropout=0.0)
    options.update(config)
    cfg = Seq2SeqConfig(source_vocab_size=len(src), target_vocab_size=len(tgt), **options)
    torch.manual_seed(seed)
    save_model(directory, Seq2SeqTransformer(cfg))
    (directory / CONFIG_FILE).write_text(json.dumps({"model": cfg.to_dict()}))
    src.save(directory / SOURCE_VOCAB_FILE)
    tgt.save(directory / TARGET_VOCAB_FILE)
    return directory


EPS64 = torch.finfo(torch.float64).eps


def tol64(ref: Tensor, reduction: int) -> float:
    """Float64 bound for two summation orders over `reduction` terms, at the result's scale
    (for layers compared with their explicit float64 computation)."""
    return 16 * reduction * EPS64 * (1.0 + ref.detach().abs().max().item())


def train_word_task(model, task, *, steps: int, lengths: tuple[int, int], lr: float = 1e-2):
    """Train a `Seq2SeqTransformer` briefly with Adam on ``task(g, rows, n) -> (src, tgt)``
    (32 rows of ``n`` tokens, n drawn from ``lengths``, inclusive), seeded; returns it in eval
    mode. The tests' trained models, whose decisions are learned rather than random."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr)
    g = torch.Generator().manual_seed(0)
    bos, eos = model.config.bos_id, model.config.eos_id
    for _ in range(steps):
        src, tgt = task(g, 32, int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g)))
        target_in = torch.cat([torch.full((32, 1), bos), tgt], 1)
        target_out = torch.cat([tgt, torch.full((32, 1), eos)], 1)
        logits = model(src, None, target_in).logits
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def mod7_task(g: torch.Generator, rows: int, n: int) -> tuple[Tensor, Tensor]:
    """A copy-like task whose hypotheses end at varied steps: target = (source % 7) + 4."""
    src = torch.randint(4, 13, (rows, n), generator=g)
    return src, (src % 7) + 4


def page_data(html: str) -> dict:
    """The JSON data script of a viewer page."""
    m = re.search(r'<script type="application/json" class="ca-data">(.*?)</script>', html, re.S)
    assert m is not None, "no data script in the page"
    return json.loads(m.group(1))


def decode_view(view: dict) -> np.ndarray:
    """What the page's script decodes of one view or example: (layers, H, L, S) float64."""
    raw = base64.b64decode(view["data"])
    q = np.frombuffer(raw, dtype="<u2" if view["bits"] == 16 else np.uint8).astype(np.float64)
    q = q.reshape(len(view["scales"]), -1) * (
        np.asarray(view["scales"])[:, None] / ((1 << view["bits"]) - 1)
    )
    return q.reshape(len(view["layers"]), view["heads"], view["L"], view["S"])
