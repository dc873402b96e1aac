"""crossattn.capture: AttentionRecorder on crossattn layers and torch MultiheadAttention.

Maps are checked against the float64 plain-math reference of conftest, recomputed by hand from
the layers' projections; outputs with and without recording are compared; every reduction,
the byte budget and the save/load round trip are exercised. transformers and diffusers models
are in test_capture_hf.py.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crossattn
from crossattn import CrossAttention
from crossattn.capture import AttentionRecorder, CaptureBudgetError, read_header, to_dense
from tests.conftest import assert_within, expected, float64_floor, reference

safetensors = pytest.importorskip("safetensors")


class TwoLayers(nn.Module):
    """Two cross-attention layers reading one context, with different shapes."""

    def __init__(self, backend: str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.first = CrossAttention(12, 10, heads=3, dim_head=4, backend=backend)
        self.second = nn.ModuleDict(
            {"cross": CrossAttention(12, 10, heads=4, dim_head=2, kv_heads=2, backend=backend)}
        )
        self.to(dtype)

    def forward(self, queries, context, context_mask=None):
        h = self.first(queries, context, context_mask=context_mask)
        return self.second["cross"](h, context, context_mask=context_mask)


def heads_split(layer: CrossAttention, queries, context):
    """The layer's q (B, H, L, D) and k, v (B, Hk, S, D), made with its own projections."""
    b, length, _ = queries.shape
    s = context.shape[1]
    q = layer.to_q(queries).view(b, length, layer.heads, layer.dim_head).transpose(1, 2)
    k = layer.to_k(context).view(b, s, layer.kv_heads, layer.dim_head).transpose(1, 2)
    v = layer.to_v(context).view(b, s, layer.kv_heads, layer.dim_head).transpose(1, 2)
    return q, k, v


def make_inputs(b=2, length=7, s=5, dtype=torch.float32, poison=True):
    torch.manual_seed(0)
    queries = torch.randn(b, length, 12, dtype=dtype)
    context = torch.randn(b, s, 10, dtype=dtype)
    lengths = torch.tensor([s, max(1, s - 2)])[:b]
    key_mask = crossattn.lengths_to_key_mask(lengths, s)
    if poison:
        context = context.masked_fill(~key_mask[:, :, None], float("nan"))  # NaN padding
    return queries, context, key_mask


@pytest.mark.parametrize("heads", ["mean", "all"])
@pytest.mark.parametrize("shape", [(7, 5), (1, 5), (6, 1), (33, 17)], ids=str)
def test_crossattn_maps_equal_float64_reference(heads, shape):
    length, s = shape
    model = TwoLayers().eval()
    queries, context, key_mask = make_inputs(length=length, s=s, poison=s > 1)
    if s == 1:
        key_mask = None
    with torch.no_grad(), AttentionRecorder(model, heads=heads) as rec:
        model(queries, context, context_mask=key_mask)
    assert rec.layer_names == ["first", "second.cross"]
    with torch.no_grad():
        hidden = model.first(queries, context, context_mask=key_mask)
        for name, layer, layer_in in (
            ("first", model.first, queries),
            ("second.cross", model.second["cross"], hidden),
        ):
            q, k, v = heads_split(layer, layer_in, context)
            mode = "mean" if heads == "mean" else True
            exp = expected(q, k, v, torch.float32, key_mask=key_mask, return_weights=mode)
            (recorded,) = rec.maps[name]
            want = (2, length, s) if heads == "mean" else (2, layer.heads, length, s)
            assert tuple(recorded.shape) == want
            assert recorded.device.type == "cpu"
            assert_within(recorded, exp.weights, exp.weights_tol, f"{name} map")
            assert rec.steps[name] == [0]
            assert rec.sources[name] == "crossattn.CrossAttention"


def test_crossattn_maps_float64_exact():
    model = TwoLayers(dtype=torch.float64).eval()
    queries, context, key_mask = make_inputs(length=9, s=6, dtype=torch.float64)
    with torch.no_grad(), AttentionRecorder(model, heads="all") as rec:
        model(queries, context, context_mask=key_mask)
        q, k, v = heads_split(model.first, queries, context)
    _, want = reference(q, k, v, key_mask=key_mask, return_weights=True)
    got = rec.maps["first"][0]
    assert got.dtype == torch.float64
    assert_within(got, want, float64_floor(want) * 4, "float64 map")
    # Padded (NaN) context positions get exactly zero weight.
    assert torch.equal(got[1, :, :, 4:], torch.zeros_like(got[1, :, :, 4:]))


@pytest.mark.parametrize("backend", [None, "chunked", "reference"], ids=lambda b: str(b))
def test_outputs_unchanged_by_recording(backend):
    model = TwoLayers(backend=backend).eval()
    queries, context, key_mask = make_inputs(length=11, s=6)
    with torch.no_grad():
        plain = model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, heads="all") as rec:
            recorded = model(queries, context, context_mask=key_mask)
    assert len(rec.maps) == 2
    if backend is not None:
        # The same backend computes the output with or without weights: bit for bit.
        assert torch.equal(plain, recorded)
        return
    # Dispatch may pick a different backend when weights are asked for (sdpa -> chunked on the
    # CPU): the output may differ by rounding. Derived bound: the recorded output is within 3x
    # the error of the plain output, both measured against the float64 model.
    exact_model = copy.deepcopy(model).double()
    with torch.no_grad():
        exact = exact_model(queries.double(), context.double(), context_mask=key_mask)
    err_plain = (plain.double() - exact).abs().max().item()
    assert_within(recorded, exact, 3 * err_plain + float64_floor(exact), "output with recording")


