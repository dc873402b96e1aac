"""Tracing, torch.compile, torch.export and ONNX export of the op, `CrossAttention` and the
seq2seq encoder, on every registered backend (and automatic dispatch).

Every graph is captured on one set of inputs and run on another of the same shapes whose masks
differ (a fully padded batch row included): a value read from the data while capturing would be
baked into the graph and give a wrong answer here. The op's call path reads shapes and dtypes
only, so each capture has no graph break and nothing data-dependent.

A backend that cannot go through one of these exporters must be listed in `REFUSALS` with the
reason; the listed export is then asserted to fail (so an entry leaves the list once the
backend exports) and the case is skipped with that reason.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import crossattn
from crossattn import CrossAttention, cross_attention
from tests.conftest import backend_reasons

# Backends that take quantised keys and values (int8) refuse the float inputs of these checks by
# design; they are checked with their own inputs in their own tests.
FLOAT_BACKENDS = [
    name
    for name in crossattn.available_backends()
    if not getattr(crossattn.backends.get_backend(name), "quantized_inputs", False)
]
CASES = [None, *FLOAT_BACKENDS]
IDS = ["dispatch" if b is None else b for b in CASES]
EXPORTERS = ["torchscript", "dynamo"]

# (backend, capture) -> why that backend cannot be captured that way. Asserted, never silent.
REFUSALS: dict[tuple[str, str], str] = {}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _refused(backend: str | None, capture: str, attempt) -> None:
    """Skip a listed (backend, capture) pair after asserting that it still fails."""
    reason = REFUSALS.get((backend or "dispatch", capture))
    if reason is None:
        return
    with pytest.raises(Exception):  # noqa: B017 - any failure of the listed capture
        attempt()
    pytest.skip(f"{backend} cannot be captured by {capture}: {reason}")


def test_refusals_name_registered_backends():
    for name, capture in REFUSALS:
        assert name == "dispatch" or name in FLOAT_BACKENDS, name
        assert capture in ("trace", "compile", "export", *EXPORTERS), capture


# --- inputs ---------------------------------------------------------------------------------------


def _key_masks(b: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (B, S) key masks: all valid (captured on), and padded with an empty row (run on)."""
    first = torch.ones(b, s, dtype=torch.bool)
    second = torch.ones(b, s, dtype=torch.bool)
    second[0, s - 2 :] = False
    second[b - 1] = False  # a batch row without context: its output is 0
    return first, second


# (B, H, Hk, L, S, E): "gqa" groups 4 query heads on 2 K/V heads.
OP_CASES = {
    "plain": (2, 2, 2, 3, 5, 4),
    "key_mask": (2, 2, 2, 3, 5, 4),
    "gqa+masks": (3, 4, 2, 3, 5, 4),
}


def _op_inputs(case: str, seed: int):
    b, h, hk, length, s, e = OP_CASES[case]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, length, e, generator=g)
    k = torch.randn(b, hk, s, e, generator=g)
    v = torch.randn(b, hk, s, e + 1, generator=g)
    if case == "plain":
        return (q, k, v)
    key_mask = _key_masks(b, s)[seed % 2]
    if case == "key_mask":
        return (q, k, v, key_mask)
    attn_mask = torch.randn(b, 1, length, s, generator=g)
    attn_mask[0, 0, 1] = float("-inf")  # a row blocked by the float mask
    return (q, k, v, key_mask, attn_mask)


def _op(backend: str | None, weights: bool | str = False):
    def attend(q, k, v, key_mask=None, attn_mask=None):
        return cross_attention(
            q, k, v, key_mask=key_mask, attn_mask=attn_mask, backend=backend,
            return_weights=weights,
        )  # fmt: skip

    return attend


def _close(got, want, tol: float = 1e-5) -> None:
    """Tensors, or tuples of tensors, equal in shape and dtype and within `tol`."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _close(g, w, tol)
        return
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# --- the op ---------------------------------------------------------------------------------------


class _HostReads(TorchDispatchMode):
    """Records every read of a tensor value back to Python (`.item()`, `bool(t)`, ...)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weights", [False, True, "mean"], ids=str)
@pytest.mark.parametrize("case", list(OP_CASES))
def test_the_op_reads_no_value_back(backend, case, weights):
    """The whole call, validation and every backend included, reads shapes, never values."""
    inputs = _op_inputs(case, 1)
    if weights and backend_reasons(backend, *inputs[:3], return_weights=weights):
        pytest.skip(f"{backend} returns no weights")
    with _HostReads() as mode:
        _op(backend, weights)(*inputs)
    assert mode.reads == []


