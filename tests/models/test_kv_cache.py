"""`KVCache` (preallocated, written in place, reordered without allocating), `PackedLinear` (fused
weights that follow the parameters) and `IncrementalDecoder` steps against the model's own
full forward pass."""

from __future__ import annotations

import pytest
import torch

from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer, packed
from crossattn.models.incremental import IncrementalDecoder, fast_path_reasons
from crossattn.models.kv_cache import KVCache
from crossattn.models.packed import PackedLinear, packable


def test_appends_in_place_and_views_every_position():
    cache = KVCache(3, 2, 4, 5, dtype=torch.float64)
    store = cache._store.data_ptr()
    written = []
    for t in range(5):
        kv = torch.randn(3, 2, 2, 4, dtype=torch.float64)
        keys, values = cache.append(kv)
        written.append(kv)
        assert keys.shape == values.shape == (3, 2, t + 1, 4)
        assert cache._store.data_ptr() == store  # no new storage
    expected = torch.stack(written, 3)  # (N, 2, Hk, T, D)
    torch.testing.assert_close(cache.keys, expected[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(cache.values, expected[:, 1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="KVCache is full: it holds 5 positions"):
        cache.append(written[0])


def test_reorder_gathers_the_prefix_and_swaps_two_buffers():
    cache = KVCache(4, 1, 3, 6)
    for _ in range(3):
        cache.append(torch.randn(4, 2, 1, 3))
    before_k, before_v = cache.keys.clone(), cache.values.clone()
    rows = torch.tensor([2, 2, 0, 3])
    cache.reorder(rows)
    torch.testing.assert_close(cache.keys, before_k[rows], rtol=0, atol=0)
    torch.testing.assert_close(cache.values, before_v[rows], rtol=0, atol=0)
    buffers = {cache._store.data_ptr(), cache._spare.data_ptr()}
    cache.reorder(torch.tensor([1, 0, 3, 2]))
    cache.append(torch.randn(4, 2, 1, 3))
    assert {cache._store.data_ptr(), cache._spare.data_ptr()} == buffers  # nothing allocated
    torch.testing.assert_close(cache.keys[:, :, :3], before_k[rows][[1, 0, 3, 2]], rtol=0, atol=0)


def test_cache_errors():
    with pytest.raises(ValueError, match="KVCache capacity must be a positive int, got 0"):
        KVCache(1, 1, 1, 0)
    with pytest.raises(ValueError, match="KVCache rows must be a positive int, got True"):
        KVCache(True, 1, 1, 1)
    cache = KVCache(2, 2, 3, 4)
    with pytest.raises(
        ValueError, match=r"key_value must have shape \(N, 2, heads, dim_head\) = \(2, 2, 2, 3\)"
    ):
        cache.append(torch.randn(2, 2, 3))


def test_packed_linear_equals_its_parts_and_follows_the_parameters():
    torch.manual_seed(0)
    q, k, v = torch.nn.Linear(5, 4), torch.nn.Linear(5, 3, bias=False), torch.nn.Linear(5, 2)
    pack = PackedLinear(q, k, v).refresh()
    x = torch.randn(7, 5)

    def parts():
        return torch.cat([q(x), k(x), v(x)], -1)

    with torch.no_grad():
        torch.testing.assert_close(pack(x), parts())
        k.weight.mul_(3.0)  # in place: the version changes
        assert not torch.allclose(pack(x), parts())  # stale until refreshed
        torch.testing.assert_close(pack.refresh()(x), parts())
    q.double(), k.double(), v.double()
    assert pack.refresh()(x.double()).dtype == torch.float64
    q.register_forward_hook(lambda *_: None)
    assert not packable(q, k) and packable(k, v)
    with pytest.raises(TypeError, match="PackedLinear packs plain nn.Linear modules"):
        PackedLinear(q, k)
    with pytest.raises(ValueError, match=r"PackedLinear needs one in_features, got \[5, 4\]"):
        PackedLinear(k, torch.nn.Linear(4, 1))


@pytest.mark.parametrize("intel", [True, False], ids=["mkl", "onednn"])
@pytest.mark.parametrize("rows", [1, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_each_matmul_of_a_packed_linear_equals_its_parts(intel, rows, dtype, relu, monkeypatch):
    """MKL's matmul of the transposed weight (float32 on Intel), oneDNN's packed weight, and
    F.linear: the same outputs, bias or none, ReLU fused or not."""
    monkeypatch.setattr(packed._cpu, "INTEL", intel)
    torch.manual_seed(0)
    a, b = torch.nn.Linear(24, 20), torch.nn.Linear(24, 12, bias=False)
    a, b = a.to(dtype), b.to(dtype)
    pack = PackedLinear(a, b, relu=relu).refresh()
    mkl = intel and dtype == torch.float32 and torch.backends.mkl.is_available()
    assert (pack._mkl is not None) == mkl
    x = torch.randn(rows, 3, 24, dtype=dtype).transpose(0, 1)  # (3, rows, 24), not contiguous
    with torch.no_grad():
        want = torch.cat([a(x), b(x)], -1)
        want = want.relu() if relu else want
        got = pack(x)
    assert got.shape == (3, rows, 32) and got.dtype == dtype
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("beams", [1, 3])
def test_steps_equal_the_full_forward_pass(norm_first, beams):
    torch.manual_seed(1)
    cfg = Seq2SeqConfig(13, 11, d_model=12, heads=3, encoder_layers=1, decoder_layers=2,
                        dim_ff=20, dropout=0.0, norm_first=norm_first)  # fmt: skip
    model = Seq2SeqTransformer(cfg).double().eval()
    ids = torch.randint(4, 13, (2, 5))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    ids = ids.masked_fill(~mask, 0)
    steps = 6
    target = torch.randint(4, 11, (2 * beams, steps))
    target[:, 0] = cfg.bos_id
    with torch.no_grad():
        assert fast_path_reasons(model) == []
        memory = model.encode(ids, mask)
        dec = IncrementalDecoder(model, memory, mask, beams=beams, capacity=steps,
                                 attention_layers=[1])  # fmt: skip
        got, maps = [], []
        for t in range(steps):
            logits, attn = dec.step(target[:, t])
            got.append(logits)
            maps.append(attn[:, 0])
        wide = ids.repeat_interleave(beams, 0), mask.repeat_interleave(beams, 0)
        full = model(*wide, target, attention_layers=[1])
    expected = full.logits.float()
    expected[..., [cfg.pad_id, cfg.bos_id]] = float("-inf")
    torch.testing.assert_close(torch.stack(got, 1), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.stack(maps, 2), full.cross_weights[1], atol=1e-9, rtol=0)
    assert fast_path_reasons(model.train()) == ["the model is in training mode (dropout)",
                                                "gradients are enabled"]  # fmt: skip