@pytest.mark.parametrize("caller", [True, "mean"])
@pytest.mark.parametrize("heads", ["mean", "all"])
def test_caller_weights_unchanged_and_computed_once(caller, heads, monkeypatch):
    layer = CrossAttention(12, 10, heads=3, dim_head=4, backend="chunked").eval()
    queries, context, key_mask = make_inputs(length=5, s=4)
    with torch.no_grad():
        out0, w0 = layer(queries, context, context_mask=key_mask, return_weights=caller)
        # Every head, asked of the layer in a separate call without a recorder.
        _, w_heads = layer(queries, context, context_mask=key_mask, return_weights=True)
        q, k, v = heads_split(layer, queries, context)
        calls = []
        original = crossattn.layers.attention.cross_attention

        def counting(*args, **kwargs):
            calls.append(kwargs["return_weights"])
            return original(*args, **kwargs)

        monkeypatch.setattr(crossattn.layers.attention, "cross_attention", counting)
        with AttentionRecorder(layer, heads=heads) as rec:
            out1, w1 = layer(queries, context, context_mask=key_mask, return_weights=caller)
    assert len(calls) == 1  # one op call serves the caller and the recorder
    assert torch.equal(out0, out1)
    assert w1.shape == w0.shape
    # "mean" from every head's weights differs from the op's own mean only by rounding.
    mean_tol = 4 * torch.finfo(torch.float32).eps
    assert_within(w1, w0, mean_tol, "caller weights")
    (m,) = rec.maps["CrossAttention"]
    exp = expected(q, k, v, torch.float32, key_mask=key_mask,
                   return_weights="mean" if heads == "mean" else True)  # fmt: skip
    assert_within(m, exp.weights, exp.weights_tol, "recorded map vs float64 reference")
    if heads == "mean":
        assert m.shape == (2, 5, 4)
        assert_within(m, w_heads.mean(dim=1), mean_tol, "mean map")
    else:
        assert m.shape == (2, 3, 5, 4)
        # The op was asked for every head (the recorder's need covers the caller's "mean"),
        # by the same backend on the same inputs as the separate call: bit for bit.
        assert torch.equal(m, w_heads)


def test_no_model_records_every_layer_in_context_and_steps():
    first = CrossAttention(12, 10, heads=2, dim_head=3)
    second = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    prepared = second.prepare_context(context)
    with torch.no_grad():
        # What the recorder must keep: each layer's head mean, asked of the layer itself.
        _, w_first = first(queries, context, return_weights="mean")  # (2, 7, 5)
        _, w_second = second(queries[:, :1], prepared, return_weights="mean")  # (2, 1, 5)
    rec = AttentionRecorder(steps=[0, 2])
    # Between making the recorder and entering it: neither recorded nor counted as a step.
    outside = first(queries[:, :3], context)
    with torch.no_grad(), rec:
        for _ in range(3):  # three decode-like calls of each layer
            first(queries, context)
            second(queries[:, :1], prepared)
    assert rec.layer_names == ["CrossAttention_0", "CrossAttention_1"]
    assert rec.steps == {"CrossAttention_0": [0, 2], "CrossAttention_1": [0, 2]}
    # Had the outside call counted, step 0 would be its (2, 3, 5) map.
    assert [m.shape for m in rec.maps["CrossAttention_0"]] == [(2, 7, 5)] * 2
    assert [m.shape for m in rec.maps["CrossAttention_1"]] == [(2, 1, 5)] * 2
    # The same op call ("mean", dispatch) on the same inputs: bit for bit.
    for m in rec.maps["CrossAttention_0"]:
        assert torch.equal(m, w_first)
    for m in rec.maps["CrossAttention_1"]:
        assert torch.equal(m, w_second)
    # After the block nothing is recorded any more, and the layer computes what it did before.
    after = first(queries[:, :3], context)
    assert torch.equal(after, outside) and outside.shape == (2, 3, 12)
    assert len(rec.maps["CrossAttention_0"]) == 2
    assert torch.equal(rec.concat_steps("CrossAttention_1"), torch.cat([w_second] * 2, dim=1))


def test_clear_forgets_maps_and_restarts_call_counts():
    torch.manual_seed(7)
    layer = CrossAttention(12, 10, heads=2, dim_head=3).eval()
    first_queries = torch.randn(2, 4 * 6, 12)  # a 4 x 6 image, row-major
    second_queries = torch.randn(2, 4 * 6, 12)
    context = torch.randn(2, 5, 10)
    with torch.no_grad():
        q, k, v = heads_split(layer, second_queries, context)
        exp = expected(q, k, v, torch.float32, return_weights="mean")
        rec = AttentionRecorder(layer, steps=[0], image_size=(40, 60))
        with rec:
            layer(first_queries, context)
            layer(first_queries, context)  # step 1: not kept
            assert rec.steps == {"CrossAttention": [0]} and rec.nbytes == 2 * 24 * 5 * 4
            assert rec.query_grid == {"CrossAttention": (4, 6)}
            (before,) = rec.maps["CrossAttention"]
            rec.clear()
            assert rec.maps == {} and rec.steps == {} and rec.timesteps == {}
            assert rec.query_grid == {} and rec.nbytes == 0 and rec.layer_names == []
            # The call count restarts: this call is step 0 again, so it is kept.
            layer(second_queries, context)
    (m,) = rec.maps["CrossAttention"]
    assert rec.steps == {"CrossAttention": [0]} and rec.timesteps == {"CrossAttention": [None]}
    assert rec.nbytes == m.nbytes == 2 * 24 * 5 * 4
    assert rec.query_grid == {"CrossAttention": (4, 6)}
    assert_within(m, exp.weights, exp.weights_tol, "map recorded after clear()")
    assert (before.double() - exp.weights).abs().max() > exp.weights_tol  # not the old map


def test_nested_recorders_both_record():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer) as outer:
        with AttentionRecorder(layer, heads=[1]) as inner:
            layer(queries, context)
        layer(queries, context)
    assert len(outer.maps["CrossAttention"]) == 2
    assert len(inner.maps["CrossAttention"]) == 1
    assert inner.maps["CrossAttention"][0].shape == (2, 1, 7, 5)