@pytest.mark.parametrize("weights", [False, True, "mean"], ids=str)
@pytest.mark.parametrize("case", list(OP_CASES))
def test_jit_trace_of_the_op(backend, case, weights):
    """Every backend case of conftest (chunked with tiny tiles too), with and without weights."""
    first, second = _op_inputs(case, 0), _op_inputs(case, 1)
    if weights and backend_reasons(backend, *first[:3], return_weights=weights):
        pytest.skip(f"{backend} returns no weights")
    fn = _op(backend, weights)
    _refused(backend, "trace", lambda: torch.jit.trace(fn, first))
    traced = torch.jit.trace(fn, first, check_trace=False)
    _close(traced(*second), fn(*second))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OP_CASES))
@pytest.mark.parametrize("backend", CASES, ids=IDS)
def test_compile_of_the_op_has_no_graph_break(backend, case):
    fn = _op(backend)
    first, second = _op_inputs(case, 0), _op_inputs(case, 1)
    _refused(backend, "compile", lambda: torch.compile(fn, fullgraph=True, backend="eager")(*first))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*first)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    _close(compiled(*first), fn(*first))
    _close(compiled(*second), fn(*second))


# --- CrossAttention -------------------------------------------------------------------------------

B, L, S, QUERY_DIM, CONTEXT_DIM = 2, 3, 5, 16, 12


def _layer(backend: str | None, kv_heads: int = 4) -> CrossAttention:
    torch.manual_seed(0)
    layer = CrossAttention(
        QUERY_DIM, CONTEXT_DIM, heads=4, dim_head=8, kv_heads=kv_heads, backend=backend
    )
    return layer.eval()


def _layer_inputs(masks: str, seed: int) -> tuple[torch.Tensor, ...]:
    """queries, context and, by `masks`, the context mask and an additive (L, S) mask."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(B, L, QUERY_DIM, generator=g)
    context = torch.randn(B, S, CONTEXT_DIM, generator=g)
    if masks == "none":
        return (queries, context)
    context_mask = _key_masks(B, S)[seed % 2]
    if masks == "context_mask":
        return (queries, context, context_mask)
    attn_mask = torch.randn(L, S, generator=g)
    attn_mask[1, 1:] = float("-inf")
    return (queries, context, context_mask, attn_mask)


class _Call(torch.nn.Module):
    """layer(queries, context, context_mask=..., attn_mask=...) with positional tensors."""

    def __init__(self, layer: CrossAttention):
        super().__init__()
        self.layer = layer

    def forward(self, queries, context, context_mask=None, attn_mask=None):
        return self.layer(queries, context, context_mask=context_mask, attn_mask=attn_mask)


class _Prepared(torch.nn.Module):
    """Keys and values projected once by `prepare_context`, then attended to."""

    def __init__(self, layer: CrossAttention):
        super().__init__()
        self.layer = layer

    def forward(self, queries, context, context_mask):
        prepared = self.layer.prepare_context(context, context_mask=context_mask)
        return self.layer(queries, prepared)


LAYER_CASES = {
    "no mask": (4, "none", _Call),
    "masks": (4, "both", _Call),
    "grouped heads": (2, "both", _Call),
    "prepared context": (2, "context_mask", _Prepared),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LAYER_CASES))
@pytest.mark.parametrize("backend", CASES, ids=IDS)
def test_compile_of_the_layer_has_no_graph_break(backend, case):
    kv_heads, masks, wrapper = LAYER_CASES[case]
    model = wrapper(_layer(backend, kv_heads))
    first, second = _layer_inputs(masks, 0), _layer_inputs(masks, 1)
    with torch.no_grad():
        _refused(
            backend,
            "compile",
            lambda: torch.compile(model, fullgraph=True, backend="eager")(*first),
        )
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(*first)
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        _close(compiled(*second), model(*second))


@pytest.mark.slow
def test_compile_of_a_prepared_context_passed_in():
    """A PreparedContext made outside the compiled function is an input like any other."""
    layer = _layer(None, kv_heads=2)
    queries, context, context_mask = _layer_inputs("context_mask", 1)

    def attend(queries, prepared):
        return layer(queries, prepared)

    with torch.no_grad():
        prepared = layer.prepare_context(context, context_mask=context_mask)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(attend)(queries, prepared)
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(attend, fullgraph=True, backend="eager")
        _close(compiled(queries, prepared), attend(queries, prepared))


@pytest.mark.slow
def test_inductor_compile_of_the_layer_matches_eager():
    """The default torch.compile backend (inductor, generated C++), with masks and grouped
    heads, training included: outputs and gradients match eager."""
    layer = _layer(None, kv_heads=2).train()
    model = _Call(layer)
    first, second = _layer_inputs("both", 0), _layer_inputs("both", 1)
    compiled = torch.compile(model, fullgraph=True)
    for inputs in (first, second):
        queries = inputs[0].clone().requires_grad_()
        got = compiled(queries, *inputs[1:])
        (g_got,) = torch.autograd.grad(got.square().sum(), queries)
        queries = inputs[0].clone().requires_grad_()
        want = model(queries, *inputs[1:])
        (g_want,) = torch.autograd.grad(want.square().sum(), queries)
        _close(got, want)
        _close(g_got, g_want)


@pytest.mark.slow
@pytest.mark.parametrize("masks", ["none", "context_mask", "both"])
@pytest.mark.parametrize("backend", CASES, ids=IDS)
def test_torch_export_of_the_layer(backend, masks):
    model = _Call(_layer(backend))
    first, second = _layer_inputs(masks, 0), _layer_inputs(masks, 1)
    _refused(backend, "export", lambda: torch.export.export(model, first))
    exported = torch.export.export(model, first)
    with torch.no_grad():
        _close(exported.module()(*second), model(*second))


# --- ONNX -----------------------------------------------------------------------------------------


def _onnx_bytes(model: torch.nn.Module, args: tuple, names: list[str], exporter: str) -> bytes:
    """The model exported to ONNX by the TorchScript-based exporter (opset 17) or by dynamo."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(
                model, args, buffer, input_names=names, opset_version=17, dynamo=False
            )
            return buffer.getvalue()
        program = torch.onnx.export(model, args, input_names=names, dynamo=True, verbose=False)
        return program.model_proto.SerializeToString()