def test_recorder_cannot_be_entered_twice():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    rec = AttentionRecorder(layer)
    with rec, pytest.raises(RuntimeError, match="already recording"):
        rec.__enter__()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_maps_and_outputs(dtype):
    model = TwoLayers(dtype=dtype).cuda().eval()
    queries, context, key_mask = (t.cuda() for t in make_inputs(length=33, s=17, dtype=dtype))
    with torch.no_grad():
        plain = model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, heads="all") as rec:
            recorded = model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, device=None) as on_gpu_dense:
            model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, device=None, top_k=4) as on_gpu:
            model(queries, context, context_mask=key_mask)
        q, k, v = heads_split(model.first, queries, context)
        exp = expected(q, k, v, dtype, key_mask=key_mask, return_weights=True)
        exact = copy.deepcopy(model).double()(
            queries.double(), context.double(), context_mask=key_mask
        )
    got = rec.maps["first"][0]
    assert got.device.type == "cpu" and got.dtype == dtype
    assert_within(got, exp.weights.cpu(), exp.weights_tol, "CUDA map")
    assert on_gpu.maps["first"][0].is_cuda
    dense = to_dense(on_gpu.maps["first"][0])
    full = on_gpu_dense.maps["first"][0]
    assert full.is_cuda
    values, cols = full.topk(4, dim=-1)
    assert torch.equal(dense, torch.zeros_like(full).scatter_(-1, cols, values))
    err_plain = (plain.double() - exact).abs().max().item()
    assert_within(recorded, exact, 3 * err_plain + float64_floor(exact), "CUDA output")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mha_maps_equal_mha_weights():
    torch.manual_seed(1)
    model = MHADecoder(True, 7).cuda().eval()
    tgt, memory = torch.randn(2, 6, 12).cuda(), torch.randn(2, 5, 7).cuda()
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2]).cuda()
    with torch.no_grad(), AttentionRecorder(model, heads="all") as rec:
        model(tgt, memory, key_padding_mask=kpm, need_weights=False)
        x = model.self_attn(tgt, tgt, tgt, need_weights=False)[0]
        _, want = model.cross(x, memory, memory, key_padding_mask=kpm, average_attn_weights=False)
    assert_within(rec.maps["cross"][0], want.cpu(), 1e-5, "CUDA MHA map")


# ---------------------------------------------------------------- torch.nn.MultiheadAttention


class MHADecoder(nn.Module):
    def __init__(self, batch_first: bool, kdim: int | None = None, **kw):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(12, 3, batch_first=batch_first)
        self.cross = nn.MultiheadAttention(
            12, 3, batch_first=batch_first, kdim=kdim, vdim=kdim, **kw
        )

    def forward(self, tgt, memory, **kw):
        x = self.self_attn(tgt, tgt, tgt, need_weights=False)[0]
        return self.cross(x, memory, memory, **kw)[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 7])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_mha_maps_equal_mha_weights(batch_first, kdim, mask_kind):
    torch.manual_seed(1)
    model = MHADecoder(batch_first, kdim).eval()
    b, length, s = 2, 6, 5
    tgt = torch.randn(b, length, 12)
    memory = torch.randn(b, s, kdim or 12)
    if not batch_first:
        tgt, memory = tgt.transpose(0, 1), memory.transpose(0, 1)
    kw = {}
    if mask_kind != "none":
        kpm = torch.tensor([[False] * s, [False] * 3 + [True] * (s - 3)])  # True = ignore
        am = torch.rand(length, s) < 0.2
        am[:, 0] = False
        if mask_kind == "float":
            kpm = torch.zeros(b, s).masked_fill(kpm, float("-inf"))
            am = torch.randn(length, s)
        kw = dict(key_padding_mask=kpm, attn_mask=am)
    with torch.no_grad():
        plain = model(tgt, memory, need_weights=False, **kw)
        with AttentionRecorder(model, heads="all") as rec_all:
            out_all = model(tgt, memory, need_weights=False, **kw)
        with AttentionRecorder(model) as rec_mean:
            model(tgt, memory, need_weights=False, **kw)
        x = model.self_attn(tgt, tgt, tgt, need_weights=False)[0]
        _, w_heads = model.cross(x, memory, memory, average_attn_weights=False, **kw)
        _, w_mean = model.cross(x, memory, memory, average_attn_weights=True, **kw)
        cross64 = copy.deepcopy(model.cross).double()
        kw64 = {k: v.double() if v.is_floating_point() else v for k, v in kw.items()}
        _, exact = cross64(x.double(), memory.double(), memory.double(), **kw64,
                           average_attn_weights=False)  # fmt: skip
    assert torch.equal(plain, out_all)  # the module runs untouched
    assert rec_all.layer_names == ["cross"]  # the self-attention call is not recorded
    assert rec_all.sources["cross"] == "torch.nn.MultiheadAttention"
    # Derived: MHA's own float32 weights are off the float64 ones by err; ours may be off by 3x
    # that, so the two float32 results differ by at most 4x.
    err = (w_heads.double() - exact).abs().max().item()
    tol = 4 * err + float64_floor(exact)
    assert_within(rec_all.maps["cross"][0], w_heads, tol, "MHA per-head map")
    assert_within(rec_mean.maps["cross"][0], w_mean, tol, "MHA mean map")


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn", "unbatched"])
def test_mha_special_layouts(option):
    torch.manual_seed(2)
    kw = {"add_bias_kv": True} if option == "add_bias_kv" else {}
    if option == "add_zero_attn":
        kw = {"add_zero_attn": True}
    model = MHADecoder(True, **kw).eval()
    tgt, memory = torch.randn(2, 4, 12), torch.randn(2, 3, 12)
    if option == "unbatched":
        tgt, memory = tgt[0], memory[0]
    with torch.no_grad(), AttentionRecorder(model, heads="all") as rec:
        model(tgt, memory, need_weights=False)
        x = model.self_attn(tgt, tgt, tgt, need_weights=False)[0]
        _, want = model.cross(x, memory, memory, average_attn_weights=False)
    if option == "unbatched":
        want = want.unsqueeze(0)
    assert_within(rec.maps["cross"][0], want, 64 * torch.finfo(torch.float32).eps, option)


def test_mha_reuses_weights_it_returned():
    torch.manual_seed(3)
    model = MHADecoder(True).eval()
    tgt, memory = torch.randn(2, 4, 12), torch.randn(2, 3, 12)
    with torch.no_grad(), AttentionRecorder(model, heads=[2, 0]) as rec:
        _, returned = model.cross(tgt, memory, memory, average_attn_weights=False)
    assert torch.equal(rec.maps["cross"][0], returned[:, [2, 0]])


# ---------------------------------------------------------------- reductions


def test_heads_list_and_bad_head_index():
    model = TwoLayers().eval()
    queries, context, key_mask = make_inputs()
    with torch.no_grad():
        with AttentionRecorder(model, heads="all") as full:
            model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, heads=[2, 0], layers=["first"]) as some:
            model(queries, context, context_mask=key_mask)
    assert some.layer_names == ["first"]
    assert torch.equal(some.maps["first"][0], full.maps["first"][0][:, [2, 0]])
    with pytest.raises(
        ValueError, match=r"heads=\[3\] asks for head\(s\) \[3\], but layer 'first' has 3 heads"
    ):
        with torch.no_grad(), AttentionRecorder(model, heads=[3]):
            model(queries, context, context_mask=key_mask)


@pytest.mark.parametrize(
    "layers, names",
    [
        (r"^second", ["second.cross"]),
        (re.compile("first"), ["first"]),
        (["first", "second.cross"], ["first", "second.cross"]),
        (lambda name: name.endswith("cross"), ["second.cross"]),
    ],
    ids=["regex", "pattern", "list", "callable"],
)
def test_layer_selection(layers, names):
    model = TwoLayers().eval()
    queries, context, key_mask = make_inputs()
    with torch.no_grad(), AttentionRecorder(model, layers=layers) as rec:
        model(queries, context, context_mask=key_mask)
    assert rec.layer_names == names


def test_unknown_layer_name_lists_the_layers():
    model = TwoLayers()
    with pytest.raises(
        ValueError, match=r"no attention layer named \['nope'\].*'first', 'second.cross'"
    ):
        with AttentionRecorder(model, layers=["first", "nope"]):
            pass


@pytest.mark.parametrize(
    "steps, kept",
    [(1, [1]), (range(0, 4, 2), [0, 2]), (slice(1, None, 2), [1, 3]), (lambda i: i > 2, [3])],
    ids=["int", "range", "open-slice", "callable"],
)
def test_step_selection(steps, kept):
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer, steps=steps) as rec:
        for _ in range(4):
            layer(queries, context)
    assert rec.steps["CrossAttention"] == kept


@pytest.mark.parametrize("heads", ["mean", "all"])
def test_top_k_sparse_maps(heads, tmp_path):
    model = TwoLayers().eval()
    queries, context, key_mask = make_inputs(length=6, s=9)
    with torch.no_grad():
        with AttentionRecorder(model, heads=heads) as dense:
            model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, heads=heads, top_k=3) as rec:
            model(queries, context, context_mask=key_mask)
    for name in rec.layer_names:
        full = dense.maps[name][0]
        sparse = rec.maps[name][0]
        assert sparse.layout == torch.sparse_csr and sparse.shape == full.shape
        values, cols = full.topk(3, dim=-1)
        want = torch.zeros_like(full).scatter_(-1, cols, values)
        assert torch.equal(to_dense(sparse), want)
        assert torch.equal(rec.to_dense()[name][0], want)
        assert rec.nbytes < dense.nbytes
    path = tmp_path / "topk.safetensors"
    rec.save(path)
    back = AttentionRecorder.load(path)
    for name in rec.layer_names:
        assert back.maps[name][0].layout == torch.sparse_csr
        assert torch.equal(to_dense(back.maps[name][0]), to_dense(rec.maps[name][0]))
    assert back.top_k == 3


def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of bilinear resampling along one axis, half-pixel
    centres (align_corners=False), source positions clamped to the edges."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(src)
        i1 = min(i0 + 1, n_in - 1)
        a[i, i0] += 1 - (src - i0)
        a[i, i1] += src - i0
    return a


def test_grid_downsamples_and_upsamples_image_queries():
    torch.manual_seed(4)
    layer = CrossAttention(12, 10, heads=2, dim_head=3).eval()
    queries = torch.randn(2, 4 * 6, 12)  # a 4 x 6 image, row-major
    context = torch.randn(2, 5, 10)
    with torch.no_grad():
        with AttentionRecorder(layer) as dense:
            layer(queries, context)
        with AttentionRecorder(layer, grid=(2, 3), image_size=(40, 60)) as down:
            layer(queries, context)
        with AttentionRecorder(layer, grid=8, image_size=(40, 60)) as up:
            layer(queries, context)
    full = dense.maps["CrossAttention"][0]  # (B, 24, S)
    image = full.view(2, 4, 6, 5).permute(0, 3, 1, 2)  # (B, S, 4, 6)
    pooled = F.avg_pool2d(image, 2).permute(0, 2, 3, 1).reshape(2, 6, 5)  # (B, 2*3, S)
    assert_within(down.maps["CrossAttention"][0], pooled, 1e-6, "2x2 average")
    upsampled = up.maps["CrossAttention"][0]
    assert upsampled.shape == (2, 64, 5)
    assert down.query_grid == {"CrossAttention": (2, 3)}
    assert up.query_grid == {"CrossAttention": (8, 8)}
    # Upsampling is documented as bilinear: resample the dense map by hand, in float64.
    want = bilinear_matrix(4, 8) @ image.double() @ bilinear_matrix(6, 8).T  # (B, S, 8, 8)
    want = want.permute(0, 2, 3, 1).reshape(2, 64, 5)
    # Two separable passes, each a convex combination of 2 float32 values rounded to float32:
    # a few ulps of the largest weight.
    tol = 4 * torch.finfo(torch.float32).eps * want.abs().max().item() + float64_floor(want)
    assert_within(upsampled, want, tol, "bilinear 4x6 -> 8x8")
    assert_within(upsampled.sum(-1), torch.ones(2, 64), 1e-5, "rows stay distributions")