def _run_onnx(model_bytes: bytes, names: list[str], args: tuple) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = {n: a.numpy() for n, a in zip(names, args) if n in wanted}
    (out,) = session.run(None, feed)
    return torch.from_numpy(out)


LAYER_NAMES = ["queries", "context", "context_mask", "attn_mask"]


# The dynamo-based exporter takes seconds per graph: marked slow.
ONNX_EXPORTERS = ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)]


@pytest.mark.interop
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["kv_heads=heads", "grouped"])
@pytest.mark.parametrize("exporter", ONNX_EXPORTERS)
@pytest.mark.parametrize("backend", CASES, ids=IDS)
def test_onnx_export_of_the_layer_matches_onnxruntime(backend, exporter, kv_heads):
    """CrossAttention (4 heads on 4 or 2 K/V heads) with a context mask and an additive mask,
    float32, run by onnxruntime on other inputs, within 1e-5 of eager PyTorch."""
    pytest.importorskip("onnxscript" if exporter == "dynamo" else "onnx")
    model = _Call(_layer(backend, kv_heads))
    first, second = _layer_inputs("both", 0), _layer_inputs("both", 1)
    _refused(backend, exporter, lambda: _onnx_bytes(model, first, LAYER_NAMES, exporter))
    exported = _onnx_bytes(model, first, LAYER_NAMES, exporter)
    with torch.no_grad():
        want = model(*second)
    _close(_run_onnx(exported, LAYER_NAMES, second), want)


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source_ids, source_mask):
        return self.model.encode(source_ids, source_mask)


# Seq2SeqTransformer._embed checks the id range on the host only outside compilation (a read of
# the data that torch.export refuses), so the dynamo exporter goes through.
@pytest.mark.interop
@pytest.mark.parametrize(
    "exporter", ["torchscript", pytest.param("dynamo", marks=[pytest.mark.slow])]
)
def test_onnx_export_of_the_seq2seq_encoder_matches_onnxruntime(exporter):
    pytest.importorskip("onnxscript" if exporter == "dynamo" else "onnx")
    from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer

    torch.manual_seed(0)
    config = Seq2SeqConfig(
        source_vocab_size=11, target_vocab_size=9, d_model=16, heads=2, encoder_layers=2,
        decoder_layers=1, dim_ff=32, dropout=0.0, max_len=16,
    )  # fmt: skip
    model = _Encoder(Seq2SeqTransformer(config).eval())
    names = ["source_ids", "source_mask"]
    g = torch.Generator().manual_seed(0)
    runs = []
    for seed in (0, 1):
        ids = torch.randint(4, 11, (2, 6), generator=g)
        mask = _key_masks(2, 6)[seed][:, :]
        mask[-1, 0] = True  # every source has a token
        runs.append((ids.masked_fill(~mask, config.pad_id), mask))
    exported = _onnx_bytes(model, runs[0], names, exporter)
    with torch.no_grad():
        want = model(*runs[1])
    _close(_run_onnx(exported, names, runs[1]), want)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compile_of_training_with_dropout_has_no_graph_break(dtype):
    """Dispatch with dropout and gradients (a training step) compiles as one graph: it picks a
    backend whose dropout torch.compile can capture."""
    q, k, v, key_mask, attn_mask = _op_inputs("gqa+masks", 0)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))

    def step(q, k, v, key_mask, attn_mask):
        out = cross_attention(
            q, k, v, key_mask=key_mask, attn_mask=attn_mask.to(dtype), dropout_p=0.25
        )
        return out.float().square().sum()

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(q, k, v, key_mask, attn_mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    loss = torch.compile(step, fullgraph=True, backend="eager")(q, k, v, key_mask, attn_mask)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