def test_grid_needs_a_shape():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(length=7, poison=False)
    with pytest.raises(ValueError, match=r"L=7 is not a square and no image size is known"):
        with torch.no_grad(), AttentionRecorder(layer, grid=2):
            layer(queries, context)


def test_max_bytes_budget():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(length=7, s=5, poison=False)
    one_map = 2 * 7 * 5 * 4  # (B, L, S) float32
    rec = AttentionRecorder(layer, max_bytes=2 * one_map + 10)
    with torch.no_grad(), rec:
        layer(queries, context)
        layer(queries, context)
        with pytest.raises(CaptureBudgetError) as info:
            layer(queries, context)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert (
        f"max_bytes={2 * one_map + 10} exceeded: {2 * one_map} bytes are recorded in 2 maps"
        in message
    )
    assert (
        f"layer 'CrossAttention' at step 2 (shape (2, 7, 5), torch.float32) needs {one_map}"
        in message
    )
    assert "top_k=" in message and "steps=" in message
    assert len(rec.maps["CrossAttention"]) == 2 and rec.nbytes == 2 * one_map  # not stored


def test_save_load_round_trip(tmp_path):
    model = TwoLayers().eval()
    queries, context, key_mask = make_inputs()
    image = torch.randint(0, 255, (4, 6, 3), dtype=torch.uint8)
    with (
        torch.no_grad(),
        AttentionRecorder(
            model, heads="all", source_tokens=["a", "b", "c", "d", "</s>"], image=image
        ) as rec,
    ):
        model(queries, context, context_mask=key_mask)
        model(queries[:, :3], context, context_mask=key_mask)
    rec.metadata["note"] = {"lang": "en"}
    path = tmp_path / "maps.safetensors"
    rec.save(path, target_tokens=list("abcdefg"))
    back = AttentionRecorder.load(path)
    assert back.layer_names == rec.layer_names
    for name in rec.layer_names:
        assert len(back.maps[name]) == 2
        for got, want in zip(back.maps[name], rec.maps[name]):
            assert torch.equal(got, want)
        assert back.steps[name] == [0, 1]
    assert back.metadata["source_tokens"] == ["a", "b", "c", "d", "</s>"]
    assert back.metadata["target_tokens"] == list("abcdefg")
    assert back.metadata["note"] == {"lang": "en"}
    assert back.heads == "all"
    assert torch.equal(back.image, image)
    assert back.nbytes == rec.nbytes
    header = read_header(path)
    assert header["layers"] == ["first", "second.cross"]
    assert header["maps"]["first"][1]["shape"] == [2, 3, 3, 5]
    assert header["sources"]["first"] == "crossattn.CrossAttention"
    json.dumps(header)


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="is not a crossattn capture"):
        AttentionRecorder.load(path)


def test_unserialisable_metadata_is_refused(tmp_path):
    rec = AttentionRecorder(metadata={"bad": object()})
    with pytest.raises(TypeError, match="rec.metadata must be JSON-serialisable"):
        rec.save(tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"heads": "max"}, ValueError, r"heads must be 'mean', 'all' or a non-empty list"),
        ({"heads": []}, ValueError, r"heads must be 'mean', 'all' or a non-empty list"),
        ({"heads": [0, -1]}, ValueError, r"non-negative int head indices"),
        ({"top_k": 0}, ValueError, r"top_k must be a positive int, got 0"),
        ({"grid": (2, 0)}, ValueError, r"grid must be None, a positive int or \(gh, gw\)"),
        (
            {"image_size": (3,)},
            ValueError,
            r"image_size must be \(H, W\): two positive ints, got \(3,\)",
        ),
        ({"max_bytes": -1}, ValueError, r"max_bytes must be a non-negative int, got -1"),
        ({"layers": 3}, TypeError, r"layers must be None, a regular expression"),
        ({"layers": "("}, ValueError, r"layers='\(' is not a valid regular expression"),
        ({"steps": 1.5}, TypeError, r"steps must be None, an int, a range"),
        ({"timesteps": "10"}, TypeError, r"timesteps must be None, a collection"),
        ({"dtype": torch.int8}, TypeError, r"dtype must be None or a floating torch.dtype"),
        ({"model": "m"}, TypeError, r"model must be a torch.nn.Module or None, got str"),
    ],
)
def test_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AttentionRecorder(**kwargs)


def test_timesteps_need_a_timestep_argument():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with pytest.raises(
        ValueError, match="timesteps= was given, but the model call had no `timestep`"
    ):
        with torch.no_grad(), AttentionRecorder(layer, timesteps=[10]):
            layer(queries, context)


@pytest.mark.parametrize("heads", ["all", [1]], ids=str)
def test_heads_kept_need_head_weights_error(heads):
    # A layer that hands the recorder head-mean weights (B, L, S) through the hook protocol
    # (`crossattn.layers.hooks`), while the recorder keeps heads: refused, not stored.
    from crossattn.layers.hooks import AttentionCall, layer_call

    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad():
        _, mean = layer(queries, context, return_weights="mean")  # (2, 7, 5)
    with AttentionRecorder(layer, heads=heads) as rec:
        call = layer_call(layer)
        assert call is not None and call.weights is True  # it asks the layer for every head
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"heads={rec.heads!r} keeps heads, but layer 'CrossAttention' gave head-mean "
                "weights of shape (2, 7, 5); expected (B, heads, L, S)"
            ),
        ):
            q, k, _ = heads_split(layer, queries, context)
            call.hand_over(AttentionCall(layer, q, k, layer.scale, weights=mean), False)
    assert rec.maps == {} and rec.nbytes == 0


def test_follow_beams_errors():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer, steps=[1]) as rec:
        layer(queries[:, :1], context)
        layer(queries[:, :1], context)
    with pytest.raises(ValueError, match=r"needs the maps of calls 0..1"):
        rec.follow_beams(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"beam_indices must be a \(N, T\) tensor"):
        rec.follow_beams(torch.zeros(2, dtype=torch.long))
    with pytest.raises(KeyError, match="no maps recorded for layer 'x'"):
        rec.concat_steps("x")


def test_storage_dtype_and_device_none():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer, dtype=torch.float16, device=None) as rec:
        layer(queries, context)
    (m,) = rec.maps["CrossAttention"]
    assert m.dtype == torch.float16 and rec.nbytes == m.numel() * 2


def test_hook_point_adds_no_compile_graph_break_when_nothing_records():
    layer = CrossAttention(12, 10, heads=2, dim_head=3).eval()
    queries, context, _ = make_inputs(poison=False)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(layer)(queries, context)
    for reason in explanation.break_reasons:
        frames = [f"{f.filename}:{f.lineno}" for f in reason.user_stack]
        assert not any("capture" in f for f in frames), frames
    torch._dynamo.reset()


def train_step_recorded(backend: str | None = None):
    """A training step of TwoLayers, plain and recorded: the model, its inputs, both outputs and
    both query gradients, and the recorder."""
    torch.manual_seed(5)
    model = TwoLayers(backend=backend).train()
    queries, context, key_mask = make_inputs(length=5, s=4)
    queries.requires_grad_(True)
    plain = model(queries, context, context_mask=key_mask)
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), queries)
    with AttentionRecorder(model) as rec:
        recorded = model(queries, context, context_mask=key_mask)
    (grad_recorded,) = torch.autograd.grad(recorded.square().sum(), queries)
    assert not rec.maps["first"][0].requires_grad
    inputs = (queries, context, key_mask)
    return model, inputs, plain, grad_plain, recorded, grad_recorded, rec


def test_recording_in_training_with_gradients():
    model, inputs, plain, grad_plain, recorded, grad_recorded, rec = train_step_recorded()
    queries, context, key_mask = inputs
    # Dispatch computes the weights on the reference backend (weights with gradients), so the
    # output and its gradient differ from the unrecorded call only by rounding: within 3x the
    # unrecorded call's error, both measured against the float64 model.
    exact_model = copy.deepcopy(model).double()
    q64 = queries.detach().double().requires_grad_(True)
    exact = exact_model(q64, context.double(), context_mask=key_mask)
    (grad_exact,) = torch.autograd.grad(exact.square().sum(), q64)
    for got, want, ref, what in (
        (recorded, plain, exact, "output in training"),
        (grad_recorded, grad_plain, grad_exact, "gradient in training"),
    ):
        err = (want.detach().double() - ref).abs().max().item()
        assert_within(got, ref.detach(), 3 * err + float64_floor(ref), what)


def module_weights(decoder, tgt, memory, causal, padding):
    """Each decoder layer's cross-attention weights, asked of its own MultiheadAttention."""
    x, weights = tgt, []
    for mod in decoder.layers:
        sa = mod.self_attn(x, x, x, attn_mask=causal, need_weights=False)[0]
        h = mod.norm1(x + sa)
        _, w = mod.multihead_attn(
            h, memory, memory, key_padding_mask=padding, average_attn_weights=False
        )
        weights.append(w)
        x = mod(x, memory, tgt_mask=causal, memory_key_padding_mask=padding)
    return weights


def test_torch_transformer_decoder_records_only_its_cross_attention():
    torch.manual_seed(6)
    layer = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    decoder = nn.TransformerDecoder(layer, num_layers=2).eval()
    tgt, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # True = ignore
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        plain = decoder(tgt, memory, tgt_mask=causal, memory_key_padding_mask=padding)
        with AttentionRecorder(decoder, heads="all") as rec:
            out = decoder(tgt, memory, tgt_mask=causal, memory_key_padding_mask=padding)
        wants = module_weights(decoder, tgt, memory, causal, padding)
        exact = module_weights(
            copy.deepcopy(decoder).double(), tgt.double(), memory.double(), causal.double(), padding
        )
    assert torch.equal(plain, out)
    assert rec.layer_names == ["layers.0.multihead_attn", "layers.1.multihead_attn"]
    for name, want, want64 in zip(rec.layer_names, wants, exact):
        err = (want.double() - want64).abs().max().item()
        assert_within(rec.maps[name][0], want, 4 * err + float64_floor(want64), name)
        assert torch.equal(rec.maps[name][0][1, :, :, 4:], torch.zeros(4, 5, 3))


def test_self_attention_layers_are_left_out_unless_selected():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"self_attn": CrossAttention(16, heads=2, dim_head=8), "cross": CrossAttention(16, 12)}
    )
    model["self_attn"].role = "self"
    tokens, context = torch.randn(1, 5, 16), torch.randn(1, 7, 12)

    def run(recorder):
        with recorder as rec, torch.no_grad():
            model["self_attn"](tokens, tokens)
            model["cross"](tokens, context)
        return rec

    assert set(run(AttentionRecorder(model)).maps) == {"cross"}
    assert set(run(AttentionRecorder()).maps) == {"CrossAttention_0"}  # the cross layer only
    assert set(run(AttentionRecorder(model, layers=["self_attn"])).maps) == {"self_attn"}
    assert set(run(AttentionRecorder(model, layers="attn|cross")).maps) == {"self_attn", "cross"}


# ---------------------------------------------------------------- review fixes


def equal_with_nan(a, b):
    """Bit for bit equal, NaN where the other has NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def mha_float64_heads(mha, query, memory, **kw):
    """MultiheadAttention's own per-head weights in float64, NaN (empty) rows set to 0."""
    mha64 = copy.deepcopy(mha).double()
    kw64 = {k: v.double() if v.is_floating_point() else v for k, v in kw.items()}
    with torch.no_grad():
        _, w = mha64(query.double(), memory.double(), memory.double(), **kw64,
                     average_attn_weights=False)  # fmt: skip
    return w.nan_to_num(0.0)  # (B, H, L, S)


@pytest.mark.parametrize("need_weights", [True, False], ids=["returned", "recomputed"])
@pytest.mark.parametrize("heads", ["mean", "all"])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "padding", "per-head"])
def test_mha_rows_with_no_allowed_key_get_zeros(mask_kind, heads, need_weights):
    torch.manual_seed(8)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x, mem = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    kw = {}
    if mask_kind == "bool":
        am = torch.zeros(4, 3, dtype=torch.bool)
        am[0] = True  # torch: True = not allowed; row 0 may attend nowhere
        kw = {"attn_mask": am}
    elif mask_kind == "float":
        am = torch.randn(4, 3)
        am[2] = float("-inf")
        kw = {"attn_mask": am}
    elif mask_kind == "padding":
        kw = {"key_padding_mask": torch.tensor([[False] * 3, [True] * 3])}  # batch 1: no key
    else:  # (B * H, L, S): row 1 of batch 0 is empty for head 1 only
        am = torch.zeros(4, 4, 3, dtype=torch.bool)
        am[1, 1] = True
        kw = {"attn_mask": am}
    with torch.no_grad():
        plain, plain_w = mha(x, mem, mem, need_weights=need_weights, **kw)
        with AttentionRecorder(mha, heads=heads) as rec:
            out, w = mha(x, mem, mem, need_weights=need_weights, **kw)
    # The module's output and its own weights are untouched (torch's NaN rows included).
    assert equal_with_nan(out, plain)
    if need_weights:
        assert equal_with_nan(w, plain_w) and w.isnan().any()
    want = mha_float64_heads(mha, x, mem, **kw)
    empty = want.sum(dim=-1) == 0  # (B, H, L): rows with no allowed key
    assert empty.any()
    if heads == "mean":
        want = want.mean(dim=1)
        empty = empty.all(dim=1)
    (got,) = rec.maps["MultiheadAttention"]
    assert_within(got, want, 64 * torch.finfo(torch.float32).eps, f"{mask_kind} map")
    assert torch.equal(got[empty], torch.zeros_like(got[empty]))  # exactly 0, never NaN


def test_mha_unbatched_returned_weights_zero_empty_rows():
    torch.manual_seed(9)
    mha = nn.MultiheadAttention(8, 2).eval()
    x, mem = torch.randn(4, 8), torch.randn(3, 8)
    am = torch.zeros(4, 3, dtype=torch.bool)
    am[3] = True
    with torch.no_grad(), AttentionRecorder(mha, heads="all") as rec:
        mha(x, mem, mem, attn_mask=am, average_attn_weights=False)
    want = mha_float64_heads(mha, x[:, None], mem[:, None], attn_mask=am)  # (L, 1, E): B = 1
    (got,) = rec.maps["MultiheadAttention"]
    assert_within(got, want, 64 * torch.finfo(torch.float32).eps, "unbatched map")
    assert torch.equal(got[0, :, 3], torch.zeros(2, 3))


def layer_reference(layer, queries, context, key_mask, attn_mask, mode):
    """float64 reference weights of a CrossAttention call, from its own projections."""
    q, k, v = heads_split(layer, queries, context)
    return expected(q, k, v, torch.float32, key_mask=key_mask, attn_mask=attn_mask,
                    return_weights=mode)  # fmt: skip


@pytest.mark.parametrize("backend", ["sdpa", "chunked", "reference"])
@pytest.mark.parametrize("heads", ["mean", "all"])
@pytest.mark.parametrize("model_given", [True, False], ids=["model", "model=None"])
def test_pinned_layer_is_recorded_with_its_output_unchanged(backend, heads, model_given):
    layer = CrossAttention(12, 10, heads=3, dim_head=4, backend=backend).eval()
    queries, context, key_mask = make_inputs(length=6, s=5)
    attn_mask = torch.rand(6, 5, generator=torch.Generator().manual_seed(1)) < 0.7
    attn_mask[2] = False  # query row 2 may attend nowhere: weights exactly 0
    kw = dict(context_mask=key_mask, attn_mask=attn_mask)
    with torch.no_grad():
        plain = layer(queries, context, **kw)
        prepared = layer.prepare_context(context, context_mask=key_mask)
        with AttentionRecorder(layer if model_given else None, heads=heads) as rec:
            recorded = layer(queries, context, **kw)
            from_prepared = layer(queries, prepared, attn_mask=attn_mask)
    assert torch.equal(recorded, plain)  # the pinned backend's own call, bit for bit
    assert torch.equal(from_prepared, plain)
    mode = "mean" if heads == "mean" else True
    exp = layer_reference(layer, queries, context, key_mask, attn_mask, mode)
    (name,) = rec.layer_names
    assert rec.steps[name] == [0, 1]
    for got in rec.maps[name]:
        assert_within(got, exp.weights, exp.weights_tol, f"{backend} map")
        assert torch.equal(got[..., 2, :], torch.zeros_like(got[..., 2, :]))


def test_use_backend_default_and_caller_weights_with_a_pinned_layer():
    model = TwoLayers().eval()
    queries, context, key_mask = make_inputs(length=5, s=4)
    with torch.no_grad(), crossattn.use_backend("sdpa"):
        plain = model(queries, context, context_mask=key_mask)
        with AttentionRecorder(model, heads="all") as rec:
            recorded = model(queries, context, context_mask=key_mask)
        hidden = model.first(queries, context, context_mask=key_mask)
    assert torch.equal(recorded, plain)
    for name, layer, layer_in in (
        ("first", model.first, queries),
        ("second.cross", model.second["cross"], hidden),
    ):
        exp = layer_reference(layer, layer_in, context, key_mask, None, True)
        assert_within(rec.maps[name][0], exp.weights, exp.weights_tol, name)
    # A caller that asks a pinned layer for weights still gets one call serving both.
    layer = CrossAttention(12, 10, heads=3, dim_head=4, backend="reference").eval()
    with torch.no_grad():
        out0, w0 = layer(queries, context, context_mask=key_mask, return_weights="mean")
        with AttentionRecorder(layer) as rec:
            out1, w1 = layer(queries, context, context_mask=key_mask, return_weights="mean")
    assert torch.equal(out0, out1) and torch.equal(w0, w1)
    assert torch.equal(rec.maps["CrossAttention"][0], w1)


def test_pinned_chunked_layer_recorded_in_training_with_gradients():
    model, inputs, plain, grad_plain, recorded, grad_recorded, rec = train_step_recorded("chunked")
    queries, context, key_mask = inputs
    assert torch.equal(recorded, plain) and torch.equal(grad_recorded, grad_plain)
    with torch.no_grad():
        exp = layer_reference(model.first, queries, context, key_mask, None, "mean")
    assert_within(rec.maps["first"][0], exp.weights, exp.weights_tol, "map in training")


def test_failed_save_changes_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer, metadata={"note": "x"}) as rec:
        layer(queries, context)
    path = tmp_path / "maps.safetensors"
    with pytest.raises(TypeError, match=r"save\(\.\.\., foo=\.\.\.\) is not: Object of type set"):
        rec.save(path, foo={1, 2})
    assert rec.metadata == {"note": "x"} and list(tmp_path.iterdir()) == []
    rec.save(path, tokens=["a"])  # the recorder is not poisoned
    assert rec.metadata == {"note": "x", "tokens": ["a"]}
    before = path.read_bytes()
    # A write that fails halfway leaves neither a partial file nor a changed old one.
    original = safetensors.torch.save_file

    def failing(tensors, filename, metadata=None):
        original(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        rec.save(path, more=1)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == before
    assert "more" not in rec.metadata
    monkeypatch.undo()
    back = AttentionRecorder.load(path)
    assert back.metadata == {"note": "x", "tokens": ["a"]}
    assert torch.equal(back.maps["CrossAttention"][0], rec.maps["CrossAttention"][0])


def test_load_corrupt_file_names_it(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(
        ValueError,
        match=re.escape(str(garbage)) + r" cannot be read: expected "
        r"a crossattn capture written by AttentionRecorder\.save.*header too large",
    ):
        AttentionRecorder.load(garbage)  # fmt: skip
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer) as rec:
        layer(queries, context)
    truncated = tmp_path / "truncated.safetensors"
    rec.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-16])  # tensor data cut short
    for read in (AttentionRecorder.load, read_header):
        with pytest.raises(ValueError, match=re.escape(str(truncated)) + " cannot be read"):
            read(truncated)
    with pytest.raises(FileNotFoundError):
        AttentionRecorder.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "steps, match",
    [
        (-1, r"steps=-1: steps are call indices counted from 0"),
        ([0, -2], r"steps=\[0, -2\]: .*negative indices"),
        (range(-1, 3), r"steps=range\(-1, 3\): .*negative indices"),
        (slice(-2, None), r"negative indices"),
        (slice(0, -1), r"negative indices"),
        (slice(4, 0, -1), r"a slice of steps needs a positive step"),
    ],
    ids=["int", "list", "range", "open-slice", "slice-stop", "slice-step"],
)
def test_negative_steps_are_refused(steps, match):
    with pytest.raises(ValueError, match=match):
        AttentionRecorder(steps=steps)


def test_closed_slice_of_steps():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(poison=False)
    with torch.no_grad(), AttentionRecorder(layer, steps=slice(1, 6, 2)) as rec:
        for _ in range(4):
            layer(queries, context)
    assert rec.steps["CrossAttention"] == [1, 3]


def test_follow_beams_needs_integer_indices():
    layer = CrossAttention(12, 10, heads=2, dim_head=3)
    queries, context, _ = make_inputs(b=2, poison=False)
    with torch.no_grad(), AttentionRecorder(layer) as rec:
        layer(queries[:, :1], context)
        layer(queries[:, :2], context)
    with pytest.raises(TypeError, match=r"beam_indices must be an integer tensor.*torch\.float32"):
        rec.follow_beams(torch.zeros(2, 2))
    with pytest.raises(TypeError, match=r"beam_indices must be an integer tensor.*torch\.bool"):
        rec.follow_beams(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"beam_indices must be a \(N, T\) integer tensor.*list"):
        rec.follow_beams([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"beam_indices holds -2; row numbers are >= 0"):
        rec.follow_beams(torch.tensor([[0, -2], [1, 0]]))
    # int32 indices work: row i of step t, the last query position; -1 gives zeros.
    got = rec.follow_beams(torch.tensor([[1, -1], [0, 1]], dtype=torch.int32))["CrossAttention"]
    first, second = rec.maps["CrossAttention"]
    want = torch.stack(
        [
            torch.stack([first[1, -1], torch.zeros(5)]),
            torch.stack([first[0, -1], second[1, -1]]),
        ]
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("heads", ["mean", "all"])
def test_pinned_layer_with_no_queries_records_an_empty_map(heads):
    layer = CrossAttention(12, 10, heads=3, dim_head=4, backend="sdpa")
    _, context, key_mask = make_inputs(poison=False)
    queries = torch.randn(context.shape[0], 0, 12)
    with AttentionRecorder(layer, heads=heads) as rec:
        out = layer(queries, context, context_mask=key_mask)
    assert out.shape == (context.shape[0], 0, 12)
    want = (context.shape[0], 0, 5) if heads == "mean" else (context.shape[0], 3, 0, 5)
    assert rec.maps["CrossAttention"][0].shape == want
